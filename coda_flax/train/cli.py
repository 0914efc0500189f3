"""gin edge of the training stack: `coda train|eval|infer` and `python -m coda_flax.train`.

    python -m coda_flax.train --gin_file=gin/models/tiny.gin --gin_file=gin/runs/finetune.gin \\
        --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'coda_shakespeare_play'"

Run files use T5X's macro names (MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS,
TRAIN_STEPS, BATCH_SIZE, INITIAL_CHECKPOINT_PATH, ...). This module is the only place that
reads gin; the functions it configures live in coda_flax.train.run.
"""

from __future__ import annotations

import argparse
import os
import sys

import gin

from coda_flax.config import CodaConfig, ModelConfig
from coda_flax.train import run
from coda_flax.train.trainer import Preempted

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "gin")


def model_config(preset: str | None = None, coda: CodaConfig | None = None, **fields) -> ModelConfig:
    """A preset (with overrides) or an explicit ModelConfig, for gin model files."""
    if preset is not None:
        return ModelConfig.from_preset(preset, coda=coda, **fields)
    return ModelConfig(coda=coda, **fields)


def _register_configurables():
    if getattr(_register_configurables, "done", False):
        return
    gin.external_configurable(model_config, "model_config")
    gin.external_configurable(CodaConfig, "CodaConfig")
    for fn in (run.train, run.evaluate, run.infer):
        gin.external_configurable(fn, fn.__name__)
    _register_configurables.done = True


def parse_gin(gin_files, gin_bindings, search_paths=()):
    """T5X-style flags: --gin_file (repeatable, searched in gin/ too) and --gin.NAME=VALUE."""
    _register_configurables()
    for path in (*search_paths, os.getcwd(), GIN_DIR):
        gin.add_config_file_search_path(path)
    missing = [f for f in gin_files if not any(
        os.path.exists(os.path.join(p, f)) for p in ("", *search_paths, GIN_DIR))]
    if missing:
        raise FileNotFoundError(f"gin file(s) not found: {missing}; looked in the current "
                                f"directory and {GIN_DIR} (e.g. gin/runs/finetune.gin).")
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings),
                                        finalize_config=False)


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
    for mode, help_text in (("train", "train with a gin run file (gin/runs/*.gin)"),
                            ("eval", "evaluate a checkpoint (gin/runs/eval.gin)"),
                            ("infer", "decode raw inputs (gin/runs/infer.gin)")):
        p = sub.add_parser(mode, help=help_text,
                           description=f"{help_text}. Bind values with --gin.NAME=VALUE.")
        p.add_argument("--gin_file", action="append", default=[], required=True,
                       help="gin file (repeatable); paths are also looked up under gin/")
        p.add_argument("--gin_search_path", action="append", default=[])
        p.set_defaults(func=lambda args, mode=mode: run_mode(mode, args))


_ENTRY = {"train": "train", "eval": "evaluate", "infer": "infer"}      # gin names


def run_mode(mode: str, args) -> int:
    parse_gin(args.gin_file, getattr(args, "gin_bindings", []), args.gin_search_path)
    fn = gin.get_configurable(_ENTRY[mode])
    if mode == "train":
        operative = gin.config_str()             # the resolved config, saved in MODEL_DIR
        try:
            fn(extra_files={"config.gin": operative})
        except Preempted as e:                   # checkpoint saved; the scheduler may restart us
            print(f"[train] {e}", file=sys.stderr)
            return 143
    else:
        fn()
    return 0


def main(argv=None, mode: str = "train") -> int:
    bindings, rest = split_gin_flags(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"python -m coda_flax.train")
    sub = parser.add_subparsers(dest="command")
    add_run_parsers(sub)
    args = parser.parse_args([mode, *rest] if not rest or rest[0] not in _ENTRY else rest)
    args.gin_bindings = bindings
    return args.func(args)
