"""`coda reproduce`: the command line of coda_flax.experiments.reproduce (argv is parsed here only).

    coda reproduce --table N [--dry-run [--json]] [--output DIR] [--only ROW[,ROW...]]
                   [--pretrain-steps N] [--engine coda|t5x] [--gin.NAME=VALUE ...]

`add_reproduce_parser(subparsers)` registers the subcommand; `python -m coda_flax.cli.reproduce`
runs it on its own.
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  coda reproduce --table 2 --dry-run            # 45 experiments and their coda train/eval commands
  coda reproduce --table all --dry-run          # every table (5 and 6 are listed, not runnable)
  coda reproduce --table 2 --output runs/ \\
      --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/{preset}'" \\
      --gin.VOCAB_PATH="'/t5/spiece.model'" --gin.TFDS_DATA_DIR="'/data/tfds'"
  coda reproduce --table 3 --only 'soft_topk_*' --only base_rte --gin.TRAIN_STEPS=2000
  coda reproduce --table 2 --engine t5x --dry-run   # the same runs as python -m t5x.train/eval

Results: OUTPUT/<table>/<ROW.COLUMN>/eval_results.json per experiment (finished ones are skipped
when run again), training runs in OUTPUT/runs/ (shared between tables), and the table in the
paper's layout in OUTPUT/tableN.md (+ tableN.json).
--gin bindings go to every stage; "{preset}" (also {size}, {task}, {row}, {column}, {table}) in a
value is replaced per experiment. Exit status: 0 ok, 1 some experiments failed, 2 nothing run
(usage, missing prerequisites, table not implemented).
"""


def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `reproduce` subcommand to an argparse subparsers object."""
    from coda_flax.experiments.paper_tables import TABLE_NUMBERS
    from coda_flax.experiments.reproduce import DEFAULT_OUTPUT
    p = subparsers.add_parser(
        "reproduce", help="run the paper's tables (2, 3, 4, 5, 6, 9) as grids of coda train/eval",
        description="Reproduce a table of the paper: one `coda train` (+ CoDA pretraining) and "
                    "`coda eval` per cell, resumable, written in the paper's layout with ours "
                    "and the paper's number side by side.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", required=True, metavar="N",
                   help=f"the paper's table: {', '.join(map(str, TABLE_NUMBERS))} "
                        "(or 'all' with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the experiments and the exact commands; run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print JSON instead")
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR",
                   help=f"output folder (default {DEFAULT_OUTPUT})")
    p.add_argument("--only", action="append", default=[], metavar="ROW",
                   help="run only these rows (row keys as --dry-run shows them), columns or "
                        "ROW.COLUMN experiments; * / ? patterns; repeatable or comma-separated")
    p.add_argument("--pretrain-steps", type=int, default=None, metavar="N",
                   help="CoDA pretraining steps before finetuning (default: the paper's, 100K "
                        "for text; 0: none, finetune straight from the dense checkpoint)")
    p.add_argument("--engine", choices=("coda", "t5x"), default="coda",
                   help="coda: `coda train` / `coda eval` (default); t5x: T5X's `python -m "
                        "t5x.train` / `t5x.eval` with gin/t5x/ (T5X installed; "
                        "INITIAL_CHECKPOINT_PATH a T5X checkpoint: `python -m coda_flax.t5x`)")
    p.set_defaults(func=reproduce_main)
    return p


def reproduce_main(args) -> int:
    from coda_flax.cli.console import run_stoppable
    from coda_flax.experiments import paper_tables
    from coda_flax.experiments import reproduce as lib
    bindings = getattr(args, "gin_bindings", []) or []
    try:
        if str(args.table).strip().lower() == "all":
            if not args.dry_run:
                raise lib.ReproduceError("--table all works with --dry-run only; run one table "
                                         "at a time.")
            names = [f"table{n}" for n in paper_tables.TABLE_NUMBERS]
        else:
            names = [paper_tables.table_id(args.table)]
        specs = [paper_tables.load_table(n) for n in names]
        if args.dry_run:
            out = []
            for spec in specs:
                exps = lib.select(spec, lib.expand(spec, args.output, bindings,
                                                   args.pretrain_steps, args.engine), args.only)
                if args.json:
                    out.append(dict(table=spec["id"], status=spec["status"],
                                    status_note=spec.get("status_note", ""),
                                    experiments=lib.experiments_json(exps)))
                else:
                    print(lib.dry_run_text(spec, exps, args.output))
            if args.json:
                print(json.dumps(out if len(out) > 1 else out[0], indent=2))
            return 0

        def body():
            summary = lib.run_table(specs[0], args.output, bindings=bindings, only=args.only,
                                    pretrain_steps=args.pretrain_steps, engine=args.engine)
            return 1 if summary["failed"] else 0
        return run_stoppable("coda reproduce", "finished experiments are kept and skipped when "
                             "it is run again.", body)
    except lib.ReproduceError as err:
        print(f"coda reproduce: {err}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    from coda_flax.cli.train import split_gin_flags
    bindings, rest = split_gin_flags(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="coda")
    add_reproduce_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["reproduce", *rest])
    args.gin_bindings = bindings
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
