"""`coda claims`: the paper's trade-off claims at CPU scale (coda_flax.experiments.claims).

    coda claims [--scale reduced|full|tiny] [--output DIR] [--data-dir DIR] [--jobs N]
                [--data-only | --images-only | --pilot GROUP [GROUP ...]]
"""

from __future__ import annotations

import argparse
import os
import sys

from coda_flax.cli.argtypes import DATA_DIR_HELP, missing_data_dir, positive_int

SCALES = ("full", "reduced", "tiny")    # experiments.claims.SCALES (not imported: a fast --help)
# two runs side by side: these models keep about one core busy each (README, Claims at CPU scale)
JOBS = min(2, os.cpu_count() or 1)


def add_claims_parser(sub) -> argparse.ArgumentParser:
    """Adds the `claims` subcommand to an argparse subparsers object."""
    claims = sub.add_parser(
        "claims", help="the paper's trade-off claims at CPU scale (issue 18)",
        description="Train what claims a-g need (r sweep at two input lengths, Table 3's "
                    "routers, k-to-all vs k-to-k, model sizes, CoDA pretraining, a page task), "
                    "then write claims.{md,json} (claim | paper | ours | holds?), a per-run "
                    "table with floors and error bars, tradeoff.png and figure7/. Finished "
                    "runs are reused; a stopped run resumes.")
    claims.add_argument("--scale", default="reduced", choices=SCALES,
                        help="reduced (default: 256 / 512 tokens, 2 sizes, the README's run, "
                             "under 2 hours on 2 cores with 2 jobs), full (512 / 1,024 tokens, "
                             "3 sizes: well over 2 hours, not run), tiny (minutes, for tests)")
    claims.add_argument("--jobs", type=positive_int("expected an integer >= 1 (worker "
                                                    "processes)"), default=JOBS, metavar="N",
                        help="train N runs side by side, each in its own worker process "
                             f"(default: 2, or 1 on a 1-core machine; here {JOBS})")
    claims.add_argument("--output", default="outputs/claims", help="output folder")
    claims.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    claims.add_argument("--data-only", action="store_true",
                        help="prepare the data and print the text task's floors, train nothing")
    claims.add_argument("--images-only", action="store_true",
                        help="the page task alone (claim d): its runs, the ink share per "
                             "layer, figure7/ and images.{md,json}")
    claims.add_argument("--pilot", nargs="+", metavar="GROUP", default=None,
                        help="train (or reuse) only these text runs (n<length>/<size>/<variant>, "
                             "e.g. n256/d64/pa) and their backbones, and print their accuracy "
                             "beside the floors and the backbones' 'who gave it?' accuracy")
    claims.set_defaults(func=claims_main)
    return claims


def claims_main(a: argparse.Namespace) -> int:
    if missing_data_dir("claims", a.data_dir):
        return 2
    if sum((a.data_only, a.images_only, bool(a.pilot))) > 1:
        print("coda claims: --data-only, --images-only and --pilot exclude each other; pass "
              "one.", file=sys.stderr)
        return 2
    from coda_flax.cli.console import run_stoppable

    def body():
        from coda_flax.experiments import claims
        if a.pilot:
            claims.run_pilot(a.output, a.scale, a.pilot, data_dir=a.data_dir, jobs=a.jobs)
        else:
            claims.run_claims(a.output, scale=a.scale, data_dir=a.data_dir,
                              data_only=a.data_only, images_only=a.images_only, jobs=a.jobs)
    return run_stoppable("coda claims", "finished runs are kept and reused, a stopped run "
                         "resumes, when it is run again.", body)
