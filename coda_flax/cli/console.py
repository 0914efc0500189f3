"""A quiet console for the `coda` commands: start-up noise is silenced
(`quiet_startup`, from coda_flax.train.quiet, which each worker of a run with jobs > 1 calls too).

`stopped_by_signals` is the other half of a clean console: SIGTERM / SIGINT outside the training
loop (start-up, evaluation, the final save, the demo's other stages) raise `Stopped`, so that
locks are released on the way out and the command prints one line (`stop_line`) with exit status
128 + the signal (143 for SIGTERM). The training loop replaces the SIGTERM handler while it runs
(it saves the step and raises Preempted) and puts this one back afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import threading

from coda_flax.train.quiet import quiet_startup


class Stopped(BaseException):
    """SIGTERM / SIGINT outside the training loop. A BaseException (as KeyboardInterrupt), so
    that no `except Exception` on the way out swallows it; `with` blocks (the MODEL_DIR lock)
    still release what they hold."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def stopped_by_signals():
    """SIGTERM and SIGINT raise Stopped inside the block; the previous handlers come back after.
    Only the main thread can set handlers; elsewhere the block runs unchanged."""
    def handler(signum, _frame):
        raise Stopped(signum)

    hook = sys.unraisablehook

    def again(info):
        """Stopped raised where Python can only report it (a gc callback, a __del__): the
        signal is sent again from another thread 50 ms later (a handler run inside this hook
        would be swallowed too), to be raised in the main thread's ordinary code."""
        if isinstance(info.exc_value, Stopped):
            again_soon = threading.Timer(0.05, os.kill, (os.getpid(), info.exc_value.signum))
            again_soon.daemon = True
            again_soon.start()
            return
        hook(info)
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:                            # not the main thread
        previous = {}
    sys.unraisablehook = again
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if sys.unraisablehook is again:
            sys.unraisablehook = hook


def stop_line(command: str, e: Stopped, what: str) -> tuple[str, int]:
    """The one line a stopped command prints, and its exit status (128 + the signal)."""
    return f"{command}: stopped by {e}; {what}", 128 + e.signum


def without_gin_notes(e: BaseException) -> str:
    """An exception's message on one line, without the call-site notes gin appends."""
    text = str(e)
    for marker in ("\n  In call to configurable", "\n  In file", "\n  No configurable"):
        if marker in text and text.index(marker) > 0:
            text = text[:text.index(marker)]
    return " ".join(text.split())


_DISK_FULL = ("No space left on device", "RESOURCE_EXHAUSTED: Error writing")
_WRITTEN = (r'Failed writing: "([^"]+)"', r'local file "([^"]+)"', r'Error writing "([^"]+)"',
            r"No space left on device: '([^']+)'")                      # str(OSError)


def is_disk_full(e: BaseException) -> bool:
    """Python's ENOSPC, or tensorstore's (orbax's) message for it."""
    return getattr(e, "errno", None) == errno.ENOSPC or any(m in str(e) for m in _DISK_FULL)


def one_line_error(e: BaseException) -> str:
    """An exception as one line: its type and message, without gin's call-site notes; a full
    disk (Python's ENOSPC, or tensorstore's) as the path and the bytes that did not fit."""
    text = without_gin_notes(e)
    if is_disk_full(e):
        paths = [getattr(e, "filename", None)] + [m.group(1) for p in _WRITTEN if (
            m := re.search(p, text))]
        path = next((p for p in paths if p), None)
        size = re.search(r"Failed to write (\d+) bytes", text)
        return (f"disk full: no space left on device "
                f"{f'writing {path}' if path else f'({text[:150]})'}"
                f"{f' ({size.group(1)} bytes)' if size else ''}; free some space or choose "
                f"another directory, then run again (checkpoints already saved are intact)")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def run_stoppable(command: str, what: str, body) -> int:
    """Runs body() (which returns an exit status or None) after quiet_startup, with SIGTERM /
    SIGINT raising Stopped, and a training loop's Preempted treated as a SIGTERM. A stop prints
    one line ("<command>: stopped by SIGTERM; <what>") and returns 128 + the signal; a full disk
    prints one line naming the path (one_line_error) and returns 1, other errors propagate
    with their traceback."""
    try:
        with stopped_by_signals():
            quiet_startup()
            from coda_flax.train.trainer import Preempted
            try:
                return int(body() or 0)
            except Preempted as e:               # SIGTERM inside a training loop
                raise Stopped(signal.SIGTERM) from e
    except Stopped as e:
        line, status = stop_line(command, e, what)
        print(line, file=sys.stderr)
        return status
    except Exception as e:                       # noqa: BLE001 (the CLI's edge)
        if not is_disk_full(e):
            raise
        print(f"{command}: error: {one_line_error(e)}; {what}", file=sys.stderr)
        return 1


class _HideBackgroundTracebacks(logging.Filter):
    """Drops ERROR records with a traceback (orbax's save threads, asyncio's orphaned tasks: a
    full disk logs ~300 lines of them before the error reaches the command); counts them."""

    def __init__(self):
        super().__init__()
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info:
            self.hidden += 1
            return False
        return True

    def unraisable(self, info) -> None:
        """sys.unraisablehook: orbax's threads calling into a closed event loop after a failed
        save ("Event loop is closed", dozens of them) and the reads orbax abandons after a
        failed one are counted; anything else is printed."""
        from coda_flax.checkpoints.integrity import abandoned_read   # jax: loaded by now
        if abandoned_read(info) or isinstance(info.exc_value, RuntimeError) and (
                "Event loop is closed" in str(info.exc_value)):
            self.hidden += 1
            return
        sys.__unraisablehook__(info)


_BACKGROUND = _HideBackgroundTracebacks()


def hide_background_tracebacks() -> _HideBackgroundTracebacks:
    """From here to the process's exit, absl's and asyncio's ERROR records that carry a
    traceback, and "Event loop is closed" from orbax's threads, are not printed (the command
    prints the error itself, in one line; --debug does not call this). Returns the filter; its
    `hidden` counts what was dropped. Installed once per process."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if _BACKGROUND not in logger.filters:
            logger.addFilter(_BACKGROUND)
    sys.unraisablehook = _BACKGROUND.unraisable
    return _BACKGROUND


def exit_now(status: int) -> None:
    """Ends a stopped `coda` process at once (streams flushed, locks already released on the
    way out): a stop can leave jax's or orbax's threads mid-work, and the interpreter's normal
    teardown then sometimes crashes (a segmentation fault after the stop line was printed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
