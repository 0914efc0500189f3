"""The experiment runner (coda_flax/experiments/runner.py): fingerprints, reuse of finished runs,
setting aside a folder of other settings, resuming a stopped run, parents run once; on a tiny
model and the offline play task built from a synthetic corpus."""

import dataclasses
import hashlib
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from corpus_helpers import prepared_corpus
from train_helpers import sigterm_after
from coda_flax import CodaConfig, tiny_config
from coda_flax.experiments import runner
from coda_flax.train import run as train_run

TASK = "coda_shakespeare_play"
LENGTHS = (("inputs", 32), ("targets", 8))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from coda_flax import tasks
    root = tmp_path_factory.mktemp("runner_data")
    vocab = prepared_corpus(root)
    tasks.register_offline_tasks(str(root), vocab)
    return str(root), vocab


def _dense(data, **kw):
    root, vocab = data
    fields = dict(name="dense", model=tiny_config(vocab_size=400), task=TASK,
                  feature_lengths=LENGTHS, steps=2, batch_size=4, learning_rate=0.01,
                  trainable="all", k_anneal_stages=1, eval_batch_size=4, eval_max_examples=4,
                  train_options=(("data_dir", root), ("vocab_path", vocab), ("progress", False),
                                 ("log_every", 1)))
    fields.update(kw)
    return runner.Run(**fields)


def _child(parent, name, reduction, **kw):
    model = dataclasses.replace(parent.model, coda=CodaConfig(reduction=reduction, adapter_dim=4))
    return dataclasses.replace(parent, name=name, model=model, init=parent, trainable="finetune",
                               k_anneal_stages=2, **kw)


def test_fingerprint_changes_with_every_field_the_parent_and_the_data(data, monkeypatch):
    base = _dense(data)
    settings = runner.spec(base)
    assert settings["data"] and settings["data"] == runner.provenance.fingerprint(TASK)
    # sha256 of the sorted, compact JSON of the spec
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=repr)
    assert runner.fingerprint(base) == hashlib.sha256(text.encode()).hexdigest()
    assert runner.fingerprint(_dense(data)) == runner.fingerprint(base)
    changed = dict(model=tiny_config(vocab_size=401), task="coda_shakespeare_span_corruption",
                   feature_lengths=(("inputs", 16), ("targets", 8)), steps=3, batch_size=2,
                   learning_rate=0.02, seed=1, trainable="finetune", init="/some/checkpoint",
                   k_anneal_fraction=0.5, k_anneal_stages=3, eval_batch_size=2,
                   eval_max_examples=None,
                   train_options=base.train_options + (("schedule", "rsqrt"),))
    assert set(changed) == {f.name for f in dataclasses.fields(runner.Run)} - {"name",
                                                                               "locations"}
    prints = {runner.fingerprint(base)}
    for field, value in changed.items():
        prints.add(runner.fingerprint(dataclasses.replace(base, **{field: value})))
    assert len(prints) == len(changed) + 1
    # the name, and options that do not change the result (logging, where the data lives), do not
    same = dataclasses.replace(base, name="elsewhere", train_options=(
        ("data_dir", "/moved"), ("vocab_path", data[1]), ("progress", True), ("log_every", 9)))
    assert runner.fingerprint(same) == runner.fingerprint(base)
    # locations: options (and an init path) that only say where something is
    moved = dict(vocab_path="/elsewhere/spm.model", init="/elsewhere/ckpt")
    assert len({runner.fingerprint(dataclasses.replace(
        base, init=init, train_options=base.options | {"vocab_path": vocab},
        locations=("vocab_path", "init"))) for vocab, init in ((data[1], "/ckpt"),
                                                                moved.values())}) == 1
    assert runner.fingerprint(dataclasses.replace(base, init="/ckpt")) != runner.fingerprint(
        dataclasses.replace(base, init="/elsewhere/ckpt"))
    # a child's fingerprint follows its parent's
    child = _child(base, "child", 2)
    other_parent = _child(dataclasses.replace(base, steps=5), "child", 2)
    assert runner.fingerprint(child) != runner.fingerprint(other_parent)
    # and the task's datasets: the same settings on changed data are another run
    before = runner.fingerprint(base)
    monkeypatch.setattr(runner.provenance, "fingerprint",
                        lambda task: {"shakespeare/corpus-x": "0123456789abcdef"})
    assert runner.fingerprint(base) != before


def test_bad_runs_are_refused_naming_the_fix(data):
    with pytest.raises(ValueError, match="train_options \\['seed'\\] are Run fields"):
        _dense(data, train_options=(("seed", 1),))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        _dense(data, steps=0)
    with pytest.raises(ValueError, match="relative folder name"):
        _dense(data, name="../up")
    a, b = _child(_dense(data), "same", 2), _child(_dense(data), "same", 4)
    with pytest.raises(ValueError, match="share the folder name"):
        runner.execute_all([a, b], "/nonexistent")


# adapter 16 x 4 (trained when finetuning) + a query kernel 16 x 16 (frozen): counted by hand
PARAMS = {"encoder": {"layers_0": {"adapter": {"kernel": np.zeros((16, 4), np.float32)},
                                   "attention": {"query": {"kernel": np.zeros((16, 16))}}}}}


def _fake_training(monkeypatch, stop_once=()):
    """run.train replaced by a stand-in that records its model_dir and writes MODEL_DIR/final;
    for a folder named in stop_once it first leaves a checkpoint and raises Preempted (SIGTERM)."""
    from coda_flax.train.settings import flat_settings
    from coda_flax.train.trainer import Preempted
    calls = []

    def fake(**kwargs):
        kwargs = flat_settings(**kwargs)            # run.train's settings objects, by name
        path = kwargs["model_dir"]
        calls.append(dict(kwargs))
        checkpoint = os.path.join(path, "checkpoints", "1")
        if os.path.basename(path) in stop_once and not os.path.isdir(checkpoint):
            os.makedirs(checkpoint)
            raise Preempted(f"signal 15: saved step 1 in {path}/checkpoints; run again")
        os.makedirs(os.path.join(path, "final"))
        return {"params": PARAMS, "eval": {"accuracy": 25.0, "num_examples": 4}}
    monkeypatch.setattr(train_run, "train", fake)
    return calls


def test_parent_runs_once_finished_runs_are_reused_other_settings_set_aside(
        data, tmp_path, monkeypatch):
    calls = _fake_training(monkeypatch)
    dense = _dense(data)
    runs = [_child(dense, "finetune/coda_r2", 2), _child(dense, "finetune/coda_r4", 4)]
    logs = []
    first = runner.execute_all(runs, str(tmp_path), log=logs.append)
    root = str(tmp_path)
    assert [c["model_dir"] for c in calls] == [os.path.join(root, "dense"), os.path.join(
        root, "finetune", "coda_r2"), os.path.join(root, "finetune", "coda_r4")]
    assert [line for line in logs if line.startswith("[")] == [
        "[1/3] dense", "[2/3] finetune/coda_r2", "[3/3] finetune/coda_r4"]
    # the children start from the parent's final checkpoint, with the Run's settings
    assert calls[1]["initial_checkpoint_path"] == os.path.join(root, "dense", "final")
    assert calls[0]["initial_checkpoint_path"] is None
    assert (calls[1]["trainable"], calls[1]["learning_rate"], calls[1]["train_steps"],
            calls[1]["task_feature_lengths"], calls[1]["progress"]) == (
        "finetune", 0.01, 2, {"inputs": 32, "targets": 8}, False)
    r2 = first["finetune/coda_r2"]
    assert not r2["reused"] and r2["eval"] == {"accuracy": 25.0, "num_examples": 4}
    assert (r2["trainable_params"], r2["total_params"]) == (64, 64 + 256)
    assert first["dense"]["trainable_params"] == 64 + 256              # trainable="all"
    assert r2["fingerprint"] == runner.fingerprint(runs[0])
    on_disk = json.load(open(tmp_path / "finetune" / "coda_r2" / "result.json"))
    assert on_disk == r2
    record = json.load(open(tmp_path / "finetune" / "coda_r2" / "run.json"))
    assert record["fingerprint"] == r2["fingerprint"] and record["spec"]["init"]["run"] == "dense"
    # again: nothing is trained, every result is read back
    again = runner.execute_all(runs, str(tmp_path), log=logs.append)
    assert len(calls) == 3 and all(r["reused"] for r in again.values())
    assert again["finetune/coda_r2"] == dict(r2, reused=True)
    # another learning rate under the same name: the old folder is set aside, not reused
    logs.clear()
    out = runner.execute(dataclasses.replace(runs[0], learning_rate=0.05), root, logs.append)
    assert [c["model_dir"] for c in calls[3:]] == [os.path.join(root, "finetune", "coda_r2")]
    assert not out["reused"]
    aside = [n for n in os.listdir(tmp_path / "finetune") if n.startswith("coda_r2.set-aside-")]
    assert aside == [f"coda_r2.set-aside-{r2['fingerprint'][:8]}"]
    assert json.load(open(tmp_path / "finetune" / aside[0] / "result.json")) == on_disk
    assert any("learning_rate 0.01 -> 0.05" in line and "set aside" in line for line in logs)
    # a changed parent is another parent: it and the child run again (the child's fingerprint
    # follows the parent's)
    calls.clear()
    logs.clear()
    runner.execute(_child(_dense(data, steps=3), "finetune/coda_r4", 4), root, logs.append)
    assert [os.path.basename(c["model_dir"]) for c in calls] == ["dense", "coda_r4"]
    assert any("dense:" in line and "steps 2 -> 3" in line for line in logs)
    assert any("finetune/coda_r4:" in line and "init.fingerprint" in line for line in logs)


def test_a_stopped_run_resumes_in_its_folder(data, tmp_path, monkeypatch):
    from coda_flax.train.trainer import Preempted
    calls = _fake_training(monkeypatch, stop_once=("dense",))
    run = _dense(data)
    with pytest.raises(Preempted):
        runner.execute(run, str(tmp_path), log=lambda s: None)
    assert not (tmp_path / "dense" / "result.json").exists()
    out = runner.execute(run, str(tmp_path), log=lambda s: None)
    # the same folder, its checkpoint kept for run.train to resume from, nothing set aside
    assert [c["model_dir"] for c in calls] == [str(tmp_path / "dense")] * 2
    assert os.listdir(tmp_path) == ["dense"] and (tmp_path / "dense" / "checkpoints" / "1").is_dir()
    assert not out["reused"]


@pytest.mark.slow   # ~80-130 s on 2 loaded cores: trains, is stopped, resumes, then reuses
def test_real_training_stops_resumes_and_is_reused_with_its_parameters(data, tmp_path):
    from coda_flax.train.trainer import Preempted, read_metrics
    run = _dense(data, steps=30)
    folder = tmp_path / "dense"
    sigterm_after(folder / "metrics.jsonl", 3)
    with pytest.raises(Preempted):
        runner.execute(run, str(tmp_path), log=lambda s: None)
    stopped = [r["step"] for r in read_metrics(str(folder), "train")]
    assert 3 <= len(stopped) < 30 and not (folder / "result.json").exists()
    out = runner.execute(run, str(tmp_path), log=lambda s: None)
    assert not out["reused"] and os.listdir(tmp_path) == ["dense"]      # nothing set aside
    steps = [r["step"] for r in read_metrics(str(folder), "train")]
    assert steps == list(range(1, 31))              # resumed after the saved step, not restarted
    assert out["eval"]["num_examples"] == 4
    loaded = runner.execute(run, str(tmp_path), log=lambda s: None, load_params=True)
    assert loaded["reused"] and loaded["model"].config == run.model
    assert loaded["total_params"] == loaded["trainable_params"] > 0


def _timeline(root, name):
    """(start, end) of a trained run: its run.json's and its result.json's modification times."""
    folder = os.path.join(root, name)
    return (os.path.getmtime(os.path.join(folder, runner.RUN_FILE)),
            os.path.getmtime(os.path.join(folder, runner.RESULT_FILE)))


def _side_by_side_runs(data, steps):
    dense = _dense(data, steps=4)
    return [_child(dense, "finetune/coda_r2", 2, steps=steps),
            _child(dense, "finetune/coda_r4", 4, steps=steps)]


def _same_results(a, b):
    for name in a:
        assert b[name]["eval"] == pytest.approx(a[name]["eval"], rel=1e-5), name
        assert b[name]["fingerprint"] == a[name]["fingerprint"]


def _workers(folder):
    return {int(f.split("-")[1]) for f in os.listdir(folder) if f.startswith("worker-")}


def test_jobs_train_side_by_side_parents_first(data, tmp_path):
    import functools
    import train_helpers
    from coda_flax.cli.console import Stopped, stopped_by_signals
    runs = _side_by_side_runs(data, steps=2)
    logs, root = [], str(tmp_path / "runs")
    setup = functools.partial(train_helpers.fake_training_in_worker, 2.0, str(tmp_path),
                              together=("coda_r2", "coda_r4"))

    # stopped while the parent trains and the other worker waits: the stop comes back once
    # the parent's run has finished its step and stopped (a hang fails the test by SIGALRM),
    # the parent unfinished
    def stop_once_the_parent_trains():
        while not os.path.exists(os.path.join(root, "dense", runner.RUN_FILE)):
            time.sleep(0.02)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    def hung(*_):
        pytest.fail("a stop of execute_all(jobs=2) did not come back within 120 s")
    threading.Thread(target=stop_once_the_parent_trains, daemon=True).start()
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        with pytest.raises(Stopped), stopped_by_signals():
            runner.execute_all(runs, root, log=lambda s: None, jobs=2, setup=setup)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not os.path.exists(os.path.join(root, "dense", runner.RESULT_FILE))
    stopped = _workers(tmp_path)
    assert len(stopped) == 2

    out = runner.execute_all(runs, root, log=logs.append, jobs=2, setup=setup)
    workers = _workers(tmp_path) - stopped
    assert len(workers) == 2 and os.getpid() not in workers       # setup ran in each worker
    trained_by = {name: r["eval"]["pid"] for name, r in out.items()}
    assert set(trained_by.values()) <= workers
    assert trained_by[runs[0].name] != trained_by[runs[1].name]    # the children: one each
    assert all(out[r.name]["eval"]["together"] for r in runs)      # ... at the same time
    assert not any(r["reused"] for r in out.values())
    assert out[runs[0].name]["fingerprint"] == runner.fingerprint(runs[0])
    # the parent first (the children start from its final checkpoint)
    parent, a, b = (_timeline(root, n) for n in ("dense", *[r.name for r in runs]))
    assert min(a[0], b[0]) >= parent[1]
    assert [x for x in logs if x.startswith("[")] == [
        "[1/3] dense (worker)", "[2/3] finetune/coda_r2 (worker)",
        "[3/3] finetune/coda_r4 (worker)"]
    # again: nothing left to train, no worker started
    again = runner.execute_all(runs, root, log=lambda s: None, jobs=2, setup=setup)
    assert all(r["reused"] for r in again.values()) and again[runs[0].name]["eval"] == \
        out[runs[0].name]["eval"]
    assert len(_workers(tmp_path)) == 4
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        runner.execute_all(runs, root, jobs=0)


@pytest.mark.slow   # ~2-4 min on 2 cores: real training one by one, then in two workers,
def test_a_stop_reaches_every_worker_and_their_runs_resume(data, tmp_path):    # stopped, resumed
    from coda_flax.cli.console import Stopped, stopped_by_signals
    from coda_flax.train.trainer import read_metrics
    runs = _side_by_side_runs(data, steps=1500)
    one = runner.execute_all(runs, str(tmp_path / "one"), log=lambda s: None)
    two = str(tmp_path / "two")
    folders = [os.path.join(two, r.name) for r in runs]

    def stop_when_both_train():            # SIGTERM to this process, as a scheduler sends it
        while not all(os.path.exists(os.path.join(f, "metrics.jsonl")) for f in folders):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=stop_when_both_train, daemon=True).start()
    with pytest.raises(Stopped), stopped_by_signals():
        runner.execute_all(runs, two, log=lambda s: None, jobs=2)
    for folder in folders:                  # each worker saved its step and ended its run
        steps = [r["step"] for r in read_metrics(folder, "train")]
        assert not os.path.exists(os.path.join(folder, runner.RESULT_FILE))
        assert steps and steps[-1] < 1500 and os.listdir(os.path.join(folder, "checkpoints"))
    out = runner.execute_all(runs, two, log=lambda s: None, jobs=2)
    for folder in folders:                  # resumed after the saved step, not restarted
        steps = [r["step"] for r in read_metrics(folder, "train")]
        assert steps == sorted(set(steps)) and steps[-1] == 1500
    _same_results(one, out)
