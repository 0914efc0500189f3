"""The paper's runs as T5X gin files (gin/t5x/), with the model and variant files of `coda train`.

Without T5X: the task files and the pretraining file hold Table 8's and appendix B's settings
(configs/table8.py). With T5X installed (as tests/test_t5x.py: a skip, or a failure in CI), on
the paper's TFDS datasets replaced by a few hand-written examples (tfds.testing.mock_data,
tests/t5x_mock_worker.py), with `python -m t5x.train` / `t5x.eval` and exactly the gin flags of
docs/t5x.md:

* a dense checkpoint converted to CoDA pretrains 2 steps on C4 span corruption at n = 512 with
  k = 192 routed tokens from the first step, every parameter training;
* RTE finetunes 2 steps (k = ceil(256 / 3), the backbone bit-identical) and `t5x.eval` scores
  it, from the converted checkpoint (the default suite's T5X run) and (slow) from the
  pretraining's; the other five tasks the same way (slow);
* the same model + variant files under `coda train` build the same parameter tree and route the
  same k.
"""

import ast
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from test_t5x import _require_t5x
from train_helpers import t5x_train_metrics

from coda_flax import CodaConfig, ModelConfig
from coda_flax.checkpoints.peft import param_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, "gin")
WORKER = os.path.join(ROOT, "tests", "t5x_mock_worker.py")
MODEL = ["models/tiny.gin", "variants/coda_k_to_all.gin"]
# gin/models/tiny.gin + gin/variants/coda_k_to_all.gin, written out
TINY_CODA = ModelConfig(vocab_size=8100, d_model=128, num_heads=4, num_kv_heads=1, head_dim=32,
                        d_ff=256, num_encoder_layers=2, num_decoder_layers=1,
                        coda=CodaConfig(reduction=3, attention="k_to_all", router="soft_topk"))
TASKS = {"mnli": "MNLI", "rte": "RTE", "boolq": "BoolQ", "squad": "SQuAD", "record": "ReCord",
         "xsum": "XSum"}                                  # task file -> Table 8 row
METRIC = {"mnli": "accuracy", "rte": "accuracy", "boolq": "accuracy", "squad": "f1",
          "record": "f1", "xsum": "rouge2"}


def _macros(name):
    """NAME = literal lines of a gin file (the macros it sets)."""
    out = {}
    for line in open(os.path.join(GIN_DIR, name)):
        m = re.match(r"^([A-Z_]+) = (.+?)\s*(#.*)?$", line)
        if m:
            try:
                out[m.group(1)] = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                out[m.group(1)] = m.group(2)          # a reference (@...) or a macro (%...)
    return out


# ------------------------------------------------------------------ without T5X
@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_files_hold_table8(task):
    from coda_flax.configs import table8

    want = table8.finetune(TASKS[task])
    got = _macros(f"t5x/tasks/{task}.gin")
    assert got == {"PAPER_TASK": want["task"], "TASK_FEATURE_LENGTHS": want["feature_lengths"],
                   "TRAIN_STEPS": want["train_steps"], "BATCH_SIZE": want["batch_size"],
                   "LEARNING_RATE": want["learning_rate"]}
    assert want["schedule"] == "constant"
    run = open(os.path.join(GIN_DIR, "t5x", "runs", "finetune.gin")).read()
    assert "factors = 'constant'" in run and "base_learning_rate = %LEARNING_RATE" in run
    # appendix B: k annealed over the first 10% of finetuning (as gin/runs/finetune.gin)
    assert _macros("t5x/runs/finetune.gin")["K_ANNEAL_FRACTION"] == 0.1


def test_pretraining_file_holds_appendix_b():
    from coda_flax.configs import table8

    want = table8.coda_pretraining("variants/coda_k_to_all.gin")
    got = _macros("t5x/runs/pretrain.gin")
    assert (got["PAPER_TASK"], got["TASK_FEATURE_LENGTHS"], got["NUM_ROUTED"],
            got["TRAIN_STEPS"]) == (want["task"], want["feature_lengths"], want["num_routed"],
                                    want["train_steps"])
    assert got["K_ANNEAL_STAGES"] == 1 and got["TRAINABLE"] == "all"       # no annealing
    assert got["INITIAL_CHECKPOINT_PATH"] == "%gin.REQUIRED"               # from a checkpoint
    # the same batch and learning rate as `coda train`'s gin/runs/pretrain.gin: rsqrt with
    # 10k warmup steps from 0.01 (T5X: 1.0 / sqrt(max(step, 10000)))
    native = _macros("runs/pretrain.gin")
    assert got["BATCH_SIZE"] == native["BATCH_SIZE"] and native["LEARNING_RATE"] == 0.01
    assert "warmup_steps = 10000" in open(os.path.join(GIN_DIR, "t5x", "runs",
                                                       "pretrain.gin")).read()


def test_paper_task_registers_with_the_gin_settings(tmp_path):
    """coda_t5x.paper_task (t5x/paper_task.gin's MIXTURE_OR_TASK_NAME): the vocabulary, TFDS
    data directory and dataset versions given, not $TFDS_DATA_DIR's; bad names are errors."""
    import seqio

    from coda_flax.t5x.tasks import paper_task

    vocab = seqio.ByteVocabulary()
    assert paper_task("coda_c4_span_corruption", vocab, str(tmp_path),
                      {"coda_c4_span_corruption": "c4/en:3.0.1"}) == "coda_c4_span_corruption"
    task = seqio.get_mixture_or_task("coda_c4_span_corruption")
    assert task.source.tfds_dataset.name == "c4/en:3.0.1"
    assert task.source.tfds_dataset.data_dir == str(tmp_path)
    assert task.output_features["targets"].vocabulary == vocab
    assert seqio.get_mixture_or_task("coda_rte").source.tfds_dataset.name == \
        "super_glue/rte:1.0.2"                                      # the default version
    with pytest.raises(ValueError, match="no task given; add a task file"):
        paper_task(None)
    with pytest.raises(ValueError, match="unknown task 'coda_nope'"):
        paper_task("coda_nope")
    with pytest.raises(ValueError, match="unknown tasks \\['c4'\\]"):
        paper_task("coda_rte", vocab, None, {"c4": "c4/en:3.0.1"})


# ------------------------------------------------------------------ with T5X installed
def _command(script, run_file, *flags, task=None):
    files = [*MODEL, f"t5x/runs/{run_file}.gin"] + ([f"t5x/tasks/{task}.gin"] if task else [])
    return [sys.executable, WORKER, script, f"--gin_search_paths={GIN_DIR}",
            *[f"--gin_file={f}" for f in files], *flags]


def _run(cmd, env, log):
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              timeout=1200)
    assert proc.returncode == 0, open(log).read()[-6000:]


def _params(path):
    from coda_flax.checkpoints.t5x import read_t5x
    from coda_flax.checkpoints.tree import flatten_params

    return {k: np.asarray(v) for k, v in flatten_params(read_t5x(path)).items()}


@pytest.fixture(scope="module")
def paper_setup(tmp_path_factory):
    """A random dense tiny model converted to CoDA (T5X checkpoint), a vocabulary, the flags
    every command shares, and the environment."""
    _require_t5x()
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from corpus_helpers import prepared_corpus

    from coda_flax import EncoderDecoder
    from coda_flax.checkpoints.convert import dense_to_coda
    from coda_flax.checkpoints.native import save_checkpoint
    from coda_flax.cli.t5x import main as to_t5x

    root = tmp_path_factory.mktemp("t5x_paper")
    vocab = prepared_corpus(root, vocab_size=300)
    dense = TINY_CODA.replace(coda=None)
    tokens = jnp.ones((1, 8), jnp.int32)
    params = nn.meta.unbox(EncoderDecoder(dense).init(jax.random.PRNGKey(0), tokens,
                                                      tokens[:, :4])["params"])
    params = dense_to_coda(params, TINY_CODA.coda, 1, model_config=dense)
    save_checkpoint(str(root / "coda"), params, TINY_CODA)
    assert to_t5x([str(root / "coda"), str(root / "coda_t5x")]) == 0
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
           "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env.pop("CODA_VOCAB", None)
    common = [f"--gin.VOCAB_PATH='{vocab}'", f"--gin.TFDS_DATA_DIR='{root / 'no_tfds'}'",
              "--gin.ACTIVATION_DTYPE='float32'"]
    train = [*common, "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2",
             "--gin.utils.SaveCheckpointConfig.period=1",            # a summary per step
             "--gin.train.train_eval_dataset_cfg=None", "--gin.train.infer_eval_dataset_cfg=None"]
    return dict(root=root, vocab=vocab, env=env, common=common, train=train,
                init=str(root / "coda_t5x" / "checkpoint_0"), params=params)


def _finetune_and_eval(setup, task, init, name):
    root = setup["root"]
    model_dir, logs = root / name, {k: str(root / f"{name}_{k}.log") for k in ("train", "eval")}
    _run(_command("train", "finetune", f"--gin.MODEL_DIR='{model_dir}'",
                  f"--gin.INITIAL_CHECKPOINT_PATH='{init}'", *setup["train"], task=task),
         setup["env"], logs["train"])
    _run(_command("eval", "eval", f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoint_2'}'",
                  f"--gin.EVAL_OUTPUT_DIR='{model_dir / 'eval'}'", *setup["common"],
                  "--gin.utils.DatasetConfig.batch_size=8", task=task),
         setup["env"], logs["eval"])
    metrics = model_dir / "eval" / "inference_eval" / f"coda_{task}-metrics.jsonl"
    assert metrics.exists(), os.listdir(model_dir / "eval")
    return dict(model_dir=model_dir, logs=logs,
                eval=[json.loads(line) for line in open(metrics)])


@pytest.fixture(scope="module")
def rte_run(paper_setup):
    """RTE finetuning (T5X, 2 steps) from the converted checkpoint, and t5x.eval."""
    return _finetune_and_eval(paper_setup, "rte", paper_setup["init"], "rte_from_converted")


@pytest.mark.xdist_group("t5x_rte")
def test_rte_from_a_converted_checkpoint_finetunes_adapters_and_t5x_eval_scores_it(
        paper_setup, rte_run):
    """The default suite's T5X paper run: t5x/runs/finetune.gin + t5x/tasks/rte.gin 2 steps
    (k = ceil(256 / 3) = 86, Table 8's learning rate, only adapters / routers / layer norms
    move), then t5x/runs/eval.gin."""
    metrics = t5x_train_metrics(rte_run["logs"]["train"])
    assert sorted(metrics) == [1, 2]
    assert [metrics[s]["coda/k"] for s in (1, 2)] == [-(-256 // 3)] * 2
    assert all(m["learning_rate"] == pytest.approx(1e-3) for m in metrics.values())
    start = {k: np.asarray(v) for k, v in _params(paper_setup["init"]).items()}
    end = _params(rte_run["model_dir"] / "checkpoint_2")
    assert {k: v.shape for k, v in end.items()} == {k: v.shape for k, v in start.items()}
    moved = {k for k in start if not np.array_equal(start[k], end[k])}
    assert moved and all(param_group(k) != "backbone" for k in moved)
    assert {k for k in moved if "router" in k} and {k for k in moved if "adapter/up" in k}
    assert [r["step"] for r in rte_run["eval"]] == [2] and 0 <= rte_run["eval"][0]["accuracy"] <= 100


@pytest.fixture(scope="module")
def paper_runs(paper_setup):
    """CoDA pretraining (T5X, 2 steps) | `coda train` on RTE; then RTE finetuning from the
    pretrained checkpoint (T5X, 2 steps) and t5x.eval."""
    from t5x_mock_worker import mocked_tfds

    from coda_flax.cli import main as coda

    s, root = paper_setup, paper_setup["root"]
    log = str(root / "pretrain.log")
    pretrain = subprocess.Popen(
        _command("train", "pretrain", f"--gin.MODEL_DIR='{root / 'pretrain'}'",
                 f"--gin.INITIAL_CHECKPOINT_PATH='{s['init']}'", *s["train"]),
        env=s["env"], cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    native = root / "native_rte"
    with mocked_tfds():                  # `coda train`, the same model + variant files
        assert coda(["train", *[f"--gin_file={f}" for f in MODEL], "--gin_file=runs/finetune.gin",
                     f"--gin.MODEL_DIR='{native}'", "--gin.MIXTURE_OR_TASK_NAME='coda_rte'",
                     "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 8}",
                     f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'coda'}'",
                     f"--gin.VOCAB_PATH='{s['vocab']}'",
                     f"--gin.TFDS_DATA_DIR='{root / 'no_tfds'}'", "--gin.TRAIN_STEPS=2",
                     "--gin.BATCH_SIZE=2", "--gin.train.log_every=1",
                     "--gin.train.eval_max_examples=2", "--gin.train.eval_batch_size=2",
                     "--gin.train.progress=False"]) in (0, None)
    assert pretrain.wait(timeout=1200) == 0, open(log).read()[-6000:]
    pretrained = str(root / "pretrain" / "checkpoint_2")
    rte = _finetune_and_eval(s, "rte", pretrained, "rte")
    return dict(pretrain_log=log, pretrained=pretrained, native=native, rte=rte)


# Several minutes of T5X processes: slow (the default suite checks the same files without T5X
# above, and tests/test_t5x.py runs T5X's scripts on the tiny offline example). Under
# pytest-xdist (--dist loadgroup) the tests sharing the module-scoped runs go to one worker.
PAPER_GROUP = pytest.mark.xdist_group("t5x_paper")


@pytest.mark.slow
@PAPER_GROUP
def test_pretraining_routes_192_of_512_from_the_first_step_and_trains_everything(
        paper_setup, paper_runs):
    metrics = t5x_train_metrics(paper_runs["pretrain_log"])
    assert sorted(metrics) == [1, 2]
    assert [metrics[s]["coda/k"] for s in (1, 2)] == [192, 192]            # no annealing
    assert all(m["learning_rate"] == pytest.approx(1 / np.sqrt(10_000)) for m in metrics.values())
    start = {k: np.asarray(v) for k, v in _params(paper_setup["init"]).items()}
    end = _params(paper_runs["pretrained"])
    moved = {k for k in start if not np.array_equal(start[k], end[k])}
    backbone = {k for k in start if param_group(k) == "backbone"}
    assert "encoder/layers_0/attention/query/kernel" in moved and "token_embedder/embedding" in moved
    assert len(moved & backbone) > len(backbone) // 2                       # TRAINABLE = 'all'


@pytest.mark.slow
@PAPER_GROUP
def test_rte_finetunes_adapters_with_k_of_its_length_and_t5x_eval_scores_it(paper_runs):
    rte = paper_runs["rte"]
    metrics = t5x_train_metrics(rte["logs"]["train"])
    assert [metrics[s]["coda/k"] for s in (1, 2)] == [-(-256 // 3)] * 2    # n = 256, r = 3
    assert all(m["learning_rate"] == pytest.approx(1e-3) for m in metrics.values())
    start, end = _params(paper_runs["pretrained"]), _params(rte["model_dir"] / "checkpoint_2")
    moved = {k for k in start if not np.array_equal(start[k], end[k])}
    assert moved and all(param_group(k) != "backbone" for k in moved)    # backbone bit-identical
    assert {k for k in moved if "router" in k}
    assert [r["step"] for r in rte["eval"]] == [2] and 0 <= rte["eval"][0]["accuracy"] <= 100


@pytest.mark.slow
@PAPER_GROUP
def test_one_model_and_variant_pair_under_both_engines(paper_runs):
    """`coda train` and T5X's train.py, given models/tiny.gin + variants/coda_k_to_all.gin,
    build the parameter tree of TINY_CODA (coda_flax's checkpoint layout, an independent
    table) and route the same k on RTE."""
    from coda_flax.checkpoints.native import load_checkpoint
    from coda_flax.checkpoints.tree import expected_shapes, flatten_params

    config, native = load_checkpoint(str(paper_runs["native"] / "final"))
    assert config.replace(dropout_rate=0.0) == TINY_CODA
    t5x = _params(paper_runs["rte"]["model_dir"] / "checkpoint_2")
    want = expected_shapes(TINY_CODA)
    assert {k: tuple(v.shape) for k, v in flatten_params(native).items()} == want
    assert {k: tuple(v.shape) for k, v in t5x.items()} == want
    rows = [json.loads(line) for line in open(paper_runs["native"] / "metrics.jsonl")]
    native_k = {r["k"] for r in rows if r.get("split") == "train"}
    t5x_k = {m["coda/k"] for m in t5x_train_metrics(paper_runs["rte"]["logs"]["train"]).values()}
    assert native_k == t5x_k == {86}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mnli", "boolq", "squad", "record", "xsum"])
def test_paper_task_finetunes_and_evaluates(paper_setup, task):
    from coda_flax.configs import table8

    run = _finetune_and_eval(paper_setup, task, paper_setup["init"], task)
    n = table8.finetune(TASKS[task])["feature_lengths"]["inputs"]
    metrics = t5x_train_metrics(run["logs"]["train"])
    assert [metrics[s]["coda/k"] for s in (1, 2)] == [-(-n // 3)] * 2
    assert [r["step"] for r in run["eval"]] == [2] and METRIC[task] in run["eval"][0]


# ------------------------------------------------------------------ coda reproduce --engine t5x
def test_reproduce_t5x_writes_t5x_commands_sharing_runs_between_tables(tmp_path):
    """`coda reproduce --engine t5x`: the stages of `coda train` as `python -m t5x.train` /
    `t5x.eval` commands over the same model and variant files; Table 3's soft top-k rows share
    Table 2's k-to-k runs as with the native engine; each stage starts from the checkpoint the
    one before it ends with."""
    from coda_flax.experiments import gin_commands as gc
    from coda_flax.experiments import paper_tables as pt
    from coda_flax.experiments import reproduce as rp

    ckpt = ["INITIAL_CHECKPOINT_PATH='/c/{preset}'", "TFDS_DATA_DIR='/tfds'"]
    t2 = {e.name: e for e in rp.expand(pt.load_table(2), tmp_path, ckpt, engine="t5x")}
    t3 = {e.name: e for e in rp.expand(pt.load_table(3), tmp_path, ckpt, engine="t5x")}
    native = {e.name: e for e in rp.expand(pt.load_table(2), tmp_path, ckpt)}
    a, b = t2["k_to_k_r3.large_rte"], t3["soft_topk_r3.large_rte"]
    assert [s.directory for s in a.stages[:-1]] == [s.directory for s in b.stages[:-1]]
    assert {s.directory for s in a.stages[:-1]}.isdisjoint(
        s.directory for s in native["k_to_k_r3.large_rte"].stages)
    pre, fine, ev = a.stages
    assert [s.kind for s in a.stages] == ["pretrain", "finetune", "eval"]
    assert pre.command().startswith(f"python -m t5x.train --gin_search_paths={GIN_DIR} "
                                    "--gin_file=models/t5_1_1_large.gin "
                                    "--gin_file=variants/coda_k_to_k.gin "
                                    "--gin_file=t5x/runs/pretrain.gin ")
    assert fine.gin_files[-1] == "t5x/runs/finetune.gin" and ev.gin_files[-1] == "t5x/runs/eval.gin"
    assert ev.command().startswith("python -m t5x.eval ")
    assert pre.bindings["NUM_ROUTED"] == "192" and pre.bindings["TRAIN_STEPS"] == "100000"
    assert pre.bindings["INITIAL_CHECKPOINT_PATH"] == "'/c/t5_1_1_large'"
    assert fine.bindings["INITIAL_CHECKPOINT_PATH"] == repr(
        os.path.join(pre.directory, "checkpoint_100000"))
    assert (fine.bindings["PAPER_TASK"], fine.bindings["REDUCTION"]) == ("'coda_rte'", "3")
    assert ev.bindings["CHECKPOINT_PATH"] == repr(os.path.join(fine.directory, "checkpoint_300000"))
    assert ev.bindings["REDUCTION"] == "3" and ev.bindings["TFDS_DATA_DIR"] == "'/tfds'"
    assert "train.schedule" not in fine.bindings
    for e in t2.values():
        assert not any(gc.missing_gin_files(s.gin_files) for s in e.stages)
    with pytest.raises(rp.ReproduceError, match="unknown engine"):
        rp.expand(pt.load_table(2), tmp_path, engine="jax")


def _tiny_table():
    """A one-cell stand-in for Table 2: CoDA r = 3 on RTE (n = 64), 2 steps."""
    return dict(
        id="table2", number=2, title="tiny stand-in", caption="Table 2. A tiny stand-in.",
        status="ready", label_columns=["Model", "r"], decimals=1, delta_avg=None,
        initial_checkpoint=dict(required=True, help="a T5X checkpoint"),
        columns=[dict(key="rte", label="RTE", kind="metric", model_gin="models/tiny.gin",
                      preset="tiny", task="coda_rte", metric="accuracy", split="validation",
                      feature_lengths={"inputs": 64, "targets": 8}, train_steps=2, batch_size=2,
                      learning_rate=0.001, schedule="constant")],
        rows=[dict(key="coda_r3", labels=["CoDA", "3"], variant_gin="variants/coda_k_to_all.gin",
                   reduction=3, paper={"rte": 70.0})])


@pytest.mark.slow
def test_coda_reproduce_engine_t5x_runs_a_tiny_table(paper_setup, tmp_path, monkeypatch, capsys):
    """`coda reproduce --table 2 --engine t5x` on a one-cell stand-in table, T5X's scripts run
    on mocked TFDS data (the worker in place of `python -m`): train, eval, the table written;
    run again, it is skipped."""
    from coda_flax.cli import main as coda
    from coda_flax.experiments import paper_tables as pt
    from coda_flax.experiments import reproduce as rp

    real = pt.load_table
    monkeypatch.setattr(pt, "load_table",
                        lambda which: _tiny_table() if pt.table_id(which) == "table2"
                        else real(which))
    monkeypatch.setattr(rp, "T5X_LAUNCH", (sys.executable, WORKER))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    out = tmp_path / "out"
    argv = ["reproduce", "--table", "2", "--engine", "t5x", "--output", str(out),
            f"--gin.INITIAL_CHECKPOINT_PATH='{paper_setup['init']}'", *paper_setup["common"],
            "--gin.train.train_eval_dataset_cfg=None", "--gin.train.infer_eval_dataset_cfg=None",
            "--gin.utils.DatasetConfig.batch_size=8"]
    assert coda(argv) == 0, capsys.readouterr()
    results = json.load(open(out / "table2" / "coda_r3.rte" / "eval_results.json"))
    assert results["step"] == 2 and 0 <= results["accuracy"] <= 100 and results["engine"] == "t5x"
    (exp,) = json.load(open(out / "table2.json"))["experiments"]
    assert exp["status"] == "finished" and exp["ours"] == results["accuracy"]
    assert exp["commands"][0].startswith("python -m t5x.train ")
    log = open(os.path.join(exp["run_dir"], "t5x.train.log")).read()
    assert "coda/k=22" in log                                      # ceil(64 / 3)
    assert coda(argv) == 0 and "finished, skipped" in capsys.readouterr().out
