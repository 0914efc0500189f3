"""Looking up seqio tasks / mixtures by name, with a clear error listing what is registered."""

from __future__ import annotations

import difflib
from typing import Optional

import seqio


class UnknownTaskError(ValueError):
    """No seqio task or mixture of that name is registered."""


def registered_names(prefix: Optional[str] = None) -> list[str]:
    """Sorted names of all registered seqio tasks and mixtures (optionally with a prefix)."""
    names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    return sorted(n for n in names if prefix is None or n.startswith(prefix))


def get_task_or_mixture(name: str):
    """The registered seqio.Task or seqio.Mixture `name`; UnknownTaskError lists the registered
    names (and the closest matches) otherwise."""
    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    if name in seqio.MixtureRegistry.names():
        return seqio.MixtureRegistry.get(name)
    names = registered_names()
    close = difflib.get_close_matches(name, names, n=3)
    msg = f"unknown task or mixture '{name}'"
    if close:
        msg += f" (did you mean {', '.join(repr(c) for c in close)}?)"
    msg += "; registered ones are: " + (", ".join(names) if names else "(none)")
    msg += (". coda_flax registers its tasks with coda_flax.tasks.register_paper_tasks(vocab) and "
            "coda_flax.tasks.register_offline_tasks(data_dir, vocab_path).")
    raise UnknownTaskError(msg)


def add_task(name: str, **task_kwargs) -> seqio.Task:
    """Registers a seqio task, replacing a previous registration of the same name (so that tasks
    can be re-registered with another vocabulary or data directory)."""
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, **task_kwargs)


def add_mixture(name: str, tasks, default_rate=1.0) -> seqio.Mixture:
    """Registers a seqio mixture, replacing a previous registration of the same name."""
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, tasks, default_rate=default_rate)
