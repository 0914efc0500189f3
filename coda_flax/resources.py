"""Where the data files live: the gin files (GIN_DIR) and the paper-table configs (CONFIGS_DIR).

Both have one source in the repository, its top-level folders, and ship inside the wheel
(setup.py / setup.cfg map them into the package):

    repository          wheel                   what
    gin/models/         coda_flax/gin/models/   model sizes (presets): MODEL_CONFIG
    gin/variants/       coda_flax/gin/variants/ dense, Parallel Adapter, CoDA variants: REDUCTION
    gin/runs/           coda_flax/gin/runs/     `coda train` / `coda eval` / `coda infer` runs
    gin/t5x/            coda_flax/gin/t5x/      T5X's train.py / eval.py / infer.py wiring + runs
    configs/tableN.py   coda_flax/configs/      the paper's tables (module coda_flax.configs)

An installed wheel finds them inside the package; a source checkout (the editable install of
scripts/env.sh) at the repository's top level. `python -m coda_flax.train --gin-dir` prints
GIN_DIR.

A --gin_file argument is looked up (resolve_gin_file) as given (absolute, or relative to the
current directory), then in each --gin_search_path, then in GIN_DIR. Earlier names still work:
gin/models/tiny.gin (a leading "gin/" is dropped) and models/variants/dense.gin (now
variants/dense.gin).
"""

from __future__ import annotations

import os

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _data_dir(name: str) -> str:
    """coda_flax/<name> in a wheel, else <repository>/<name> (a source checkout)."""
    packaged = os.path.join(_PACKAGE, name)
    return packaged if os.path.isdir(packaged) else os.path.join(os.path.dirname(_PACKAGE), name)


GIN_DIR = _data_dir("gin")
CONFIGS_DIR = _data_dir("configs")
# Earlier names of packaged gin files -> their names now (prefixes, '/'-separated).
_LEGACY_PREFIXES = (("gin/", ""), ("models/variants/", "variants/"))


def _current_names(parts: list[str]) -> list[list[str]]:
    """The names under GIN_DIR that a relative path may mean, the path itself first."""
    names = [parts]
    for old, new in _LEGACY_PREFIXES:
        for name in list(names):
            joined = "/".join(name)
            if joined.startswith(old):
                names.append((new + joined[len(old):]).split("/"))
    return names


def packaged_gin_name(path: str) -> str | None:
    """The name under GIN_DIR (models/tiny.gin) of a packaged gin file given as
    models/tiny.gin, an earlier name (gin/models/tiny.gin, models/variants/dense.gin) or an
    absolute path into GIN_DIR; None otherwise."""
    if os.path.isabs(path):
        rel = os.path.relpath(os.path.normpath(path), GIN_DIR)
        return None if rel.startswith("..") else rel.replace(os.sep, "/")
    for candidate in _current_names(os.path.normpath(path).split(os.sep)):
        if os.path.isfile(os.path.join(GIN_DIR, *candidate)):
            return "/".join(candidate)
    return None


def resolve_gin_file(path: str, search_paths=()) -> str | None:
    """The file a --gin_file argument names (see the module doc for the order), or None."""
    for candidate in (path, *(os.path.join(p, path) for p in search_paths)):
        if os.path.isfile(candidate):
            return candidate
    name = packaged_gin_name(path)
    return None if name is None else os.path.join(GIN_DIR, *name.split("/"))
