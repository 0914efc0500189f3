"""Where the packaged data files live: gin files (GIN_DIR) and the paper-table configs.

Both ship inside the wheel, so an installed coda_flax finds them without the repository:

    coda_flax/gin/models/<preset>.gin, models/variants/*.gin, runs/*.gin   (GIN_DIR)
    coda_flax/configs/tableN.py                                           (coda_flax.configs)

A --gin_file argument is looked up (resolve_gin_file) as given (absolute, or relative to the
current directory), then in each --gin_search_path, then in GIN_DIR. The repository-relative
form of earlier versions, gin/models/tiny.gin, still works: a leading "gin/" is dropped when
looking in GIN_DIR. `python -m coda_flax.train --gin-dir` prints GIN_DIR.
"""

from __future__ import annotations

import os

GIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gin")
_LEGACY_PREFIX = "gin"          # gin/models/tiny.gin (the repository path before packaging)


def packaged_gin_name(path: str) -> str | None:
    """The name under GIN_DIR (models/tiny.gin) of a packaged gin file given as
    models/tiny.gin, gin/models/tiny.gin or an absolute path into GIN_DIR; None otherwise."""
    if os.path.isabs(path):
        rel = os.path.relpath(os.path.normpath(path), GIN_DIR)
        return None if rel.startswith("..") else rel.replace(os.sep, "/")
    parts = os.path.normpath(path).split(os.sep)
    for candidate in (parts, parts[1:] if parts[0] == _LEGACY_PREFIX else None):
        if candidate and os.path.isfile(os.path.join(GIN_DIR, *candidate)):
            return "/".join(candidate)
    return None


def resolve_gin_file(path: str, search_paths=()) -> str | None:
    """The file a --gin_file argument names (see the module doc for the order), or None."""
    for candidate in (path, *(os.path.join(p, path) for p in search_paths)):
        if os.path.isfile(candidate):
            return candidate
    name = packaged_gin_name(path)
    return None if name is None else os.path.join(GIN_DIR, *name.split("/"))
