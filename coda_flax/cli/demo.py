"""`coda demo`: the end-to-end demo on offline Shakespeare data (coda_flax.experiments.demo).

    coda demo [--quick] [--output DIR] [--data-dir DIR] [--variants NAME ...]
              [--pretrain-task TASK] [--pretrain-steps N] [--seeds S ...]
"""

from __future__ import annotations

import argparse

from coda_flax.cli.argtypes import DATA_DIR_HELP, missing_data_dir, nonnegative_int, positive_int


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
    from coda_flax.experiments.demo import PRETRAIN_TASK, PRETRAIN_TASKS, VARIANTS
    demo.add_argument("--variants", nargs="+", metavar="NAME", default=None,
                      choices=[name for name, _ in VARIANTS],
                      help="finetune only these variants (default: all of them): "
                           + ", ".join(name for name, _ in VARIANTS))
    demo.add_argument("--pretrain-task", default=None, choices=sorted(PRETRAIN_TASKS),
                      help=f"the backbone's pretraining (default {PRETRAIN_TASK}: "
                           f"{PRETRAIN_TASKS[PRETRAIN_TASK]}; the other one is the ablation)")
    demo.add_argument("--pretrain-steps", type=positive_int(), default=None,
                      help="pretraining steps (default: 1000, or the quick run's)")
    demo.add_argument("--seeds", type=nonnegative_int, nargs="+", default=None,
                      help="finetuning seeds (default: 0 1; the variants marked one-seed in "
                           "DemoSettings.one_seed run with the first only)")
    demo.set_defaults(func=demo_main)
    return demo


def demo_main(a: argparse.Namespace) -> int:
    if missing_data_dir("demo", a.data_dir):
        return 2
    from coda_flax.cli.console import run_stoppable

    def body():
        from coda_flax.experiments import demo
        settings = {k: v for k, v in (("pretrain_task", a.pretrain_task),
                                      ("pretrain_steps", a.pretrain_steps),
                                      ("seeds", a.seeds and tuple(dict.fromkeys(a.seeds))))
                    if v is not None}
        variants = demo.VARIANTS if a.variants is None else \
            tuple(v for v in demo.VARIANTS if v[0] in a.variants)
        demo.run_demo(a.output, quick=a.quick, data_dir=a.data_dir, variants=variants,
                      settings=settings)
    return run_stoppable("coda demo", "finished stages are kept and reused when it is run "
                         "again.", body)
