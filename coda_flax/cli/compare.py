"""`coda compare`: Parallel Adapter vs CoDA on an offline image or speech task
(coda_flax.experiments.compare).

    coda compare {rendered_words,rendered_docs,easy_vqa,speech} [--quick] [--output DIR]
                 [--data-dir DIR] [--no-prepare]
"""

from __future__ import annotations

import argparse

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
    from coda_flax.cli.console import run_stoppable

    def body():
        from coda_flax.experiments import compare
        compare.run_compare(a.task, a.output or f"outputs/{a.task}", quick_run=a.quick,
                            data_dir=a.data_dir, prepare=a.prepare)
    return run_stoppable("coda compare", "what it finished is kept in the output folder.", body)
