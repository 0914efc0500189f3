"""The one experiment pipeline: a run is a declarative spec, executed once and reused after.

    Run                 one training + evaluation: preset (the model config) x variant (its
                        CodaConfig) x task x schedule x seed, optionally started from a parent
                        Run's final checkpoint (dense pretraining -> finetuning)
    fingerprint(run)    sha256 of every field that changes the result, the parent's fingerprint
                        and the hashes of the task's datasets (coda_flax.datasets.provenance)
    run_dir(root, run)  root/<run.name>, holding run.json (the fingerprint and the spec); a
                        folder made for another fingerprint is set aside (renamed), never reused
    adopt(root, run)    a folder made before, without run.json, taken as the run's own
    execute(run, root)  reuses a finished folder (result.json); else trains (a stopped run
                        resumes from its checkpoints in the same folder), evaluates on the
                        validation split and writes result.json
    execute_all(runs)   parents first, each distinct run once; jobs > 1: the runs to train
                        side by side in spawned worker processes (side_by_side), a run once
                        its parent is finished, a stop sent on to every worker

The demo, `coda compare`, `coda claims`, scripts/sweep_demo.py and `coda reproduce`'s training
stages (experiments/gin_runs.py: a Run from gin files) declare their runs as lists of Run; speed is
measured apart (experiments.pipeline.speed_table: side by side, in one process). Nothing here
reads argv or gin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

from coda_flax.config import ModelConfig
from coda_flax.datasets import provenance
from coda_flax.experiments import pipeline

Log = Callable[[str], None]

RUN_FILE, RESULT_FILE = "run.json", "result.json"
# run.train settings that do not change what a run computes: left out of the fingerprint, so
# that a run moved to another data folder or logged differently is still reused
NON_RESULT_OPTIONS = frozenset({"progress", "log_every", "checkpoint_every", "keep_checkpoints",
                                "data_dir", "tfds_data_dir", "num_partitions", "extra_files"})
# run.train's keywords that Run's own fields set: not allowed in train_options
_OWN = frozenset({"model_config", "mixture_or_task_name", "task_feature_lengths", "train_steps",
                  "batch_size", "model_dir", "initial_checkpoint_path", "learning_rate",
                  "trainable", "seed", "k_anneal_fraction", "k_anneal_stages",
                  "eval_batch_size", "eval_max_examples"})


@dataclasses.dataclass(frozen=True)
class Run:
    """One training + evaluation: a point of preset x variant x task x schedule x seed."""

    name: str                      # a label and folder name below the root, e.g. "coda_r3/seed0"
    model: ModelConfig             # the whole model config (its CodaConfig included)
    task: str                      # a registered seqio task (the caller registers / prepares it)
    feature_lengths: tuple[tuple[str, int], ...]
    steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    trainable: str = "finetune"    # "all" for a dense / CoDA pretraining run
    init: "Run | str | None" = None    # a parent Run (its final checkpoint) or a checkpoint path
    k_anneal_fraction: float = 0.2
    k_anneal_stages: int = 2
    eval_batch_size: int = 32
    eval_max_examples: int | None = None
    train_options: tuple[tuple[str, Any], ...] = ()   # the rest of run.train's settings
    # train_options names (and "init", for a checkpoint path) that only say where something
    # is: left out of the fingerprint too (reproduce's gin runs: the vocabulary, the dense
    # starting checkpoint), so that moving them keeps a finished run
    locations: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name or os.path.isabs(self.name) or ".." in self.name.split("/"):
            raise ValueError(f"Run name {self.name!r}: use a relative folder name below the "
                             f"root, e.g. 'coda_r3/seed0'.")
        if isinstance(self.feature_lengths, Mapping):      # a dict is accepted, stored sorted
            object.__setattr__(self, "feature_lengths",
                               tuple(sorted(self.feature_lengths.items())))
        if isinstance(self.train_options, Mapping):
            object.__setattr__(self, "train_options", tuple(sorted(self.train_options.items())))
        clash = sorted(_OWN & {k for k, _ in self.train_options})
        if clash:
            raise ValueError(f"Run {self.name!r}: train_options {clash} are Run fields; set "
                             f"them on the Run itself.")
        for field in ("steps", "batch_size", "eval_batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"Run {self.name!r}: {field} must be >= 1, got "
                                 f"{getattr(self, field)}.")

    @property
    def options(self) -> dict:
        return dict(self.train_options)


def spec(run: Run) -> dict:
    """The JSON-able settings that decide a run's result (the fingerprint's input, recorded in
    run.json): every field but the name and locations, train_options without
    NON_RESULT_OPTIONS and the run's locations, the parent as its fingerprint (a checkpoint path
    with the fingerprint of the run that wrote it, when a runner did; the path itself unless
    "init" is a location) and the task's datasets as their hashes."""
    init = run.init
    if isinstance(init, Run):
        init = {"run": init.name, "fingerprint": fingerprint(init)}
    elif init is not None:          # a path; a runner's final checkpoint names its run's record
        record = _record(os.path.dirname(os.path.normpath(init)))
        init = {"path": None if "init" in run.locations else init,
                "fingerprint": record and record.get("fingerprint")}
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)
              if f.name not in ("name", "model", "init", "train_options", "locations")}
    return {**fields, "model": dataclasses.asdict(run.model), "init": init,
            "train_options": {k: v for k, v in run.train_options
                              if k not in NON_RESULT_OPTIONS and k not in run.locations},
            "data": provenance.fingerprint(run.task)}


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr)


def digest(obj) -> str:
    """sha256 (hex) of obj's canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def fingerprint(run: Run, settings: Mapping | None = None) -> str:
    """digest of spec(run) (or of `settings`, spec(run) made already)."""
    return digest(settings or spec(run))


def _flat(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _differences(old: Mapping | None, new: Mapping) -> str:
    """Which settings differ ("model.coda.reduction 3 -> 5"), one phrase; the datasets through
    provenance.changes."""
    if not old:
        return "no run.json (a run of unknown settings)"
    parts = [provenance.changes(old.get("data"), new["data"])] if \
        _canonical(old.get("data")) != _canonical(new["data"]) else []
    a, b = (_flat({k: v for k, v in t.items() if k != "data"}) for t in (old, new))
    parts += [f"{k} {_canonical(a.get(k))[:60]} -> {_canonical(b.get(k))[:60]}"
              for k in sorted(set(a) | set(b)) if _canonical(a.get(k)) != _canonical(b.get(k))]
    return "; ".join(p for p in parts if p) or "another fingerprint"


def _set_aside(path: str, old_fp: str | None) -> str:
    base = f"{path}.set-aside-{(old_fp or 'unknown')[:8]}"
    target, i = base, 1
    while os.path.exists(target):
        target, i = f"{base}-{i}", i + 1
    os.rename(path, target)
    return target


def run_dir(root: str, run: Run, log: Log = print) -> str:
    """root/<run.name>, made for this run: created with run.json ({"name", "fingerprint",
    "spec"}) when new; a folder holding another fingerprint (or none) is renamed to
    <name>.set-aside-<its fingerprint>, saying which settings differ, and a new one made."""
    path = os.path.join(root, run.name)
    settings = spec(run)
    fp = fingerprint(run, settings)
    record = _record(path)
    if record is not None and record.get("fingerprint") == fp:
        return path
    if os.path.exists(path):
        why = _differences(record and record.get("spec"), settings)
        moved = _set_aside(path, record and record.get("fingerprint"))
        log(f"  {run.name}: {path} holds a run of other settings ({why}); set aside as "
            f"{moved}, running again")
    os.makedirs(path)
    _write_record(path, run, settings)
    return path


def _write_record(path: str, run: Run, settings: Mapping | None = None) -> None:
    settings = settings or spec(run)
    pipeline.save_json(os.path.join(path, RUN_FILE), {"name": run.name, "fingerprint":
                       fingerprint(run, settings), "spec": settings}, default=repr)


def adopt(root: str, run: Run, log: Log = print) -> bool:
    """Takes root/<run.name>, a folder without run.json, as this run's (writes run.json), so
    that execute resumes it instead of setting it aside; for callers whose folder names already
    pin the settings (reproduce's training runs, named by the hash of their gin settings, from
    before they ran here). Whether it did."""
    path = os.path.join(root, run.name)
    if not os.path.isdir(path) or _record(path) is not None:
        return False
    _write_record(path, run)
    log(f"  {run.name}: {path} was made without a run.json; taken as this run's folder")
    return True


def final_checkpoint(root: str, run: Run) -> str:
    """The folder of a run's final parameters (a load_checkpoint directory)."""
    return os.path.join(root, run.name, "final")


def _record(path: str) -> dict | None:
    file = os.path.join(path, RUN_FILE)
    return pipeline.load_json(file) if os.path.exists(file) else None


def finished(root: str, run: Run) -> bool:
    """Whether root/<run.name> holds this run's result (its fingerprint, result.json)."""
    path = os.path.join(root, run.name)
    record = _record(path)
    return bool(record and record.get("fingerprint") == fingerprint(run)
                and os.path.exists(os.path.join(path, RESULT_FILE)))


def load(root: str, run: Run):
    """(model, params) of a finished run under root: make_model(run.model) and its final
    parameters."""
    return _load(run, os.path.join(root, run.name))


def _load(run: Run, path: str):
    from coda_flax.checkpoints import load_checkpoint
    from coda_flax.train.ctc_model import make_model
    return make_model(run.model), load_checkpoint(os.path.join(path, "final"))[1]


def register(run: Run):
    """Registers the run's task (the offline ones on first use, from its data_dir /
    vocab_path) and returns it; its datasets are fingerprinted only once it is registered."""
    from coda_flax.train import run as train_run
    o = run.options
    return train_run.ensure_registered(run.task, o.get("data_dir"), o.get("vocab_path"),
                                       o.get("tfds_data_dir"))


def _train(run: Run, path: str, init: str | None) -> tuple[Any, dict]:
    """run.train for `run` in `path` (it resumes from the checkpoints there): (params, eval)."""
    from coda_flax.train import run as train_run
    from coda_flax.train.settings import train_arguments
    out = train_run.train(**train_arguments(
        model_config=run.model, mixture_or_task_name=run.task,
        task_feature_lengths=dict(run.feature_lengths), train_steps=run.steps,
        batch_size=run.batch_size, model_dir=path, initial_checkpoint_path=init,
        learning_rate=run.learning_rate, trainable=run.trainable, seed=run.seed,
        k_anneal_fraction=run.k_anneal_fraction, k_anneal_stages=run.k_anneal_stages,
        eval_batch_size=run.eval_batch_size, eval_max_examples=run.eval_max_examples,
        **run.options))
    return out["params"], out["eval"]


def execute(run: Run, root: str, log: Log = print, load_params: bool = False) -> dict:
    """Runs `run` under root (its parent first, reused when finished) unless root/<name> holds
    its finished result: returns result.json's {"name", "fingerprint", "eval", "steps",
    "trainable_params", "total_params", "seconds", "reused"}, plus "model" and "params" when
    load_params."""
    init = run.init
    if isinstance(init, Run):
        register(init)                          # before its data is fingerprinted
        if not finished(root, init):
            execute(init, root, log)
        init = final_checkpoint(root, init)
    register(run)                               # before its data is fingerprinted
    path = run_dir(root, run, log)
    result_path = os.path.join(path, RESULT_FILE)
    model = params = None
    if os.path.exists(result_path):
        result = dict(pipeline.load_json(result_path), reused=True)
        log(f"  {run.name}: reusing the finished run in {path}")
    else:
        t0 = time.time()
        if os.path.isdir(os.path.join(path, "final")):      # trained; stopped before result.json
            from coda_flax.train import run as train_run
            model, params = _load(run, path)
            ev = train_run.evaluate_params(model, params, register(run), dict(run.feature_lengths),
                                           "validation", run.eval_batch_size,
                                           run.eval_max_examples)
        else:
            params, ev = _train(run, path, init)
        counts = pipeline.parameter_counts(params, run.trainable)
        result = {"name": run.name, "fingerprint": _record(path)["fingerprint"], "eval": ev,
                  "steps": run.steps, "trainable_params": counts["trainable"],
                  "total_params": counts["total"], "seconds": time.time() - t0, "reused": False}
        pipeline.save_json(result_path, result, default=float)
    if load_params:
        if params is None:
            model, params = _load(run, path)
        elif model is None:
            from coda_flax.train.ctc_model import make_model
            model = make_model(run.model)
        result = dict(result, model=model, params=params)
    return result


def _closure(runs: Sequence[Run]) -> list[Run]:
    """The runs and their parents, parents first, each run once."""
    order: list[Run] = []

    def visit(run: Run):
        if isinstance(run.init, Run):
            visit(run.init)
        if run not in order:
            order.append(run)
    for r in runs:
        visit(r)
    return order


def execute_all(runs: Sequence[Run], root: str, log: Log = print,
                load_params: bool = False, jobs: int = 1,
                setup: Callable[[], Any] | None = None) -> dict[str, dict]:
    """Executes the runs and their parents (parents first, each distinct fingerprint once),
    logging "[i/N] name"; returns {name: execute's result} for every run executed.

    jobs > 1: the runs still to train go side by side in `jobs` worker processes (side_by_side),
    a run as soon as its parent is finished; their results are the same (one run is one
    process's work either way). setup: a picklable callable each worker calls first, e.g. to
    register the runs' tasks as the caller did in this process."""
    order = _closure(runs)
    names = [r.name for r in order]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"different runs share the folder name(s) {twice}: give each its own "
                         f"Run.name.")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1 (worker processes), got {jobs}.")
    trained = side_by_side(order, root, log, jobs, setup) if jobs > 1 else {}
    out = {}
    for i, run in enumerate(order, 1):
        if run.name in trained and not load_params:
            out[run.name] = trained[run.name]
            continue
        log(f"[{i}/{len(order)}] {run.name}")
        out[run.name] = execute(run, root, log, load_params=load_params)
        if run.name in trained:
            out[run.name]["reused"] = False
    return out


def _start_worker(setup, pids) -> None:
    """A worker's start: SIGINT ignored (a terminal's Ctrl-C reaches the whole process group:
    the parent stops the workers); SIGTERM outside a training loop ends the current run with
    SystemExit (the training loop saves its step and raises Preempted instead); TensorFlow's
    start-up lines silenced (as a `coda` command's); setup(); then its pid to the parent (which
    forwards a stop to it, and starts no run before every worker is ready)."""
    import signal

    def stop(signum, _frame):
        raise SystemExit(128 + signum)
    from coda_flax.train.quiet import quiet_startup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop)
    quiet_startup()
    if setup is not None:
        setup()
    pids.put(os.getpid())


def _work(run: Run, root: str) -> dict:
    return execute(run, root, log=lambda m: print(f"  [{run.name}] {m.strip()}", flush=True))


def _start_all(pool, workers: int, pids) -> list[int]:
    """Starts every worker of the pool now (one empty call each, submitted together: a pool
    starts a process per call while none is idle) and waits until each is ready; their pids.
    Otherwise a pool starts its second process only when a second run is submitted, and a short
    run can leave it idle while the first process takes every run."""
    import queue
    started, out = [pool.submit(int) for _ in range(workers)], []
    while len(out) < workers:
        try:
            out.append(pids.get(timeout=1.0))
        except queue.Empty:
            for future in started:
                if future.done() and future.exception():
                    raise future.exception()            # a worker's setup failed
    return out


def side_by_side(order: Sequence[Run], root: str, log: Log, jobs: int,
                 setup: Callable[[], Any] | None) -> dict[str, dict]:
    """Trains the unfinished runs of `order` (parents first) in `jobs` spawned worker processes,
    each run once its parent is finished; returns {name: result} of the runs trained. A stop
    of this process (an exception, SIGTERM / SIGINT raising one) is sent on to the workers as
    SIGTERM: each running run saves its step and ends, and the stop is raised again once they
    have."""
    import concurrent.futures as cf
    import multiprocessing
    import signal
    for run in order:
        register(run)
    todo = [run for run in order if not finished(root, run)]
    if len(todo) < 2:
        return {}
    unfinished = {run.name for run in todo}
    context = multiprocessing.get_context("spawn")     # jax is not fork-safe
    workers, queue = min(jobs, len(todo)), context.Queue()
    done: dict[str, dict] = {}
    waiting, running, pids = list(todo), {}, []
    log(f"  {len(todo)} runs to train, {workers} side by side")
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                initargs=(setup, queue)) as pool:
        try:
            pids = _start_all(pool, workers, queue)
            while waiting or running:
                ready = [r for r in waiting if not isinstance(r.init, Run)
                         or r.init.name in done or r.init.name not in unfinished]
                for run in ready[:workers - len(running)]:
                    waiting.remove(run)
                    log(f"[{len(todo) - len(waiting)}/{len(todo)}] {run.name} (worker)")
                    running[pool.submit(_work, run, root)] = run
                if not running:
                    raise RuntimeError(f"runs {[r.name for r in waiting]} wait for parents "
                                       f"that are not among the runs.")
                for future in cf.wait(running, return_when=cf.FIRST_COMPLETED)[0]:
                    result = done[running.pop(future).name] = future.result()
                    log(f"  {result['name']}: finished in {result['seconds']:.0f} s")
        except BaseException:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            cf.wait(running)                # each saves its step (Preempted) or ends
            raise
    return done


__all__ = ["Run", "spec", "fingerprint", "run_dir", "adopt", "register", "final_checkpoint",
           "finished", "load",
           "execute", "execute_all", "side_by_side", "NON_RESULT_OPTIONS"]
