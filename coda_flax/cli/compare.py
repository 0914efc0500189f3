"""`coda compare`: Parallel Adapter vs CoDA on an offline image or speech task
(coda_flax.experiments.compare).

    coda compare {rendered_words,rendered_docs,easy_vqa,speech} [--quick] [--output DIR]
                 [--data-dir DIR] [--no-prepare]
"""

from __future__ import annotations

import argparse
import signal
import sys

from coda_flax.cli.argtypes import DATA_DIR_HELP, missing_data_dir

COMPARE_TASKS = ("rendered_words", "rendered_docs", "easy_vqa", "speech")


def add_compare_parser(sub) -> argparse.ArgumentParser:
    """Adds the `compare` subcommand to an argparse subparsers object."""
    compare = sub.add_parser(
        "compare", help="Parallel Adapter vs CoDA on an offline image or speech task",
        description="Train a dense backbone on the task, convert it to the Parallel Adapter "
                    "and to CoDA at several r, finetune adapters + routers, and write quality, "
                    "measured speedups, routing plots (and the ink share of routed patches for "
                    "rendered documents) to the output folder.")
    compare.add_argument("task", choices=COMPARE_TASKS,
                         help="rendered_words (one of 16 words on a white page -> the word), "
                              "rendered_docs (a snippet of text -> its transcription), easy_vqa "
                              "(question rendered over the image -> answer) or speech (CTC, WER)")
    compare.add_argument("--quick", action="store_true", help="tiny sizes and steps (for tests)")
    compare.add_argument("--output", default=None, help="output folder (default outputs/TASK)")
    compare.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    compare.add_argument("--no-prepare", dest="prepare", action="store_false",
                         help="use the data already in the cache; do not fetch or build any")
    compare.set_defaults(func=compare_main)
    return compare


def compare_main(a: argparse.Namespace) -> int:
    if missing_data_dir("compare", a.data_dir):
        return 2
    from coda_flax.cli.console import Stopped, quiet_startup, stop_line, stopped_by_signals
    try:
        with stopped_by_signals():
            quiet_startup()
            from coda_flax.experiments import compare
            from coda_flax.train.trainer import Preempted
            try:
                compare.run_compare(a.task, a.output or f"outputs/{a.task}", quick_run=a.quick,
                                    data_dir=a.data_dir, prepare=a.prepare)
            except Preempted as e:               # SIGTERM inside a training loop
                raise Stopped(signal.SIGTERM) from e
    except Stopped as e:
        line, status = stop_line("coda compare", e, "what it finished is kept in the "
                                 "output folder.")
        print(line, file=sys.stderr)
        return status
    return 0
