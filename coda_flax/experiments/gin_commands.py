"""`coda train` / `coda eval` command lines as the table runner writes them: gin literals and
bindings, gin file names (packaged or absolute), T5X-style shell quoting.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
from typing import Iterable, Sequence

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
    return " ".join(["coda", *(shell_quote(a) for a in argv)])


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
