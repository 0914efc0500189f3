"""Trainer: frozen parameters, k-annealing stages, exact resume, NaN handling, sharding."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

import train_helpers as th
from coda_flax import CodaConfig
from coda_flax.kplan import KPlan, KStage
from coda_flax.train.trainer import Preempted, Trainer, TrainerConfig, TrainingDiverged

HERE = os.path.dirname(__file__)


def _losses(history):
    return [row["loss"] for row in history]


def _k_plan(n, reduction, total_steps, anneal_fraction=0.1, num_stages=4):
    return KPlan.for_run(CodaConfig(reduction=reduction), n, total_steps, anneal_fraction,
                         num_stages)


def test_k_schedule_is_linear_in_discrete_stages():
    plan = _k_plan(512, 3, total_steps=1000, anneal_fraction=0.2, num_stages=5)
    stages = plan.stages
    assert [s.k for s in stages] == [512, 427, 342, 257, 171]        # ceil(512 - 85.25 i)
    assert [s.start_step for s in stages] == [0, 50, 100, 150, 200]
    assert plan.k_at(49) == 512 and plan.k_at(50) == 427 and plan.k_at(999) == 171
    assert list(_k_plan(512, 1, 1000).stages) == [KStage(0, 512)]       # r = 1: no annealing
    assert list(_k_plan(512, 3, 1000, num_stages=1).stages) == [KStage(0, 171)]
    with pytest.raises(ValueError, match="num_stages"):
        _k_plan(512, 3, 1000, num_stages=0)


def test_training_freezes_backbone_anneals_k_and_compiles_once_per_stage(tmp_path):
    tr = th.trainer(tmp_path, total_steps=6)
    state = tr.init_state(th.SHAPES)
    before = traverse_util.flatten_dict(jax.device_get(tr.params(state)))
    state, history = tr.train(state, th.batches(), n=th.N)
    after = traverse_util.flatten_dict(jax.device_get(tr.params(state)))
    mask = traverse_util.flatten_dict(tr.mask)
    changed = {"/".join(k) for k in before if not np.array_equal(before[k], after[k])}
    frozen = {"/".join(k) for k, m in mask.items() if not m}
    assert changed and not (changed & frozen)                           # frozen: bit-exact
    assert any("router" in k for k in changed) and any("adapter" in k for k in changed)
    assert all("adapter" in k or "router" in k for k in changed if k.endswith("kernel"))
    # k: n = 16, r = 4 -> 3 stages 16, 10, 4 starting at steps 0, 2 (= round(1.5)), 3
    assert [row["k"] for row in history] == [16, 16, 10, 4, 4, 4]
    assert tr.trace_count == 3 == len(tr.compiled_stages)
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert os.listdir(tmp_path / "tensorboard")


@pytest.mark.slow    # ~45 s; trainable="all" also runs in the quick demo's pretraining
def test_loss_falls_when_training_everything(tmp_path):
    tr = th.trainer(tmp_path, total_steps=40, trainable="all", learning_rate=0.05,
                    checkpoint_every=100)
    state = tr.init_state(th.SHAPES)
    _, history = tr.train(state, th.batches(), n=th.N)
    losses = _losses(history)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.slow    # ~70 s; exact resume is also checked by test_fault_injection (kill -9
# mid-save) and SIGTERM + resume by test_cli_train
def test_sigterm_saves_and_resumed_run_equals_uninterrupted(tmp_path):
    full = th.trainer(tmp_path / "a", total_steps=6)
    _, want = full.train(full.init_state(th.SHAPES), th.batches(), n=th.N)

    def preempted(start):                  # SIGTERM arrives while step 4 is running
        for i, b in enumerate(th.batches()(start), start):
            if i == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            yield b
    first = th.trainer(tmp_path / "b", total_steps=6, checkpoint_every=100)
    with pytest.raises(Preempted, match="saved step 4"):
        first.train(first.init_state(th.SHAPES), preempted, n=th.N)
    assert first.checkpoints.latest_step() == 4
    part1 = [json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")]
    second = th.trainer(tmp_path / "b", total_steps=6)                    # a fresh process
    _, part2 = second.train(second.init_state(th.SHAPES), th.batches(), n=th.N)
    assert [r["step"] for r in part1] == [1, 2, 3, 4] and [r["step"] for r in part2] == [5, 6]
    np.testing.assert_allclose(_losses(part1) + _losses(part2), _losses(want), rtol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poisoned(start):
        i = start
        while True:
            b = th.batch(i)
            if i == 3:
                b = dict(b, decoder_loss_weights=b["decoder_loss_weights"] * np.nan)
            yield b
            i += 1
    tr = th.trainer(tmp_path, total_steps=6)
    # batch 3 is the 4th update: step 4, as metrics.jsonl and the checkpoints number it
    with pytest.raises(TrainingDiverged, match=r"at step 4: the loss is nan.*last good "
                                               r"checkpoint is step 2"):
        tr.train(tr.init_state(th.SHAPES), poisoned, n=th.N)
    assert tr.checkpoints.latest_step() == 2


@pytest.mark.slow   # ~18 s; test_checkpoints' shape checks stay in the default suite
def test_initial_checkpoint_that_does_not_fit_is_refused(tmp_path):
    tr = th.trainer(tmp_path)
    other = th.trainer(tmp_path / "other")
    params = jax.device_get(tr.params(tr.init_state(th.SHAPES)))
    params["encoder"]["layers_0"]["adapter"]["down"]["kernel"] = np.zeros((16, 3), np.float32)
    with pytest.raises(ValueError, match=r"adapter/down/kernel: checkpoint \(16, 3\)"):
        other.init_state(th.SHAPES, initial_params=params)


def _run_worker(args, env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, os.path.join(HERE, "train_worker.py"), *args],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow   # ~100 s; the default suite keeps 8 devices in test_t5x's shard test
def test_mesh_2x4_on_8_devices_equals_single_device(tmp_path):
    single = _run_worker(["--devices", "1", "--out", str(tmp_path / "one.json"),
                          "--model_dir", str(tmp_path / "one")], {})
    assert single.returncode == 0, single.stderr[-3000:]
    multi = _run_worker(["--devices", "8", "--partitions", "4", "--out",
                         str(tmp_path / "eight.json"), "--model_dir", str(tmp_path / "eight")],
                        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, eight = (json.load(open(tmp_path / f)) for f in ("one.json", "eight.json"))
    assert eight["mesh"] == {"data": 2, "model": 4}
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=2e-5)
    np.testing.assert_allclose(eight["grad_norms"], one["grad_norms"], rtol=2e-4)


@pytest.mark.slow   # ~85 s; the 8-device mesh test stays in the default suite
def test_two_processes_with_jax_distributed_match_one_process(tmp_path):
    port = str(20000 + os.getpid() % 10000)
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(HERE, "train_worker.py"), "--devices", "1",
         "--num_processes", "2", "--process_id", str(i), "--port", port,
         "--out", str(tmp_path / f"p{i}.json"), "--model_dir", str(tmp_path / "two")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = _run_worker(["--devices", "1", "--out", str(tmp_path / "one.json"),
                          "--model_dir", str(tmp_path / "one")], {})
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.load(open(tmp_path / "one.json"))
    for i in range(2):
        got = json.load(open(tmp_path / f"p{i}.json"))
        assert got["process_count"] == 2
        np.testing.assert_allclose(got["losses"], one["losses"], rtol=2e-5)


def test_read_metrics_filters_splits_and_skips_a_torn_line(tmp_path):
    from coda_flax.train.trainer import MetricsWriter, read_metrics
    assert read_metrics(str(tmp_path / "absent")) == []
    w = MetricsWriter(str(tmp_path))
    w.write(1, {"loss": 2.5}, "train")
    w.write(2, {"accuracy": 0.5}, "eval")
    w.write(3, {"loss": 1.5}, "train")
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 4, "lo')          # a run killed mid-write
    assert [r["step"] for r in read_metrics(str(tmp_path), "train")] == [1, 3]
    assert read_metrics(str(tmp_path), "eval") == [{"split": "eval", "step": 2, "accuracy": 0.5}]
    assert len(read_metrics(str(tmp_path))) == 3
