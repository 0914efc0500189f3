"""Stops outside the training loop: SIGTERM at start-up or between the final evaluation and the
final save is one line, exit status 143, the lock released and the run resumable; an empty or
garbled lock is cleared as stale; `Preempted` carries no gin note; `coda demo` stops in one
line; a full disk is one line, without orbax's background tracebacks."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from corpus_helpers import prepared_corpus
from coda_flax.cli import main
from coda_flax.train import lock


@pytest.mark.parametrize("content", [b"", b'{"pid": 12', b"\x00\xff garbage"])
def test_an_old_empty_or_garbled_lock_is_cleared_with_a_warning(tmp_path, content):
    path = tmp_path / "LOCK"
    path.write_bytes(content)
    old = time.time() - 10
    os.utime(path, (old, old))
    with pytest.warns(UserWarning, match=r"cleared an unreadable \(empty or garbled\) lock "
                                         rf"{path}, 10 s old"):
        held = lock.acquire(str(tmp_path))
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release(held)
    assert not path.exists()


def test_a_fresh_unreadable_lock_is_respected(tmp_path):
    (tmp_path / "LOCK").write_bytes(b"")           # being written by a run starting now
    with pytest.raises(lock.ModelDirLocked, match="an unknown run"):
        lock.acquire(str(tmp_path))


def test_preempted_is_printed_without_gins_call_site_note():
    import gin

    from coda_flax.cli.console import without_gin_notes
    from coda_flax.train.trainer import Preempted

    @gin.configurable
    def preempted_run():
        raise Preempted("signal 15: saved step 3 in /run/checkpoints; run again to resume.")
    with pytest.raises(Preempted) as e:
        preempted_run()
    assert "In call to configurable 'preempted_run'" in str(e.value)      # gin's note
    assert without_gin_notes(e.value) == ("signal 15: saved step 3 in /run/checkpoints; run "
                                          "again to resume.")


def test_a_stop_swallowed_where_python_can_only_report_it_is_raised_again():
    """A signal handler's exception inside a gc callback or __del__ is "ignored" by Python (the
    random-SIGTERM test below met one in jax's gc callback): the stop must still happen."""
    from coda_flax.cli.console import Stopped, stopped_by_signals

    class Dying:
        def __del__(self):
            raise Stopped(signal.SIGTERM)
    with pytest.raises(Stopped, match="SIGTERM"):
        with stopped_by_signals():
            Dying()                                # __del__ runs here: an unraisable Stopped
            for _ in range(500):
                time.sleep(0.002)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, prepared_corpus(root)


def _train(model_dir, corpus):
    data, vocab = corpus
    return main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
                 "--gin.model_config.vocab_size=400", "--gin.model_config.d_model=32",
                 "--gin.model_config.num_heads=2", "--gin.model_config.head_dim=16",
                 "--gin.model_config.d_ff=64", f"--gin.MODEL_DIR='{model_dir}'",
                 f"--gin.DATA_DIR='{data}'", f"--gin.VOCAB_PATH='{vocab}'",
                 "--gin.MIXTURE_OR_TASK_NAME='coda_shakespeare_play'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
                 "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=4", "--gin.train.trainable='all'",
                 "--gin.train.eval_max_examples=4", "--gin.train.eval_batch_size=4",
                 "--gin.train.progress=False"])


def _one_line(capsys, prefix):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith(prefix)]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_sigterm_at_start_up_is_one_line_143_and_releases_the_lock(corpus, tmp_path, capsys):
    run = tmp_path / "run"

    def watch():                                   # the lock is taken: start-up is under way
        while not (run / "LOCK").exists():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()
    assert _train(run, corpus) == 143
    line = _one_line(capsys, "coda train: stopped by SIGTERM; nothing new was saved")
    assert "run again to resume" in line
    assert not (run / "LOCK").exists() and not (run / "final").exists()


@pytest.mark.slow    # a whole (1-step) training run: ~30 s on 2 cores
def test_sigterm_between_the_final_eval_and_the_final_save_then_resume(
        corpus, tmp_path, capsys, monkeypatch):
    from coda_flax.checkpoints import native
    real = native.save_checkpoint

    def killed_first(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)      # arrives before the first byte of final/
        return real(*a, **k)
    monkeypatch.setattr("coda_flax.checkpoints.save_checkpoint", killed_first)
    run = tmp_path / "run"
    assert _train(run, corpus) == 143
    _one_line(capsys, "coda train: stopped by SIGTERM; nothing new was saved")
    assert not (run / "LOCK").exists() and not (run / "final").exists()
    assert (run / "checkpoints" / "1").is_dir()
    monkeypatch.setattr("coda_flax.checkpoints.save_checkpoint", real)
    assert _train(run, corpus) == 0                # resumes at step 1 and writes final/
    assert (run / "final" / "config.json").is_file() and not (run / "LOCK").exists()


@pytest.mark.parametrize("command,module,function,says", [
    (["demo", "--quick"], "demo", "run_demo", "finished stages are kept"),
    (["compare", "easy_vqa", "--quick"], "compare", "run_compare", "what it finished is kept"),
    (["reproduce", "--table", "2"], "reproduce", "run_table", "finished experiments are kept"),
])
def test_demo_and_compare_stopped_by_sigterm_print_one_line(tmp_path, capsys, monkeypatch,
                                                            command, module, function, says):
    import importlib
    experiment = importlib.import_module(f"coda_flax.experiments.{module}")
    before = signal.getsignal(signal.SIGTERM)

    def stopped(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)                              # the handler raises before this ends
    monkeypatch.setattr(experiment, function, stopped)
    assert main([*command, "--output", str(tmp_path / "out")]) == 143
    line = _one_line(capsys, f"coda {command[0]}: stopped by SIGTERM; ")
    assert says in line
    assert signal.getsignal(signal.SIGTERM) is before          # the handler is put back


def test_a_preempted_training_loop_is_a_sigterm_stop(tmp_path, capsys, monkeypatch):
    """A training loop's Preempted (it saved, then stopped) ends the command like a SIGTERM."""
    from coda_flax.experiments import reproduce
    from coda_flax.train.trainer import Preempted

    def preempted(*a, **k):
        raise Preempted("preempted at step 3")
    monkeypatch.setattr(reproduce, "run_table", preempted)
    assert main(["reproduce", "--table", "2", "--output", str(tmp_path / "out")]) == 143
    _one_line(capsys, "coda reproduce: stopped by SIGTERM; finished experiments are kept")


# tensorstore's message when the disk filled during an orbax save (copied from a run on a full
# 200 KiB tmpfs)
TENSORSTORE_FULL = (
    'RESOURCE_EXHAUSTED: Error writing "trainable.token_embedder.embedding/0.0" in OCDBT '
    'database at local file "/run/checkpoints/2.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
    'ocdbt.process_0/": Failed writing: "/run/checkpoints/2.orbax-checkpoint-tmp/state.orbax-'
    'checkpoint-tmp/ocdbt.process_0/d/89dbe33b": Failed to write 5740 bytes to file 6: No space '
    "left on device [os_error_code='28']")


@pytest.mark.parametrize("error,where", [
    (ValueError(TENSORSTORE_FULL), "writing /run/checkpoints/2.orbax-checkpoint-tmp/state.orbax-"
                                   "checkpoint-tmp/ocdbt.process_0/d/89dbe33b (5740 bytes)"),
    (OSError(28, "No space left on device", "/run/config.gin"), "writing /run/config.gin;"),
])
def test_a_full_disk_is_one_line_naming_the_path_without_background_tracebacks(
        corpus, tmp_path, capsys, monkeypatch, error, where):
    import logging

    from coda_flax.train import run as run_lib

    def full(*a, **k):
        try:
            raise error
        except Exception:                             # what orbax's save threads log first
            for _ in range(3):
                logging.getLogger("absl").error("_SignalingThread.run() raised", exc_info=True)
            raise
    monkeypatch.setattr(run_lib, "make_model", full)
    assert _train(tmp_path / "run", corpus) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "_SignalingThread" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert lines[0].startswith("coda train: error: disk full: no space left on device " + where)
    assert lines[1:] == []
    assert not (tmp_path / "run" / "LOCK").exists()


def _train_process(model_dir, corpus, steps):
    import subprocess
    import sys
    data, vocab = corpus
    return subprocess.Popen(
        [sys.executable, "-m", "coda_flax.cli", "train", "--gin_file=models/tiny.gin",
         "--gin_file=runs/finetune.gin", "--gin.model_config.vocab_size=400",
         "--gin.model_config.d_model=32", "--gin.model_config.num_heads=2",
         "--gin.model_config.head_dim=16", "--gin.model_config.d_ff=64",
         f"--gin.MODEL_DIR='{model_dir}'", f"--gin.DATA_DIR='{data}'",
         f"--gin.VOCAB_PATH='{vocab}'", "--gin.MIXTURE_OR_TASK_NAME='coda_shakespeare_play'",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", f"--gin.TRAIN_STEPS={steps}",
         "--gin.BATCH_SIZE=4", "--gin.train.trainable='all'", "--gin.train.checkpoint_every=2",
         "--gin.train.eval_max_examples=4", "--gin.train.eval_batch_size=4",
         "--gin.train.progress=False"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


@pytest.mark.slow    # ~6 `coda train` processes: a few minutes on 2 cores
def test_sigterm_at_random_moments_from_start_up_to_exit_then_resume_is_exact(corpus, tmp_path):
    """SIGTERM after a random delay from the process start (start-up, steps, saves, the final
    evaluation and save): exit 143 or 0, never a lock left, and the resumed run ends with the
    uninterrupted run's final parameters. FAULT_SEED=<n> replays one sequence of delays."""
    import random

    from coda_flax.checkpoints import flatten_params, load_checkpoint
    steps = 6
    started = time.time()
    reference = _train_process(tmp_path / "reference", corpus, steps)
    _, err = reference.communicate(timeout=900)
    assert reference.returncode == 0, err[-3000:]
    duration = time.time() - started                # the delays are fractions of a whole run
    rng = random.Random(int(os.environ.get("FAULT_SEED", "0")) or None)
    run, stops = tmp_path / "run", 0
    for _ in range(8):
        proc = _train_process(run, corpus, steps)
        if stops < 4:
            time.sleep(rng.uniform(0.02, 0.6) * duration)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=900)
        if proc.returncode == -signal.SIGTERM:     # before coda's code ran (~1 s), or after
            assert not (run / "LOCK").exists(), err[-3000:]        # it ended: no lock either
            stops += 1
            continue
        assert proc.returncode in (0, 143), err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert not (run / "LOCK").exists()
        if proc.returncode == 0:
            break
        stops += 1
    assert proc.returncode == 0 and stops >= 1
    want = flatten_params(load_checkpoint(str(tmp_path / "reference" / "final"))[1])
    got = flatten_params(load_checkpoint(str(run / "final"))[1])
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
