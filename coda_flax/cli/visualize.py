"""`coda visualize`: per-layer routing heatmaps of a CoDA encoder (paper Figure 7), for text,
images and audio.

    coda visualize --checkpoint DIR --text "..." [--vocab PATH] [--output DIR] [--layers all]
    coda visualize --checkpoint DIR --image PATH [--max-patches N]       (patch models)
    coda visualize --checkpoint DIR --audio PATH [--max-seconds S]       (speech models)
    coda visualize --random-init --preset NAME [--reduction R] [--length N] [--output DIR]

Text is tokenized with the model's SentencePiece vocabulary (EOS appended, as in the seqio
tasks), images cut into Pix2Struct patches, audio turned into log-mel frames (routed over the
ceil(T / 4) encoder frames); without an input, random ids, a synthetic page or a synthetic
utterance. Writes heatmap.png (layers x positions) and decisions.json (per layer: indices,
weights, lam, statistics) into --output; text adds heatmap_lam.png and highlights.html / .png,
images routing_image(_lam).png and ink_share.png (routed patches with ink vs the page), audio
routing_audio(_lam).png. The work is coda_flax.analysis.routing_report's.
"""

from __future__ import annotations

import argparse
import os
import sys

from coda_flax.analysis import routing_report as report
from coda_flax.analysis.routing_report import (DEFAULT_MAX_LENGTH, DEFAULT_MAX_PATCHES,
                                               DEFAULT_RANDOM_LENGTH, dump_json, parse_layers)
from coda_flax.analysis.synthetic import DEFAULT_RANDOM_SECONDS, TINY_PRESETS
from coda_flax.cli import argtypes
from coda_flax.config import ATTENTION_VARIANTS, PRESETS
from coda_flax.routing import ROUTERS

__all__ = ["add_visualize_parser", "visualize_main", "parse_layers", "dump_json", "main"]
DEFAULT_OUTPUT = "routing_viz"
_INPUT_FLAGS = {"tokens": ("--text / --text-file", "a text model"),
                "patches": ("--image", "an image (patch) model such as pix2struct"),
                "frames": ("--audio", "a speech model such as speech_base")}
_ONLY_FOR = {"vocab": "tokens", "length": "tokens", "no_eos": "tokens",
             "max_patches": "patches", "max_seconds": "frames"}
_KIND_NAME = {"tokens": "text", "patches": "image (patch)", "frames": "speech"}


def add_visualize_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `visualize` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "visualize", help="per-layer routing heatmaps of a CoDA encoder (paper Figure 7)",
        description=__doc__.split("The work is")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR", help="a coda_flax checkpoint directory")
    src.add_argument("--random-init", action="store_true", help="a fresh model from --preset")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text", help="the encoder input text")
    text.add_argument("--text-file", metavar="PATH", help="read the input text from a file")
    text.add_argument("--image", metavar="PATH", help="an image for a patch model (pix2struct)")
    text.add_argument("--audio", metavar="PATH", help="wav (flac / ogg with soundfile) audio")
    p.add_argument("--max-patches", type=argtypes.positive_int(), default=None, metavar="N",
                   help=f"image models: patches per image (default {DEFAULT_MAX_PATCHES})")
    p.add_argument("--max-seconds", type=argtypes.positive_float, default=None, metavar="S",
                   help=f"speech models: the first S seconds (default: all; synthetic: "
                        f"{DEFAULT_RANDOM_SECONDS:g})")
    p.add_argument("--ink-threshold", type=argtypes.unit_float, default=0.5, metavar="T",
                   help="image models: ink is grey (0 black .. 1 white) below T (0.5)")
    p.add_argument("--vocab", metavar="PATH", help="SentencePiece model (default: $CODA_VOCAB)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR",
                   help=f"output directory (default ./{DEFAULT_OUTPUT})")
    p.add_argument("--layers", default="all", help="all (default) or a list like 0,3,6-11")
    p.add_argument("--length", type=argtypes.positive_int(), metavar="N",
                   help=f"pad the text to N tokens (default: its own length, <= "
                        f"{DEFAULT_MAX_LENGTH}; random ids: {DEFAULT_RANDOM_LENGTH})")
    p.add_argument("--no-eos", action="store_true", help="do not append EOS to the text")
    p.add_argument("--preset", choices=sorted(PRESETS) + list(TINY_PRESETS), metavar="NAME",
                   help=f"model for --random-init: {', '.join(sorted(PRESETS))}, or "
                        f"{', '.join(TINY_PRESETS)}")
    p.add_argument("--num-layers", type=argtypes.positive_int(), metavar="L",
                   help="--random-init: keep L encoder layers of the preset")
    p.add_argument("--reduction", type=argtypes.reduction(), metavar="R",
                   help="CoDA reduction r > 1 (--random-init: 3; overrides a checkpoint's)")
    p.add_argument("--attention", choices=ATTENTION_VARIANTS,
                   help="--random-init: k_to_all (default); overrides a checkpoint's")
    p.add_argument("--router", choices=ROUTERS, help="--random-init's (default soft_topk)")
    p.add_argument("--adapter-dim", type=argtypes.positive_int(), metavar="D",
                   help="--random-init's adapter width (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="of random parameters / inputs (0)")
    p.add_argument("--max-token-labels", type=argtypes.positive_int(), default=64, metavar="N",
                   help="label heatmap columns with the tokens when n <= N, else with "
                        "thinned positions (default 64)")
    p.set_defaults(func=visualize_main)
    return p


def _model(args):
    """-> (config, params or None, source): --random-init's model, or the checkpoint's."""
    from coda_flax.analysis.synthetic import random_init_config

    if args.random_init:
        if not args.preset:
            raise ValueError("--random-init needs --preset NAME (e.g. t5_1_1_small, "
                             "paper_text_base, tiny).")
        config = random_init_config(
            args.preset, reduction=3 if args.reduction is None else args.reduction,
            attention=args.attention or "k_to_all", router=args.router or "soft_topk",
            adapter_dim=args.adapter_dim, num_layers=args.num_layers)
        return config, None, {"random_init": {"preset": args.preset, "seed": args.seed}}
    for flag in ("preset", "router", "adapter_dim", "num_layers"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} applies to --random-init only; a "
                             f"checkpoint brings its own model config.")
    if not os.path.isdir(args.checkpoint):
        raise FileNotFoundError(f"checkpoint directory {args.checkpoint} not found (expected "
                                f"config.json + params/ as written by `coda convert`); use "
                                f"--random-init --preset NAME for a model without one.")
    from coda_flax.checkpoints.native import load_checkpoint
    config, params = load_checkpoint(args.checkpoint)
    changes = {key: getattr(args, key) for key in ("reduction", "attention")
               if getattr(args, key) is not None}
    if config.coda is not None and changes:
        config = config.with_coda(**changes)
    return config, params, {"checkpoint": os.path.abspath(args.checkpoint)}


def _check_input_flags(args, kind: str) -> None:
    """The input flags must fit what the model reads (ModelConfig.encoder_input = kind)."""
    given = {"tokens": args.text is not None or args.text_file is not None,
             "patches": args.image is not None, "frames": args.audio is not None}
    for other in (k for k, used in given.items() if used and k != kind):
        raise ValueError(f"{_INPUT_FLAGS[other][0]} needs {_INPUT_FLAGS[other][1]}, but this "
                         f"model reads {kind} (ModelConfig.encoder_input={kind!r}); use "
                         f"{_INPUT_FLAGS[kind][0]}.")
    for flag in (f for f, only in _ONLY_FOR.items() if only != kind):
        if getattr(args, flag) not in (None, False):
            raise ValueError(f"--{flag.replace('_', '-')} applies to "
                             f"{_KIND_NAME[_ONLY_FOR[flag]]} models; this model reads {kind}.")


def _input(args, config) -> report.EncoderInput:
    if config.encoder_input == "patches":
        return report.image_input(config, args.image, max_patches=args.max_patches,
                                  ink_threshold=args.ink_threshold, seed=args.seed)
    if config.encoder_input == "frames":
        return report.audio_input(config, args.audio, max_seconds=args.max_seconds,
                                  seed=args.seed)
    text = args.text
    if args.text_file:
        try:
            with open(args.text_file, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError as e:
            raise ValueError(f"--text-file: cannot read {args.text_file}: {e}") from None
    return report.text_input(config, text, args.vocab, eos=not args.no_eos, length=args.length,
                             seed=args.seed)


def visualize_main(args) -> int:
    """Runs `coda visualize`; returns the exit status (2 on a usage, model or input error)."""
    from coda_flax.analysis.synthetic import random_init_params

    try:
        config, params, source = _model(args)
        report.check_routed(config)
        layers = parse_layers(args.layers, config.num_encoder_layers)
        _check_input_flags(args, config.encoder_input)
        inp = _input(args, config)              # everything cheap before the (compiling) init
        if params is None:
            params = random_init_params(config, args.seed)
        rep = report.routing_report(config, params, inp, layers, source)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"coda visualize: error: {e}", file=sys.stderr)
        return 2
    for note in rep.notes:
        print(f"note: {note}", file=sys.stderr)
    name = ("random init " + str(args.preset) if args.random_init
            else os.path.basename(os.path.normpath(args.checkpoint)))
    files = report.write_report(rep, args.output, name, max_token_labels=args.max_token_labels)
    print("\n".join(report.summary_lines(rep, name)))
    for path in files.values():
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m coda_flax.cli.visualize ...` (the same as `coda visualize ...`)."""
    parser = argparse.ArgumentParser(prog="coda")
    add_visualize_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["visualize", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
