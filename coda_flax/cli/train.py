"""`coda train|eval|infer` and `python -m coda_flax.train`: the command line of the gin edge
(coda_flax.train.gin_config).

    python -m coda_flax.train --gin_file=models/tiny.gin --gin_file=runs/finetune.gin \\
        --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'coda_shakespeare_play'"
    python -m coda_flax.train --gin-dir         # prints the folder of the packaged gin files

--gin_file is looked up as given, then in --gin_search_path, then in the packaged gin folder.
`coda eval` prints its metrics (and writes EVAL_OUTPUT_DIR/eval_results.json).
"""

from __future__ import annotations

import argparse
import os
import sys

from coda_flax.resources import GIN_DIR

MODES = ("train", "eval", "infer")


def split_gin_flags(argv):
    """Separates --gin.NAME=VALUE bindings (T5X's flag style) from the other arguments."""
    bindings, rest = [], []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return bindings, rest


def add_run_parsers(sub):
    for mode, help_text in (("train", "train with a gin run file (runs/*.gin)"),
                            ("eval", "evaluate a checkpoint (runs/eval.gin)"),
                            ("infer", "decode raw inputs (runs/infer.gin)")):
        p = sub.add_parser(mode, help=help_text,
                           description=f"{help_text}. Bind values with --gin.NAME=VALUE.")
        p.add_argument("--gin_file", action="append", default=[], required=True,
                       help="gin file (repeatable): a path, or a name in the packaged gin "
                            "folder (models/tiny.gin, runs/finetune.gin; `python -m "
                            "coda_flax.train --gin-dir` prints it)")
        p.add_argument("--gin_search_path", action="append", default=[])
        p.add_argument("--gin_allow_unknown", action="store_true",
                       help="accept gin macros that nothing reads (default: an error)")
        p.add_argument("--debug", action="store_true",
                       help="show the full traceback of an error (also: CODA_DEBUG=1)")
        p.set_defaults(func=lambda args, mode=mode: run_mode(mode, args))


def format_metrics(results: dict) -> str:
    """`coda eval`'s metrics, one `name value` per line (numbers with 4 decimals)."""
    lines = []
    for name, value in results.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        lines.append(f"  {name:<16} {value}")
    return "\n".join(lines)


def run_mode(mode: str, args) -> int:
    """Runs a mode; errors are one line on stderr (exit 1) unless --debug / CODA_DEBUG=1.

    Exit status: 0 done, 1 error, 143 preempted (SIGTERM; a checkpoint of the step was saved)."""
    from coda_flax.cli.console import (Stopped, hide_background_tracebacks, one_line_error,
                                       quiet_startup, stop_line, stopped_by_signals,
                                       without_gin_notes)
    debug = getattr(args, "debug", False) or os.environ.get("CODA_DEBUG", "") not in ("", "0")
    hidden = None if debug else hide_background_tracebacks()
    before = hidden.hidden if hidden else 0
    try:
        with stopped_by_signals():
            quiet_startup()
            from coda_flax.train.gin_config import run_gin
            from coda_flax.train.trainer import Preempted
            try:
                result = run_gin(mode, args.gin_file, getattr(args, "gin_bindings", []),
                                 args.gin_search_path, getattr(args, "gin_allow_unknown", False))
            except Preempted as e:               # checkpoint saved; the scheduler may restart us
                print(f"[train] {without_gin_notes(e)}", file=sys.stderr)
                return 143
    except Stopped as e:                         # outside the loop: nothing new was saved
        line, status = stop_line(f"coda {mode}", e, "nothing new was saved (the checkpoints "
                                 "already in MODEL_DIR are intact; run again to resume).")
        print(line, file=sys.stderr)
        return status
    except Exception as e:                       # noqa: BLE001 (the CLI's edge)
        if debug:
            raise
        print(f"coda {mode}: error: {one_line_error(e)} (--debug or CODA_DEBUG=1 for the "
              f"traceback)", file=sys.stderr)
        return 1
    if hidden and hidden.hidden > before:
        print(f"coda {mode}: note: {hidden.hidden - before} background error(s) with a "
              f"traceback were hidden (--debug shows them)", file=sys.stderr)
    if mode == "eval" and isinstance(result, dict):
        print("coda eval: metrics")
        print(format_metrics(result))
    return 0


def main(argv=None, mode: str = "train") -> int:
    """`python -m coda_flax.train [train|eval|infer] --gin_file=... --gin.NAME=VALUE`."""
    bindings, rest = split_gin_flags(sys.argv[1:] if argv is None else argv)
    if rest == ["--gin-dir"]:
        print(GIN_DIR)
        return 0
    parser = argparse.ArgumentParser(prog="python -m coda_flax.train")
    sub = parser.add_subparsers(dest="command")
    add_run_parsers(sub)
    args = parser.parse_args([mode, *rest] if not rest or rest[0] not in MODES else rest)
    args.gin_bindings = bindings
    return args.func(args)
