"""One run per MODEL_DIR: a lock file naming the run that holds the directory.

    MODEL_DIR/LOCK   {"pid": 1234, "host": "node-7", "started": "2026-12-01T09:30:00+00:00",
                      "proc_start": "<the pid's start time in /proc, when there is one>"}

A second run refuses with `ModelDirLocked`, naming the first. A lock left by a run that died
without cleaning up (kill -9, a crash of the machine) is stale when its host is this host and
its pid is no longer alive (or is alive but is another process: its start time differs); it is
cleared with a warning; so is a lock that is empty or not JSON (a run killed while writing it)
once it is UNREADABLE_AFTER_S old. A lock from another host cannot be checked from here: the
message says which file to delete once that run is known to be gone.

The lock is re-entrant within a process (run.train holds it while Trainer.train takes it too).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import warnings

LOCK_FILE = "LOCK"
UNREADABLE_AFTER_S = 2.0     # a lock still empty / not JSON this long after it was written: stale
_HELD: dict[str, int] = {}          # lock path -> nesting depth held by this process


class ModelDirLocked(RuntimeError):
    """Another live run holds MODEL_DIR."""


def _proc_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot) from /proc; None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, proc_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, owned by someone else
        pass
    now = _proc_start(pid)
    return proc_start is None or now is None or now == proc_start   # pid reused: not alive


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def describe(holder: dict | None) -> str:
    if not holder:
        return "an unknown run (the lock file is unreadable)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')} (started "
            f"{holder.get('started')})")


def acquire(model_dir: str) -> str:
    """Takes MODEL_DIR/LOCK for this process; returns its path. Raises ModelDirLocked."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(model_dir, LOCK_FILE))
    if path in _HELD:
        _HELD[path] += 1
        return path
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "proc_start": _proc_start(os.getpid())}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:                  # being written right now, or damaged
                import time
                time.sleep(0.2)
                holder = _read(path)
            if holder is None and _age(path) > UNREADABLE_AFTER_S:
                warnings.warn(f"cleared an unreadable (empty or garbled) lock {path}, "
                              f"{_age(path):.0f} s old: a run died while writing it.",
                              stacklevel=2)
                _unlink(path)
                continue
            stale = (holder is not None and holder.get("host") == me["host"]
                     and isinstance(holder.get("pid"), int)
                     and not _alive(holder["pid"], holder.get("proc_start")))
            if not stale:
                raise ModelDirLocked(
                    f"{model_dir} is in use by {describe(holder)}; wait for that run to end or "
                    f"choose another MODEL_DIR (if it is known to be dead, delete {path})."
                ) from None
            warnings.warn(f"cleared a stale lock in {model_dir}: {describe(holder)} is no "
                          f"longer running.", stacklevel=2)
            _unlink(path)
            continue
        try:                                    # a stop (SIGTERM -> Stopped) while the lock is
            with os.fdopen(fd, "w") as f:       # written leaves no lock behind
                json.dump(me, f)
            _HELD[path] = 1
            return path
        except BaseException:
            _HELD.pop(path, None)
            _unlink(path)
            raise
    raise ModelDirLocked(f"could not take the lock {path}; another run keeps taking it.")


def _age(path: str) -> float:
    """Seconds since `path` was last written (0 when it is gone)."""
    import time
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return 0.0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def release(path: str) -> None:
    depth = _HELD.get(path, 0) - 1
    if depth > 0:
        _HELD[path] = depth
        return
    _HELD.pop(path, None)
    holder = _read(path)
    if holder is not None and holder.get("pid") == os.getpid():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class ModelDirLock:
    """`with ModelDirLock(model_dir):` holds the lock for the block."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = None

    def __enter__(self):
        path = acquire(self.model_dir)
        try:                                    # a stop before `with` has taken over releases
            self.path = path
            return self
        except BaseException:
            release(path)
            raise

    def __exit__(self, *exc):
        release(self.path)
        return False
