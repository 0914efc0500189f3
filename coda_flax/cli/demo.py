"""`coda demo`: the end-to-end demo on offline Shakespeare data (coda_flax.experiments.demo).

    coda demo [--quick] [--output DIR] [--data-dir DIR]
"""

from __future__ import annotations

import argparse

from coda_flax.cli.argtypes import DATA_DIR_HELP, missing_data_dir


def add_demo_parser(sub) -> argparse.ArgumentParser:
    """Adds the `demo` subcommand to an argparse subparsers object."""
    demo = sub.add_parser("demo", help="end-to-end demo on offline Shakespeare data",
                          description="Pretrain a small dense T5, convert it to CoDA, finetune "
                                      "the Parallel Adapter, CoDA r = 3 / 5 and the router "
                                      "ablations, and write a results table, a speed-quality "
                                      "plot and routing heatmaps.")
    demo.add_argument("--quick", action="store_true", help="tiny sizes and steps (for tests)")
    demo.add_argument("--output", default="outputs/demo", help="output folder")
    demo.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    demo.set_defaults(func=demo_main)
    return demo


def demo_main(a: argparse.Namespace) -> int:
    if missing_data_dir("demo", a.data_dir):
        return 2
    from coda_flax.cli.console import quiet_startup
    quiet_startup()
    from coda_flax.experiments import demo
    demo.run_demo(a.output, quick=a.quick, data_dir=a.data_dir)
    return 0
