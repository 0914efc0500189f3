"""gin edge of the training stack: `coda train|eval|infer` and `python -m coda_flax.train`.

    python -m coda_flax.train --gin_file=models/tiny.gin --gin_file=runs/finetune.gin \\
        --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'coda_shakespeare_play'"
    python -m coda_flax.train --gin-dir         # prints the folder of the packaged gin files

--gin_file is looked up as given, then in --gin_search_path, then in the packaged gin folder
(coda_flax/gin; coda_flax.resources.resolve_gin_file; gin/models/tiny.gin, the repository path
of earlier versions, still works).

Run files use T5X's macro names (MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS,
TRAIN_STEPS, BATCH_SIZE, INITIAL_CHECKPOINT_PATH, ...). This module is the only place that
reads gin; the functions it configures live in coda_flax.train.run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import gin

from coda_flax.config import CodaConfig, model_config
from coda_flax.resources import GIN_DIR, resolve_gin_file
from coda_flax.train import run
from coda_flax.train.trainer import Preempted


def _register_configurables():
    if getattr(_register_configurables, "done", False):
        return
    gin.external_configurable(model_config, "model_config")
    gin.external_configurable(CodaConfig, "CodaConfig")
    for fn in (run.train, run.evaluate, run.infer):
        gin.external_configurable(fn, fn.__name__)
    _register_configurables.done = True


class GinConfigError(ValueError):
    """An unknown or unset gin macro."""


# Macros the run files define for T5X compatibility that nothing in coda_flax reads.
IGNORED_MACROS = frozenset({"USE_CACHED_TASKS"})


def _walk_references(value, found):
    import gin.config as gc
    if isinstance(value, gc.ConfigurableReference):
        found.add(value.scoped_selector)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _walk_references(v, found)
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk_references(k, found)
            _walk_references(v, found)


def check_gin(gin_bindings=(), allow_unknown: bool = False) -> None:
    """Strict gin: every macro must be read by something, and none may be left %gin.REQUIRED.

    A macro that nothing references (`--gin.TRAIN_STEPZ=3`) is a typo that gin would accept
    silently; it is an error unless allow_unknown (--gin_allow_unknown). Bindings of unknown
    configurables or parameters are already errors in gin itself."""
    import gin.config as gc
    macros, references = {}, set()
    for (scope, selector), params in gc._CONFIG.items():        # gin's parsed bindings
        if selector == "gin.macro":
            macros[scope] = params.get("value")
        for v in params.values():
            _walk_references(v, references)
    unread = sorted(n for n in macros
                    if f"{n}/gin.macro" not in references and n not in IGNORED_MACROS)
    # A run file's own macro may be bypassed by a direct binding (BATCH_SIZE in eval.gin when
    # --gin.evaluate.batch_size=4 is passed): that is ordinary gin use, so only the macros set
    # on the command line must be read; unread ones from files are reported, not refused.
    from_flags = {b.split("=", 1)[0].strip() for b in gin_bindings}
    unused = [] if allow_unknown else [n for n in unread if n in from_flags]
    if unused:
        known = sorted(n for n in macros if f"{n}/gin.macro" in references)
        raise GinConfigError(
            f"unknown gin macro(s) {', '.join(unused)} (set on the command line) are read by "
            f"nothing; a typo? Known macros: {', '.join(known)}. Pass --gin_allow_unknown to "
            f"accept them.")
    if unread and not allow_unknown:
        logging.warning("gin macro(s) %s set in a gin file are read by nothing (bypassed by a "
                        "direct binding, or a typo in the file)", ", ".join(unread))
    required = sorted(name for name, v in macros.items()
                      if isinstance(v, gc.ConfigurableReference)
                      and v.scoped_selector == "gin.REQUIRED/gin.constant"
                      and f"{name}/gin.macro" in references)
    if required:
        raise GinConfigError(
            f"gin macro(s) {', '.join(required)} must be set: add "
            f"{' '.join(f'--gin.{n}=...' for n in required)} (strings in quotes, e.g. "
            f"--gin.{required[0]}=\"'value'\").")


def parse_gin(gin_files, gin_bindings, search_paths=(), allow_unknown: bool = False):
    """T5X-style flags: --gin_file (repeatable) and --gin.NAME=VALUE.

    A gin file is looked up as given, then in search_paths, then in the packaged GIN_DIR
    (coda_flax.resources.resolve_gin_file). Strict by default (check_gin): unknown macros and
    unset required ones are errors."""
    _register_configurables()
    for path in (*search_paths, os.getcwd(), GIN_DIR):
        gin.add_config_file_search_path(path)
    resolved = [resolve_gin_file(f, search_paths) for f in gin_files]
    missing = [f for f, r in zip(gin_files, resolved) if r is None]
    if missing:
        where = ", ".join(["the current directory", *search_paths, GIN_DIR])
        raise FileNotFoundError(f"gin file(s) not found: {missing}; looked in {where} "
                                f"(e.g. runs/finetune.gin, models/tiny.gin).")
    gin.clear_config()                # a second parse in one process starts from scratch
    gin.parse_config_files_and_bindings(resolved, list(gin_bindings),
                                        finalize_config=False)
    check_gin(gin_bindings, allow_unknown)


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


_ENTRY = {"train": "train", "eval": "evaluate", "infer": "infer"}      # gin names


def one_line_error(e: BaseException) -> str:
    """An exception as one line: its type and message, without gin's call-site notes."""
    text = str(e)
    for marker in ("\n  In call to configurable", "\n  In file", "\n  No configurable"):
        if marker in text and text.index(marker) > 0:
            text = text[:text.index(marker)]
    text = " ".join(text.split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def run_mode(mode: str, args) -> int:
    """Runs a mode; errors are one line on stderr (exit 1) unless --debug / CODA_DEBUG=1.

    Exit status: 0 done, 1 error, 143 preempted (SIGTERM; a checkpoint of the step was saved)."""
    debug = getattr(args, "debug", False) or os.environ.get("CODA_DEBUG", "") not in ("", "0")
    try:
        parse_gin(args.gin_file, getattr(args, "gin_bindings", []), args.gin_search_path,
                  getattr(args, "gin_allow_unknown", False))
        fn = gin.get_configurable(_ENTRY[mode])
        if mode == "train":
            operative = gin.config_str()         # the resolved config, saved in MODEL_DIR
            fn(extra_files={"config.gin": operative})
        else:
            fn()
    except Preempted as e:                       # checkpoint saved; the scheduler may restart us
        print(f"[train] {e}", file=sys.stderr)
        return 143
    except Exception as e:                       # noqa: BLE001 (the CLI's edge)
        if debug:
            raise
        print(f"coda {mode}: error: {one_line_error(e)} (--debug or CODA_DEBUG=1 for the "
              f"traceback)", file=sys.stderr)
        return 1
    return 0


def main(argv=None, mode: str = "train") -> int:
    bindings, rest = split_gin_flags(sys.argv[1:] if argv is None else argv)
    if rest == ["--gin-dir"]:
        print(GIN_DIR)
        return 0
    parser = argparse.ArgumentParser(prog=f"python -m coda_flax.train")
    sub = parser.add_subparsers(dest="command")
    add_run_parsers(sub)
    args = parser.parse_args([mode, *rest] if not rest or rest[0] not in _ENTRY else rest)
    args.gin_bindings = bindings
    return args.func(args)
