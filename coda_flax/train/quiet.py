"""Quiet start-up for a process that imports TensorFlow / seqio: a `coda` command (through
coda_flax.cli.console) and each worker process of experiments.runner.execute_all(jobs > 1).
TensorFlow / CUDA start-up lines and seqio's cache warnings are silenced before the heavy
imports:

* TF_CPP_MIN_LOG_LEVEL=3: TensorFlow's C++ info / warning lines (unless set to something other
  than jax's import-time default "1").
* TensorFlow prints "oneDNN custom operations are on" and "Could not find cuda drivers" from C++
  before its logging is set up, which no environment variable reaches: `quiet_startup` imports
  TensorFlow (when installed) with the process's stderr (file descriptor 2) sent to a temporary
  file, and replays that file if the import fails.
* jax's "no GPU/TPU found, falling back to CPU" warning and seqio's "uncached FunctionDataset" /
  "does not support caching" warnings are filtered from Python logging.

CODA_VERBOSE=1 leaves everything as it is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile

_QUIET_LOGGERS = ("jax._src.xla_bridge",)
_SEQIO_CACHE_WORDS = ("uncached FunctionDataset", "does not support caching")


class _DropSeqioCacheWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "seqio" not in (record.pathname or ""):
            return True
        message = str(record.msg)
        return not any(word in message for word in _SEQIO_CACHE_WORDS)


def _import_quietly(module: str) -> None:
    """Imports `module` with file descriptor 2 redirected (native start-up lines); the lines
    are written back to stderr if the import fails."""
    if module in sys.modules or importlib.util.find_spec(module) is None:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):               # no real stderr (embedded, captured)
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            __import__(module)
        except Exception:                       # not Stopped: a stop replays no import noise
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quiet_startup(tensorflow: bool = True) -> None:
    """Silences start-up noise; call it before importing jax / TensorFlow / seqio."""
    if os.environ.get("CODA_VERBOSE", "") not in ("", "0"):
        return
    if getattr(quiet_startup, "done", False):
        return
    quiet_startup.done = True
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1") == "1":     # importing jax sets "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    drop = _DropSeqioCacheWarnings()
    logging.getLogger("absl").addFilter(drop)   # seqio logs through absl's logger
    if tensorflow:
        _import_quietly("tensorflow")
