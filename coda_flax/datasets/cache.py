"""Prepared datasets in the data cache: one folder per settings, a manifest, a lock.

Every dataset a corpus builder writes (the Shakespeare corpus, its vocabulary, the needle
examples, ...) goes through `prepare`, the one place its path is made:

    <data_dir>/<group>/<leaf>-<key>/      e.g. <data_dir>/shakespeare/needle-3f9c0a1b2d4e
        manifest.json   {"name", "key", "settings", "rows", "files": {path: {"sha256", "bytes"}}}
        .lock           held (fcntl.flock) while the folder is checked or built

key = the first 12 hex digits of the SHA-256 of the settings as canonical JSON. The settings hold
everything that shapes the files (sizes, seeds, the format version, the source's checksum, the
key of the datasets they are built from), so different settings never write the same file.

Two processes preparing the same dataset at once: the second waits for the lock, finds the
manifest that matches the files and reuses them. A folder whose files do not match its manifest
(an interrupted build, a file changed by hand) is rebuilt. Files are written through a temporary
name and a rename (`atomic_path`); the manifest is written last, so a folder without one is
unfinished. `content_hash` is the fingerprint a run records (coda_flax.datasets.provenance).
Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import uuid
from typing import Callable, Iterator, Mapping, Optional

from coda_flax.checksums import sha256_file
from coda_flax.datasets.fetch import default_data_dir

MANIFEST = "manifest.json"
LOCK = ".lock"
_TMP = ".tmp-"

Log = Callable[[str], None]


class AmbiguousDatasetError(ValueError):
    """Several prepared datasets fit a request that names no settings."""


def settings_key(settings: Mapping) -> str:
    """12 hex digits of the SHA-256 of the settings as canonical JSON (sorted keys)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def dataset_dir(data_dir: Optional[str], name: str, settings: Mapping) -> str:
    """<data_dir>/<group>/<leaf>-<settings_key(settings)> for name "<group>/<leaf>"."""
    *group, leaf = name.split("/")
    return os.path.join(data_dir or default_data_dir(), *group, f"{leaf}-{settings_key(settings)}")


@contextlib.contextmanager
def locked(directory: str) -> Iterator[str]:
    """Holds an exclusive fcntl lock on <directory>/.lock (creating the folder); other processes
    wait. Yields directory."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, LOCK), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield directory
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary name next to `path`; renamed onto path when the block succeeds,
    deleted when it raises. Readers see the old file or the new one, never a half-written one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)
            else:
                os.remove(tmp)


def write_json(path: str, obj) -> str:
    """JSON through atomic_path."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    return path


def _files(directory: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if _TMP not in d)
        for name in files:
            if name not in (MANIFEST, LOCK) and _TMP not in name:
                out.append(os.path.relpath(os.path.join(root, name), directory))
    return sorted(out)


_HASHES: dict = {}


def _sha256(path: str) -> str:
    """sha256_file, remembered per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def file_hashes(directory: str) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}} of every file in the dataset folder (not the
    manifest, the lock or temporary files)."""
    return {rel: {"sha256": _sha256(os.path.join(directory, rel)),
                  "bytes": os.path.getsize(os.path.join(directory, rel))}
            for rel in _files(directory)}


def read_json_if_present(path: str) -> Optional[dict]:
    """The JSON object in path, None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_manifest(directory: str) -> Optional[dict]:
    """The folder's manifest, None when it has none (never built or unfinished)."""
    return read_json_if_present(os.path.join(directory, MANIFEST))


def content_hash(settings: Mapping, files: Mapping[str, Mapping]) -> str:
    """16 hex digits identifying a dataset's settings and the SHA-256 of each file."""
    body = {"settings": settings, "files": {k: v["sha256"] for k, v in files.items()}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def verify(directory: str) -> list[str]:
    """What differs between the folder and its manifest ([] = every file matches)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return [f"no {MANIFEST} in {directory} (never built, or the build was interrupted)"]
    recorded, now = manifest["files"], file_hashes(directory)
    problems = [f"{rel} is missing" for rel in recorded if rel not in now]
    problems += [f"{rel} changed (sha256 {now[rel]['sha256'][:12]}..., manifest "
                 f"{recorded[rel]['sha256'][:12]}...)" for rel in recorded
                 if rel in now and now[rel]["sha256"] != recorded[rel]["sha256"]]
    problems += [f"{rel} is not in the manifest" for rel in now if rel not in recorded]
    return problems


def current_hash(directory: str) -> str:
    """content_hash of the files as they are now (equal to the manifest's "hash" only when
    verify finds nothing)."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"{directory} is not a prepared dataset (no {MANIFEST})")
    return content_hash(manifest["settings"], file_hashes(directory))


def label(directory: str) -> str:
    """<group>/<leaf>-<key>: how reports name a dataset (its folder below the data dir)."""
    return "/".join(os.path.normpath(directory).split(os.sep)[-2:])


def _clear(directory: str) -> None:
    for entry in os.listdir(directory):
        if entry == LOCK:
            continue
        path = os.path.join(directory, entry)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) \
            else os.remove(path)


def prepare(data_dir: Optional[str], name: str, settings: Mapping,
            build: Callable[[str], Optional[Mapping]], *, force: bool = False,
            log: Log = print) -> dict:
    """The dataset `name` with these settings, built once.

    Args:
        data_dir: the data cache (default $CODA_DATA_DIR or ~/.cache/coda_flax/data).
        name: "<group>/<leaf>", e.g. "shakespeare/needle".
        settings: everything that shapes the files (JSON-serialisable).
        build: directory -> {"rows": {...}, ...} (recorded in the manifest); writes the
            dataset's files into the (empty) directory, each through atomic_path.
        force: rebuild even when the folder matches its manifest.
        log: progress messages.
    Returns:
        the manifest plus "dir" (the folder) and "reused" (whether it was already built).
    """
    directory = dataset_dir(data_dir, name, settings)
    with locked(directory):
        if not force and read_manifest(directory) is not None:
            problems = verify(directory)
            if not problems:
                log(f"[data] {name} already prepared: {directory}")
                return dict(read_manifest(directory), dir=directory, reused=True)
            log(f"[data] {directory} does not match its manifest ({'; '.join(problems[:3])}): "
                f"rebuilding it")
        _clear(directory)
        info = dict(build(directory) or {})
        files = file_hashes(directory)
        manifest = {"name": name, "key": settings_key(settings), "settings": dict(settings),
                    "rows": info.pop("rows", {}), **info, "files": files,
                    "hash": content_hash(settings, files)}
        write_json(os.path.join(directory, MANIFEST), manifest)
    return dict(manifest, dir=directory, reused=False)


def find(data_dir: Optional[str], name: str, where: Optional[Mapping] = None) -> list[str]:
    """The prepared folders (with a manifest) of dataset `name` under data_dir whose settings
    hold the items of `where`, sorted."""
    *group, leaf = name.split("/")
    pattern = os.path.join(data_dir or default_data_dir(), *group, f"{leaf}-*", MANIFEST)
    found = sorted(os.path.dirname(p) for p in glob.glob(pattern))
    return [d for d in found if all(read_manifest(d)["settings"].get(k) == v
                                    for k, v in (where or {}).items())]


def find_one(data_dir: Optional[str], name: str, what: str,
             where: Optional[Mapping] = None) -> Optional[str]:
    """The only prepared folder of `name` (find; None when there is none);
    AmbiguousDatasetError naming them when there are several. what: how errors name it."""
    found = find(data_dir, name, where)
    if len(found) > 1:
        raise AmbiguousDatasetError(
            f"{len(found)} {what} datasets are prepared under {os.path.dirname(found[0])} with "
            f"different settings ({', '.join(os.path.basename(f) for f in found)}); pass the "
            f"folder you mean (the 'dir' that prepared it returned) instead of the data dir.")
    return found[0] if found else None


__all__ = ["MANIFEST", "AmbiguousDatasetError", "settings_key", "dataset_dir", "locked",
           "atomic_path", "write_json", "file_hashes", "read_manifest", "content_hash",
           "verify", "current_hash", "label", "prepare", "find", "find_one"]
