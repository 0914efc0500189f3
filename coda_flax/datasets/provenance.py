"""Which prepared datasets a run used, and whether they are still the same.

Task registration binds each seqio task (and mixture) to the dataset folders it reads
(`bind`); a run records `fingerprint(task)` = {dataset label: content hash of its files now}
(coda_flax.datasets.cache) next to what it produced, and a run that resumes or reuses a stage
compares the record with the data as it is now (`changes`, `check_run`): a dataset that
changed is named, and the stage is rebuilt or the run refused, never silently continued.

    bind(task, dirs)           registration: the task reads these dataset folders
    fingerprint(tasks)         {label: hash} of the datasets behind the tasks, hashed now
    changes(recorded, now)     "" when equal, else which datasets changed, one phrase
    check_run(model_dir, fp)   MODEL_DIR/data.json: written on the first run, compared on a
                               resume (DataChangedError naming the dataset)
Standard library only.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Optional, Union

from coda_flax.datasets import cache

RUN_RECORD = "data.json"

_BOUND: dict[str, tuple[str, ...]] = {}


class DataChangedError(RuntimeError):
    """A run's datasets are not the ones its earlier part (checkpoint, report) was made on."""


def bind(task: str, dirs: Iterable[Optional[str]]) -> None:
    """Records that `task` reads the prepared dataset folders `dirs` (None entries skipped;
    folders without a manifest skipped: they are not cache datasets)."""
    _BOUND[task] = tuple(d for d in dirs if d and cache.read_manifest(d) is not None)


def bound(task: str) -> tuple[str, ...]:
    """The dataset folders bound to a task ((): none, e.g. TFDS tasks)."""
    return _BOUND.get(task, ())


def fingerprint(tasks: Union[str, Iterable[str]]) -> dict[str, str]:
    """{dataset label: content hash of its files as they are now} over the datasets bound to
    the task(s)."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    dirs = sorted({d for t in names for d in bound(t)})
    return {cache.label(d): cache.current_hash(d) for d in dirs}


def changes(recorded: Optional[Mapping[str, str]], now: Mapping[str, str]) -> str:
    """"" when `now` equals `recorded`; otherwise one phrase naming every dataset that changed,
    appeared or disappeared. recorded None: a record from before datasets were fingerprinted."""
    if recorded is None:
        return ("no record of the datasets it was made on (made before datasets were "
                "fingerprinted); now: " + ", ".join(now)) if now else ""
    parts = [f"dataset {k} changed (hash {recorded[k]} -> {now[k]})"
             for k in sorted(recorded) if k in now and recorded[k] != now[k]]
    parts += [f"dataset {k} is no longer used or no longer there" for k in sorted(recorded)
              if k not in now]
    parts += [f"dataset {k} was not used before" for k in sorted(now) if k not in recorded]
    return "; ".join(parts)


def check_run(model_dir: str, now: Mapping[str, str]) -> None:
    """Writes MODEL_DIR/data.json (the fingerprint) on a first run; on a later run in the same
    folder raises DataChangedError when the data differs from the record."""
    recorded = run_record(model_dir)
    if recorded is not None:
        diff = changes(recorded, now)
        if diff:
            raise DataChangedError(
                f"{model_dir} was trained on other data: {diff}. Its checkpoints would continue "
                f"on data they were not started on; use a new MODEL_DIR (or delete this one) to "
                f"train on the current data.")
        return
    os.makedirs(model_dir, exist_ok=True)
    cache.write_json(os.path.join(model_dir, RUN_RECORD), dict(now))


def run_record(model_dir: str) -> Optional[dict]:
    """MODEL_DIR/data.json, None when the run has none."""
    return cache.read_json_if_present(os.path.join(model_dir, RUN_RECORD))


__all__ = ["RUN_RECORD", "DataChangedError", "bind", "bound", "fingerprint", "changes",
           "check_run", "run_record"]
