"""Per-array SHA-256 digests of saved parameters and training state, checked on every restore.

    digests = tree_digests(tree)            {"encoder/layers_0/.../kernel": "9f2c...", ...}
    verify_arrays(restored, digests, where) IntegrityError naming `where` and the array

A digest covers an array's dtype, shape and bytes (C order), so a flipped bit that changes a
value, a truncated array or a changed dtype all fail; a flip that changes no value (padding in a
file) passes, as it should. Writers: `save_checkpoint` (config.json's "params_sha256": the
`final/` of a run, `coda convert`) and the trainer (the checkpoint's meta item, written by orbax
in the same atomic step as the state). `verify_arrays` is the one check every reader runs
(`load_checkpoint`: `coda eval|infer|visualize|convert`, an initial checkpoint; the trainer's
resume), and `read_error` turns an orbax / tensorstore read failure into one line naming the
array and the file (`read_or_raise`: a restore with that error, the abandoned reads dropped).
"""

from __future__ import annotations

import gc
import hashlib
import re
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np

ALGORITHM = "sha256"


class IntegrityError(ValueError):
    """A saved array does not match its recorded digest (or cannot be read): damaged files."""


def array_digest(x) -> str:
    """The SHA-256 of an array's dtype, shape and bytes (C order), as 64 hex characters."""
    a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def tree_digests(tree) -> dict[str, str]:
    """{"/"-joined path: digest} for every array leaf of a pytree (nested dicts, optax states).

    An array that is not fully addressable by this process (sharded over hosts) has no single
    byte string here and gets no digest."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not hasattr(leaf, "shape"):
            continue
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue
        out[_name(path)] = array_digest(leaf)
    return out


def verify_arrays(tree, digests: Mapping[str, str], where: str) -> None:
    """Checks every array of `tree` against the digests recorded when it was saved.

    Args:
        tree: the restored pytree (its leaf paths name the arrays as `tree_digests` does).
        digests: the saved {name: sha256}.
        where: the saved directory / file, for the message.
    Raises:
        IntegrityError: naming `where` and the first array (of how many) whose digest differs,
            or that was saved but is missing, or is present but was not saved.
    """
    got = tree_digests(tree)
    missing = sorted(set(digests) - set(got) - _unaddressable(tree))
    bad = sorted(k for k in set(got) & set(digests) if got[k] != digests[k])
    extra = sorted(set(got) - set(digests))
    if bad:
        others = f": also {', '.join(bad[1:4])}{', ...' if len(bad) > 4 else ''}" \
            if len(bad) > 1 else ""
        raise IntegrityError(
            f"{where}: array {bad[0]} does not match its saved {ALGORITHM} ({len(bad)} of "
            f"{len(digests)} arrays differ{others}); the files are damaged. Restore them from a "
            f"copy, or write the checkpoint again.")
    if missing or extra:
        which = (f"saved but not read: {', '.join(missing[:4])}" if missing
                 else f"read but not saved: {', '.join(extra[:4])}")
        raise IntegrityError(f"{where}: the arrays do not match the saved list of {ALGORITHM} "
                             f"digests ({which}); the checkpoint is damaged or was edited.")


def _unaddressable(tree) -> set[str]:
    return {_name(p) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable}


_ARRAY = re.compile(r'Error reading "([^"/]+)')       # "encoder.layers_0...kernel/0.0"
_SPEC_ARRAY = re.compile(r"'path': '([^'/][^']*?)/?'")  # the array's key inside an OCDBT spec
_FILE = re.compile(r'(?:local file|file) "([^"]+)"')


def read_error(e: BaseException, where: str) -> IntegrityError:
    """An orbax / tensorstore read failure as one line naming the array and the file it names
    (tensorstore's messages carry both), without the tensorstore spec."""
    text = " ".join(str(e).split())
    array = _ARRAY.search(text) or _SPEC_ARRAY.search(text)
    files = [f for f in _FILE.findall(text) if not f.endswith("/")]
    reason = text.split(" [tensorstore_spec")[0].split(" See full TensorStore details")[0]
    reason = reason.split(": ")[-1] if ": " in reason else reason
    name = array.group(1).replace(".", "/") if array else None
    what = f"array {name}" if name else "the arrays"
    in_file = f" (file {files[-1]})" if files else ""
    return IntegrityError(f"{where}: cannot read {what}{in_file}: {reason[:200]}; the files are "
                          f"damaged. Restore them from a copy, or write the checkpoint again.")


def read_or_raise(restore: Callable[[], Any], where: str,
                  damaged: Callable[[BaseException], bool] = lambda e: True):
    """restore()'s result; a failure that `damaged` accepts is raised as read_error's
    IntegrityError (one line naming the array), after drop_failed_reads."""
    try:
        return restore()
    except Exception as e:                                   # noqa: BLE001 (orbax's many kinds)
        if not damaged(e):
            raise
        error = read_error(e, where)
    drop_failed_reads()
    raise error


def abandoned_read(info) -> bool:
    """Whether a sys.unraisablehook report is one of the reads orbax abandoned when another
    read of the same restore failed (its coroutine is finalized with the error unretrieved)."""
    code = getattr(info.object, "cr_code", None)
    return code is not None and "orbax" in code.co_filename and "read" in code.co_name


def drop_failed_reads() -> None:
    """Finalizes the reads orbax abandoned after the first failed one, without their reports.

    When one array of a damaged checkpoint cannot be read, orbax raises that error and leaves
    the other reads' coroutines to fail unobserved; Python reports each with a traceback
    whenever they are garbage collected, later and elsewhere. Call this after the failing
    restore has returned; reads still running then are left to the process's hook (the CLI's
    drops them too).
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda info: None if abandoned_read(info) else hook(info)
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


__all__ = ["IntegrityError", "array_digest", "tree_digests", "verify_arrays", "read_error",
           "read_or_raise", "abandoned_read", "drop_failed_reads", "ALGORITHM"]
