"""`coda train` / `coda eval` command lines as the table runner writes them: gin literals and
bindings, gin file names (packaged or absolute), T5X-style shell quoting; and the same runs as
`python -m t5x.train` / `t5x.eval` command lines (`coda reproduce --engine t5x`).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
from typing import Iterable, Mapping, Sequence

from coda_flax.experiments.paper_tables import ReproduceError
from coda_flax.resources import GIN_DIR, packaged_gin_name, resolve_gin_file


def gin_literal(value) -> str:
    """A Python value as a gin literal (strings quoted, dicts as Python dicts)."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e16:
        return repr(int(value))
    return repr(value)


def parse_bindings(bindings: Iterable) -> list[tuple[str, str]]:
    """'NAME = VALUE' strings (coda_flax.cli.train.split_gin_flags) or (name, value) pairs."""
    out = []
    for b in bindings or ():
        if isinstance(b, (tuple, list)):
            name, value = b
        else:
            if "=" not in b:
                raise ReproduceError(f"gin binding {b!r} is not NAME=VALUE.")
            name, value = b.split("=", 1)
        out.append((name.strip(), str(value).strip()))
    return out


def gin_file_arg(path: str) -> str:
    """A table's gin file as a --gin_file argument. A packaged one (models/x.gin; the older
    gin/models/x.gin too) by its short name, which `coda train` finds in the packaged gin folder
    from any directory, unless a file of that name in the current directory would shadow it
    (then its absolute path); any other file by its absolute path."""
    name = packaged_gin_name(path)
    if name is None:
        return os.path.abspath(path)
    full = os.path.join(GIN_DIR, *name.split("/"))
    return name if resolve_gin_file(name) == full else full


def gin_file_path(arg: str) -> str:
    """A --gin_file argument for messages: its packaged name, else its absolute path."""
    return packaged_gin_name(arg) or os.path.abspath(arg)


def gin_key(path: str) -> str:
    """A gin file as the run fingerprints name it: for a packaged file its repository path of
    the version that introduced fingerprints (gin/<name>; the variants were in
    gin/models/variants/ then), so that the fingerprints of finished runs stay valid; any
    other file, the path as given."""
    name = packaged_gin_name(path)
    if name is None:
        return path
    return "gin/" + ("models/" + name if name.startswith("variants/") else name)


_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def shell_quote(arg: str) -> str:
    """T5X's quoting style for gin flags: --gin.NAME="'value'" (shlex.split gives back arg)."""
    if _SAFE.match(arg):
        return arg
    if arg.startswith("--gin.") and "=" in arg:
        name, value = arg.split("=", 1)
        if _SAFE.match(name) and not re.search(r'["$`\\!]', value):
            return f'{name}="{value}"'
    return shlex.quote(arg)


def command_line(argv: Sequence[str]) -> str:
    """`coda train ...`, or `python -m t5x.train ...` for a T5X argv (argv[0] "t5x.train")."""
    head = ["python", "-m"] if argv and argv[0].startswith("t5x.") else ["coda"]
    return " ".join([*head, *(shell_quote(a) for a in argv)])


def argv_bindings(argv: Sequence[str]) -> dict[str, str]:
    """The --gin.NAME=VALUE bindings of a stage's argv (last one wins)."""
    out = {}
    for a in argv:
        if a.startswith("--gin.") and "=" in a:
            name, value = a[len("--gin."):].split("=", 1)
            out[name.strip()] = value.strip()
    return out


def literal(text: str | None):
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def missing_gin_files(gin_files: Sequence[str]) -> list[str]:
    """The --gin_file arguments that resolve to no file (named for messages)."""
    return [gin_file_path(f) for f in gin_files if resolve_gin_file(f) is None]


# ------------------------------------------------------------------ the T5X engine
# `coda train`'s run files -> the T5X run files (gin/t5x/runs) with the same settings.
T5X_RUN_FILES = {"runs/finetune.gin": "t5x/runs/finetune.gin",
                 "runs/pretrain.gin": "t5x/runs/pretrain.gin", "runs/eval.gin": "t5x/runs/eval.gin"}
# Table 8's learning-rate schedules (`coda train`'s train.schedule) -> the T5X finetuning run file
# that has it (text tasks: constant; vision tasks: cosine decay).
T5X_SCHEDULE_RUN_FILES = {"constant": "t5x/runs/finetune.gin",
                          "cosine": "t5x/runs/finetune_cosine.gin"}
# Tasks whose T5X task file holds wiring the run files lack (the Pix2Struct tasks: their
# registration with DATA_DIR, the max patches and Pix2Struct's vocabulary): it follows the run
# file. (The text tasks need only PAPER_TASK: t5x/paper_task.gin registers them.)
T5X_TASK_FILES = {"coda_pix2struct_ocrvqa": "t5x/tasks/ocrvqa.gin",
                  "coda_pix2struct_docvqa": "t5x/tasks/docvqa.gin",
                  "coda_pix2struct_screen2words": "t5x/tasks/screen2words.gin"}
# The table runner's bindings -> their names in the T5X run files.
T5X_NAMES = {"MIXTURE_OR_TASK_NAME": "PAPER_TASK", "CodaConfig.num_routed": "NUM_ROUTED",
             "SPLIT": "utils.DatasetConfig.split"}
# Configurables of only one of T5X's scripts: a binding of them goes to that script's stages.
_T5X_SCRIPT_OF = {"train": "train", "evaluate": "eval"}


def t5x_argv(script: str, gin_files: Sequence[str], bindings: Mapping[str, str]) -> list[str]:
    """A `coda train` / `coda eval` stage of `coda reproduce` as T5X's `python -m t5x.<script>`
    argv (without "python -m"): the same model and variant files, T5X's run file for its run
    file (for finetuning, the one with the stage's learning-rate schedule), the task's T5X task
    file where it has one (T5X_TASK_FILES), its bindings renamed (T5X_NAMES). The search path
    is GIN_DIR."""
    files = []
    for f in gin_files:
        name = packaged_gin_name(f)
        files.append(T5X_RUN_FILES.get(name, name) if name else os.path.abspath(f))
    unknown = [f for f in files if f.startswith("runs/")]
    if unknown:
        raise ReproduceError(f"--engine t5x: no T5X run file for {unknown[0]} (T5X runs: "
                             f"{', '.join(T5X_RUN_FILES)}).")
    schedule = literal(bindings.get("train.schedule", "'constant'"))
    if schedule not in T5X_SCHEDULE_RUN_FILES:
        raise ReproduceError(f"--engine t5x: no T5X run file has the learning-rate schedule "
                             f"{schedule!r} (T5X schedules: "
                             f"{', '.join(T5X_SCHEDULE_RUN_FILES)}).")
    files = [T5X_SCHEDULE_RUN_FILES[schedule] if f == T5X_RUN_FILES["runs/finetune.gin"] else f
             for f in files]
    task_file = T5X_TASK_FILES.get(literal(bindings.get("MIXTURE_OR_TASK_NAME")))
    if task_file:
        files.append(task_file)
    out = {}
    for name, value in bindings.items():
        if _T5X_SCRIPT_OF.get(name.split(".")[0], script) != script:
            continue                       # another script's configurable (train.*, evaluate.*)
        if name == "train.schedule":
            continue                       # the run file's (above)
        out[T5X_NAMES.get(name, name)] = value
    return [f"t5x.{script}", f"--gin_search_paths={GIN_DIR}",
            *(f"--gin_file={f}" for f in files), *(f"--gin.{n}={v}" for n, v in out.items())]
