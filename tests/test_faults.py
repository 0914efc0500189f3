"""Faults in training: divergence, preemption at any step, one run per MODEL_DIR, changed
settings and damaged checkpoints on resume, token ids outside the vocabulary.

Trainers here use the Parallel Adapter (r = 1: no routing, the cheapest step to compile) and
compile their step once; exact resume of CoDA runs is tested in test_train.py.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import train_helpers as th
from coda_flax.train import lock as lock_lib
from coda_flax.train.trainer import (Preempted, ResumeError, TrainingDiverged, check_token_ids)


def _trainer(model_dir, **kw):
    return th.trainer(model_dir, model=th.model(reduction=1), **kw)


def _losses(history):
    return [row["loss"] for row in history]


@pytest.mark.slow    # ~70 s; the guard itself is also checked by test_train's NaN-loss test
def test_divergence_keeps_a_sane_checkpoint_and_a_lower_lr_rerun_resumes_from_it(tmp_path):
    first = _trainer(tmp_path, total_steps=6, keep_checkpoints=10)       # checkpoints 2, 4, 6
    _, want = first.train(first.init_state(th.SHAPES), th.batches(), n=th.N)
    first.checkpoints.delete(6)                  # as if the run had stopped after step 4
    assert first.checkpoints.all_steps() == [2, 4]

    # lr 1e30: the loss of step 5 is finite, its update is not sane -> nothing of it is saved
    blown = _trainer(tmp_path, total_steps=6, learning_rate=1e30, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"at step 5: .*last good checkpoint is step 4"):
        blown.train(blown.init_state(th.SHAPES), th.batches(), n=th.N)
    assert blown.checkpoints.all_steps() == [2, 4]
    row = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")][-1]
    assert row["split"] == "diverged" and row["step"] == 5 and np.isfinite(row["loss"])
    # lr 1e3: finite loss and updates, but far too large (the report's layer norms at 1.5e9)
    big = _trainer(tmp_path, total_steps=6, learning_rate=1e3, checkpoint_every=1)
    state = big.init_state(th.SHAPES)
    with pytest.raises(TrainingDiverged, match=r"at step 5: .*(update norm|\|value\|)"):
        big.train(state, th.batches(), n=th.N)
    assert big.checkpoints.all_steps() == [2, 4]
    restored, _ = big.restore_latest(big.init_state(th.SHAPES))
    assert max(float(np.max(np.abs(x))) for x in jax.tree_util.tree_leaves(
        jax.device_get(restored["trainable"]))) < 10.0

    rerun = _trainer(tmp_path, total_steps=6)                       # the sane lr again
    _, got = rerun.train(rerun.init_state(th.SHAPES), th.batches(), n=th.N)
    assert [r["step"] for r in got] == [5, 6]
    np.testing.assert_allclose(_losses(got), _losses(want)[4:], rtol=1e-6)


@pytest.mark.slow   # ~30 s; test_stops and test_cli_train stop and resume in the default suite
def test_sigterm_at_a_plain_a_checkpoint_and_the_final_step_is_preempted_with_that_step(
        tmp_path):
    tr = _trainer(tmp_path, total_steps=6, checkpoint_every=2)     # one trainer: one compile

    def sigterm_in(step):                  # SIGTERM arrives while step `step` is running
        def make(start):
            for i, b in enumerate(th.batches()(start), start):
                if i == step - 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield b
        return make
    for step in (1, 2, 6):                  # plain step, checkpoint step, final step
        with pytest.raises(Preempted, match=f"saved step {step} "):
            tr.train(tr.init_state(th.SHAPES), sigterm_in(step), n=th.N)
        assert tr.checkpoints.latest_step() == step
    _, rest = tr.train(tr.init_state(th.SHAPES), th.batches(), n=th.N)  # done: nothing to run
    assert rest == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.slow   # ~38 s; test_integrity sets a damaged checkpoint aside in the default suite
def test_changed_setting_on_resume_is_named_and_damaged_checkpoints_are_skipped(tmp_path):
    tr = _trainer(tmp_path, total_steps=2, checkpoint_every=1)
    tr.train(tr.init_state(th.SHAPES), th.batches(), n=th.N)
    assert tr.checkpoints.all_steps() == [1, 2]

    other = _trainer(tmp_path, total_steps=2, trainable="all", parameter_scale=False)
    with pytest.raises(ResumeError, match=r"parameter_scale True -> False, trainable "
                                          r"'finetune' -> 'all'"):
        other.restore_latest(other.init_state(th.SHAPES))

    os.remove(tmp_path / "checkpoints" / "2" / "state" / "_METADATA")   # damaged
    template = tr.init_state(th.SHAPES)            # the structure to restore into
    with pytest.warns(UserWarning, match="step 2 .* cannot be read"):
        state, position = tr.restore_latest(template)
    assert state["step"] == 1 and position == 1
    assert tr.checkpoints.all_steps() == [1]                    # step 2 was set aside
    assert os.listdir(tmp_path / "unusable_checkpoints")[0].startswith("2-")
    shutil.rmtree(tmp_path / "checkpoints" / "1" / "state")
    with pytest.raises(ResumeError, match=r"no usable checkpoint .*step 1: "):
        with pytest.warns(UserWarning):
            tr.restore_latest(template)


@pytest.mark.slow   # ~19 s; test_train's NaN test keeps the guard in the default suite
def test_a_poisoned_checkpoint_from_before_the_guard_is_skipped(tmp_path):
    tr = _trainer(tmp_path, total_steps=2)
    state = tr.init_state(th.SHAPES)
    tr.save(dict(state, step=1), 1)
    poisoned = jax.tree_util.tree_map(lambda x: x * 0 + 1e30, state["trainable"])
    tr.save(dict(state, trainable=poisoned, step=2), 2)
    with pytest.warns(UserWarning, match=r"step 2 .*not usable \(a trainable parameter has "
                                         r"\|value\| 1e\+30"):
        restored, _ = tr.restore_latest(state)
    assert restored["step"] == 1


def test_token_ids_outside_the_vocabulary_are_refused():
    b = th.batch(0)
    check_token_ids(b, 64)
    for bad in (99999, -5):
        enc = b["encoder_input_tokens"].copy()
        enc[0, 0] = bad
        with pytest.raises(ValueError, match=f"encoder_input_tokens holds token id {bad}, "
                                             r"outside the model's vocabulary \[0, 64\)"):
            check_token_ids(dict(b, encoder_input_tokens=enc), 64)
    check_token_ids({"encoder_input_tokens": np.full((2, 3, 4), 1e6, np.float32)}, 64)


def test_training_refuses_a_batch_with_out_of_vocabulary_ids(tmp_path):
    tr = _trainer(tmp_path, total_steps=2)
    vocab = tr.model.config.vocab_size

    def bad(start):
        b = th.batch(start)
        b["decoder_target_tokens"][1, 1] = vocab + 7
        yield b
    with pytest.raises(ValueError, match=f"training batch 1: decoder_target_tokens holds token "
                                         f"id {vocab + 7}"):
        tr.train(tr.init_state(th.SHAPES), bad, n=th.N)


# ------------------------------------------------------------------------------ the lock
def test_a_second_run_is_refused_naming_the_first_and_a_stale_lock_is_cleared(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"pid": sleeper.pid, "host": socket.gethostname(),
                  "started": "2026-12-01T09:00:00+00:00",
                  "proc_start": lock_lib._proc_start(sleeper.pid)}
        (tmp_path / "LOCK").write_text(json.dumps(holder))
        tr = _trainer(tmp_path, total_steps=2)
        with pytest.raises(lock_lib.ModelDirLocked,
                           match=rf"in use by pid {sleeper.pid} on host "
                                 rf"{socket.gethostname()} \(started 2026-12-01T09:00:00"):
            tr.train(None, th.batches(), n=th.N)              # refused before anything runs
        assert json.loads((tmp_path / "LOCK").read_text())["pid"] == sleeper.pid
        # same pid, but another process (its start time differs): stale
        (tmp_path / "LOCK").write_text(json.dumps(dict(holder, proc_start="1")))
        with pytest.warns(UserWarning, match="stale lock"):
            path = lock_lib.acquire(str(tmp_path))
        assert json.loads(open(path).read())["pid"] == os.getpid()
        lock_lib.release(path)
        assert not os.path.exists(path)
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / "LOCK").write_text(json.dumps(holder))          # its pid is gone now: stale
    with pytest.warns(UserWarning, match=rf"stale lock .*pid {sleeper.pid}"):
        with lock_lib.ModelDirLock(str(tmp_path)):
            with lock_lib.ModelDirLock(str(tmp_path)):         # re-entrant in one process
                pass
            assert os.path.exists(tmp_path / "LOCK")
    assert not os.path.exists(tmp_path / "LOCK")
    # another host's lock cannot be checked from here: refused, naming the file to delete
    (tmp_path / "LOCK").write_text(json.dumps(dict(holder, host="elsewhere")))
    with pytest.raises(lock_lib.ModelDirLocked, match=r"on host elsewhere .*delete .*LOCK"):
        lock_lib.acquire(str(tmp_path))
