"""The `coda` command line: argv is parsed in this package and nowhere else, one module per
subcommand; the library modules they call take plain keyword arguments.

    coda summary    cli/summary.py     parameter counts, analytic FLOPs  (analysis.summary)
    coda convert    cli/convert.py     HF / T5X checkpoint import        (checkpoints)
    coda train|eval|infer cli/train.py gin run files                     (train.gin_config)
    coda bench      cli/bench.py       measured vs FLOP-bound speedup    (bench, analysis)
    coda visualize  cli/visualize.py   routing heatmaps                  (viz, analysis)
    coda reproduce  cli/reproduce.py   the paper's tables                (experiments.reproduce)
    coda demo       cli/demo.py        the end-to-end demo               (experiments.demo)
    coda compare    cli/compare.py     PA vs CoDA on images / speech     (experiments.compare)
    coda claims     cli/claims.py      the paper's trade-offs, CPU scale (experiments.claims)

cli/argtypes.py holds the argparse types they share, cli/console.py the quiet start-up
(TensorFlow / CUDA noise, seqio cache warnings) that the heavy commands apply before importing
jax and TensorFlow.
"""

from __future__ import annotations

import argparse
import signal
import sys


def build_parser() -> argparse.ArgumentParser:
    # The subcommand modules are imported here, not at the package's import, so that
    # `python -m coda_flax.cli.reproduce` (and the like) runs its module only once.
    from coda_flax.cli.bench import add_bench_parser
    from coda_flax.cli.claims import add_claims_parser
    from coda_flax.cli.compare import add_compare_parser
    from coda_flax.cli.convert import add_convert_parser
    from coda_flax.cli.demo import add_demo_parser
    from coda_flax.cli.reproduce import add_reproduce_parser
    from coda_flax.cli.summary import add_summary_parser
    from coda_flax.cli.train import add_run_parsers
    from coda_flax.cli.visualize import add_visualize_parser

    parser = argparse.ArgumentParser(prog="coda", description="Conditional Adapters (CoDA) in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(sub)
    add_bench_parser(sub)
    add_run_parsers(sub)
    add_visualize_parser(sub)
    add_reproduce_parser(sub)
    add_demo_parser(sub)
    add_compare_parser(sub)
    add_claims_parser(sub)
    add_summary_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from coda_flax.cli.console import Stopped, exit_now, stopped_by_signals

    own_process = argv is None             # `coda ...`, not a call from Python (tests)
    try:
        with stopped_by_signals():         # the commands set their own inside; this covers
            from coda_flax.cli.train import split_gin_flags       # parsing and imports

            bindings, argv = split_gin_flags(sys.argv[1:] if argv is None else argv)
            args = build_parser().parse_args(argv)
            args.gin_bindings = bindings
            status = int(args.func(args) or 0)
    except Stopped as e:
        print(f"coda: stopped by {e} while starting; nothing was written.", file=sys.stderr)
        status = 128 + e.signum
    if own_process and status in (128 + signal.SIGTERM, 128 + signal.SIGINT):
        exit_now(status)
    return status
