"""kill -9 at random moments (mid-save included), then resume: the same losses and final
parameters as an uninterrupted run. The run's stale MODEL_DIR lock is cleared on resume."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import traverse_util

import train_helpers as th
from fault_worker import trainer

HERE = os.path.dirname(__file__)
STEPS = 6


def _reference(model_dir, reduction):
    """An uninterrupted run: {step: loss} and the final trainable parameters."""
    tr = trainer(str(model_dir), STEPS, reduction)
    state, history = tr.train(tr.init_state(th.SHAPES), th.batches(), n=th.N)
    final = traverse_util.flatten_dict(jax.device_get(state["trainable"]), sep="/")
    return {r["step"]: r["loss"] for r in history}, final


def _start(model_dir, *extra, reduction=1):
    return subprocess.Popen([sys.executable, os.path.join(HERE, "fault_worker.py"),
                             "--model_dir", str(model_dir), "--steps", str(STEPS),
                             "--reduction", str(reduction), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_exact_resume(model_dir, reference):
    want_losses, want_final = reference
    rows = [json.loads(l) for l in open(os.path.join(model_dir, "metrics.jsonl"))]
    train = [r for r in rows if r["split"] == "train"]
    assert {r["step"] for r in train} == set(range(1, STEPS + 1))
    for r in train:                       # a step run twice (after a kill) gives the same loss
        np.testing.assert_allclose(r["loss"], want_losses[r["step"]], rtol=1e-6,
                                   err_msg=f"step {r['step']}")
    got = np.load(os.path.join(model_dir, "final_trainable.npz"))
    assert set(got.files) == set(want_final)
    for k in want_final:
        np.testing.assert_allclose(got[k], want_final[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert not os.path.exists(os.path.join(model_dir, "LOCK"))


@pytest.mark.slow   # ~70 s; test_integrity / test_faults keep damaged-checkpoint handling in the default suite
def test_kill_9_mid_save_then_resume_is_exact(tmp_path):
    """The Parallel Adapter (r = 1), the cheapest model to compile, in the default suite."""
    reference = _reference(tmp_path / "reference", 1)
    run = tmp_path / "run"
    killed = _start(run, "--kill_mid_save", "3")
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, err[-3000:]
    assert json.loads((run / "LOCK").read_text())["pid"] == killed.pid     # left behind
    resumed = _start(run)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"cleared a stale lock in {run}: pid {killed.pid}" in err
    _check_exact_resume(run, reference)


def _rows(model_dir):
    path = os.path.join(model_dir, "metrics.jsonl")
    return len(open(path).readlines()) if os.path.exists(path) else 0


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path):
    """CoDA (r = 4, soft top-k routing), killed at a random moment after each new step (a
    checkpoint is written every step, so many kills land in a save); FAULT_SEED=<n> replays
    one sequence of delays."""
    reference = _reference(tmp_path / "reference", 4)
    run = tmp_path / "run"
    rng = random.Random(int(os.environ.get("FAULT_SEED", "0")) or None)
    kills = 0
    for attempt in range(STEPS + 4):
        proc = _start(run, reduction=4)
        if kills < 5:                              # then let it finish
            seen = _rows(run)
            while proc.poll() is None and _rows(run) <= seen:     # until it makes progress
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=600)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert proc.returncode == 0 and kills >= 3
    _check_exact_resume(run, reference)
