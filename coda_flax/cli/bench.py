"""`coda bench`: measured vs FLOP-bound speedup of CoDA over the Parallel Adapter, and the
soft top-k micro-benchmark (coda_flax.bench; tables, JSON and plot:
coda_flax.analysis.bench_report).

    coda bench [--presets ...] [--lengths ...] [--reductions ...] [--modes encode,generate]
               [--num-layers L] [--soft-topk] [--output DIR]

`add_bench_parser` registers the subcommand, `configure_parser` adds the arguments to any
parser (scripts/bench.py), `bench_main` runs it: it says where it writes, prints the rows once
when the run is done (progress on stderr unless --quiet), then the JSON path.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

from coda_flax import bench
from coda_flax.bench import (DEFAULT_LENGTHS, DEFAULT_REDUCTIONS, MODES, STATISTICS, TIMERS,
                             SoftTopkSettings, SweepSettings, audio_frames)
from coda_flax.cli import argtypes
from coda_flax.config import ATTENTION_VARIANTS, DTYPES, PRESETS
from coda_flax.routing import ROUTERS
from coda_flax.soft_topk import SOLVERS, SoftTopkConfig


def _csv(item_parser: Callable[[str], Any], what: str):
    def parse(text: str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{what}: empty list")
        return tuple(item_parser(p) for p in parts)
    return parse


def _parse_positive(what: str):
    return argtypes.positive_int(f"{what} must be an integer >= 1")


_REDUCTION = argtypes.reduction("reduction r must be >= 1 (1 = Parallel Adapter)", finite=True)


def _parse_choice(choices: Sequence[str], what: str):
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from "
                                             f"{', '.join(choices)}")
        return text
    return parse


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"audio duration must be a number of seconds, got "
                                         f"{text!r}") from None
    try:
        audio_frames(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return int(value) if value.is_integer() else value


DESCRIPTION = """\
Inference speed of CoDA against the Parallel Adapter (CodaConfig(reduction=1)) on the same
random weights and inputs, next to the FLOP bound of `coda summary`.

Sweep (default): presets x lengths x reductions r x attention, in modes
  encode    the jit'd encoder forward (EncoderDecoder / EncoderCtc .encode)
  generate  encode + greedy decoding of exactly --decode-length tokens with the cache (text and
            image presets); encode + CTC logits + per-frame argmax (speech presets)
Lengths are tokens (text presets), image patches (pix2struct: a full grid of random patches)
or audio frames at 10 ms (speech_*; or --audio-seconds 10,30); n is the encoder length CoDA
routes over (audio: ceil(frames / 4) after the conv subsampling).
Per row: PA and CoDA time per call, measured speedup, FLOP-bound speedup
(summary.flop_speedup at n), measured / FLOP bound; image / audio rows add the bound with the
shared input front end, and pix2struct rows at n = 4096 the paper's speedup (Table 6).
Writes OUTPUT/bench.json and OUTPUT/speedup.png (measured solid, FLOP bound dashed, vs r, one
line per n, paper stars).

--soft-topk instead times soft top-k (T iterations): implicit vs unrolled gradients (time and
compiled temporary memory) and the router's share of one CoDA layer's forward time; writes
OUTPUT/soft_topk.json.

Every encoder layer costs the same, so the speedup of one layer is the encoder's: use
--num-layers 2 on CPU (the decoder keeps the preset's encoder/decoder proportion). Runs on the
default jax device (a GPU when jax has one); timings interleave all models of a group in
rotated order and take the median over --repeats rounds (--statistic min on a busy machine).

examples:
  coda bench --lengths 512 --reductions 1,3 --attention k_to_all --modes encode --num-layers 2
  coda bench --presets t5_1_1_base,paper_text_base --lengths 512,2048 --num-layers 2
  coda bench --presets pix2struct --lengths 1024,2048,4096 --reductions 1,8,16,32 \
      --attention k_to_all --modes generate --num-layers 3 --batch-size 1
  coda bench --presets speech_base --audio-seconds 10,30 --reductions 1,2,4 \
      --attention k_to_all --num-layers 2
  coda bench --soft-topk --soft-topk-lengths 512,4096
"""


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds `coda bench`'s arguments to a parser (used by add_bench_parser and scripts/bench.py)."""
    p.add_argument("--presets", type=_csv(_parse_choice(sorted(PRESETS), "preset"), "presets"),
                   default=("paper_text_base",), metavar="NAME[,NAME]",
                   help="model presets (default paper_text_base; t5_1_1_base is the MHA "
                        "counterpart of the MQA paper_text_base; pix2struct reads image "
                        "patches, speech_base/large/xl audio frames)")
    p.add_argument("--lengths", type=_csv(_parse_positive("length n"), "lengths"),
                   default=DEFAULT_LENGTHS, metavar="N[,N]",
                   help=f"input lengths: tokens, patches (pix2struct) or audio frames at 10 ms "
                        f"(speech presets) (default {','.join(map(str, DEFAULT_LENGTHS))})")
    p.add_argument("--audio-seconds", type=_csv(_parse_seconds, "audio seconds"), default=None,
                   metavar="S[,S]",
                   help="speech presets: durations in seconds instead of --lengths, e.g. 10,30 "
                        "(16 kHz, 25 ms windows every 10 ms: 10 s = 998 frames = 250 encoder "
                        "tokens)")
    p.add_argument("--reductions", type=_csv(_REDUCTION, "reductions"),
                   default=DEFAULT_REDUCTIONS, metavar="R[,R]",
                   help=f"reductions r >= 1 (default {','.join(map(str, DEFAULT_REDUCTIONS))}; "
                        "r = 1 times the Parallel Adapter against itself: the noise floor)")
    p.add_argument("--attention", type=_csv(_parse_choice(ATTENTION_VARIANTS, "attention"),
                                            "attention"),
                   default=ATTENTION_VARIANTS, metavar="A[,A]",
                   help="CoDA attention variants (default k_to_all,k_to_k)")
    p.add_argument("--modes", type=_csv(_parse_choice(MODES, "mode"), "modes"), default=MODES,
                   metavar="M[,M]", help="encode and/or generate (default both)")
    p.add_argument("--batch-size", type=_parse_positive("batch size"), default=1, metavar="B",
                   help="batch size (default 1)")
    p.add_argument("--decode-length", type=_parse_positive("decode length"), default=32,
                   metavar="L", help="tokens decoded per sequence in generate mode, always "
                                     "exactly L (default 32)")
    p.add_argument("--num-layers", type=_parse_positive("num layers"), default=None,
                   metavar="L", help="encoder layers (default: the preset's); the speedup per "
                                     "layer does not depend on depth")
    p.add_argument("--num-decoder-layers", type=_parse_positive("num decoder layers"),
                   default=None, metavar="L",
                   help="decoder layers (default: the preset's, scaled with --num-layers)")
    p.add_argument("--adapter-dim", type=_parse_positive("adapter dim"), default=None,
                   metavar="D", help="adapter width (default: the preset's, else 64)")
    p.add_argument("--router", type=_parse_choice(ROUTERS, "router"), default="soft_topk",
                   help="CoDA router (default soft_topk)")
    p.add_argument("--solver", type=_parse_choice(SOLVERS, "solver"),
                   default=SoftTopkConfig.solver, help="soft top-k solver (default "
                                                        "coordinate_descent, the paper's)")
    p.add_argument("--dtype", type=_parse_choice(sorted(DTYPES), "dtype"), default="float32",
                   help="activation dtype (default float32)")
    p.add_argument("--repeats", type=_parse_positive("repeats"), default=5, metavar="R",
                   help="interleaved timing rounds (default 5)")
    p.add_argument("--warmup", type=argtypes.nonnegative_int, default=1, metavar="W",
                   help="untimed calls after the compiling one (default 1)")
    p.add_argument("--min-sample-seconds", type=argtypes.nonnegative_float, default=0.05,
                   metavar="S", help="a timed sample repeats a call until it lasts S seconds "
                                     "(default 0.05)")
    p.add_argument("--statistic", type=_parse_choice(STATISTICS, "statistic"), default="median",
                   help="per-model statistic over the rounds (default median; min is more "
                        "robust on a loaded machine)")
    p.add_argument("--settle", type=argtypes.nonnegative_int, default=1, metavar="S",
                   help="untimed calls of a model before each of its timed samples, so that "
                        "it is timed in its steady state and not right after another model "
                        "(default 1)")
    p.add_argument("--timer", type=_parse_choice(TIMERS, "timer"), default="wall",
                   help="wall (elapsed, default) or process (this process's CPU time over all "
                        "threads: leaves out time other processes hold the cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="jax backend (cpu, gpu, tpu; default: jax's default device)")
    p.add_argument("--soft-topk", action="store_true",
                   help="run the soft top-k micro-benchmark instead of the sweep")
    p.add_argument("--soft-topk-lengths", type=_csv(_parse_positive("length n"), "lengths"),
                   default=(512, 4096), metavar="N[,N]",
                   help="lengths of the soft top-k benchmark (default 512,4096)")
    p.add_argument("--soft-topk-reductions", type=_csv(_REDUCTION, "reductions"),
                   default=(3, 8), metavar="R[,R]",
                   help="r of the CoDA layers the router share is measured against "
                        "(default 3,8; the gradient rows use k = ceil(n / 3))")
    p.add_argument("--num-iters", type=_parse_positive("num iters"),
                   default=SoftTopkConfig.num_iters, metavar="T",
                   help="soft top-k iterations T for --soft-topk (default 20)")
    p.add_argument("--output", default="bench_out", metavar="DIR",
                   help="directory for the JSON and the plot (default ./bench_out)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=bench_main)
    return p


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `bench` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "bench", help="measured vs FLOP-bound speedup of CoDA over the Parallel Adapter",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure_parser(p)


def bench_main(args: argparse.Namespace) -> int:
    """Runs `coda bench` for parsed arguments: prints the table, writes JSON (and a plot)."""
    from coda_flax.analysis.bench_report import (format_notes, format_soft_topk_table,
                                                 format_table, plot_speedups, write_json)

    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        if args.soft_topk:
            settings = SoftTopkSettings(
                lengths=args.soft_topk_lengths, reductions=args.soft_topk_reductions,
                num_iters=args.num_iters, preset=args.presets[0], attention=args.attention[0],
                batch_size=args.batch_size, dtype=args.dtype, repeats=args.repeats,
                warmup=args.warmup, min_sample_seconds=args.min_sample_seconds,
                statistic=args.statistic, timer=args.timer, settle=args.settle,
                seed=args.seed)
        else:
            settings = SweepSettings(
                presets=args.presets, lengths=args.lengths, reductions=args.reductions,
                attentions=args.attention, modes=args.modes,
                audio_seconds=args.audio_seconds, batch_size=args.batch_size,
                decode_length=args.decode_length, num_layers=args.num_layers,
                num_decoder_layers=args.num_decoder_layers, dtype=args.dtype,
                repeats=args.repeats, warmup=args.warmup,
                min_sample_seconds=args.min_sample_seconds, statistic=args.statistic,
                timer=args.timer, settle=args.settle, seed=args.seed, router=args.router,
                solver=args.solver, adapter_dim=args.adapter_dim)
    except ValueError as e:
        print(f"coda bench: error: {e}", file=sys.stderr)
        return 2
    json_path = os.path.join(args.output, "soft_topk.json" if args.soft_topk else "bench.json")
    plot_path = None if args.soft_topk or args.no_plot else os.path.join(args.output,
                                                                         "speedup.png")
    print(f"coda bench: writes {json_path}" + (f" and {plot_path}" if plot_path else ""),
          flush=True)
    if args.soft_topk:
        result = bench.run_soft_topk(settings, backend=args.backend, log=log)
        path = write_json(result, json_path)
        print(format_soft_topk_table(result["soft_topk"]))
    else:
        result = bench.run_sweep(settings, backend=args.backend, log=log)
        path = write_json(result, json_path)
        print(format_table(result["rows"]))
        notes = format_notes(result["rows"])
        if notes:
            print(notes)
        if not args.no_plot:
            plot = plot_speedups(result, plot_path)
            print(f"plot: {plot}" if plot else "plot: skipped (matplotlib not installed)")
    dev = result["device"]
    print(f"json: {path}  (device {dev['platform']} {dev['device_kind']}, jax "
          f"{result['jax_version']}, load average {dev['load_average_start']} -> "
          f"{dev['load_average_end']})")
    return 0
