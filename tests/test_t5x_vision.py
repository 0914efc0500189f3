"""Table 6 on the T5X engine (issue 21): Pix2Struct patches through T5X's own model, feature
converter, train.py and eval.py.

* Without launching T5X's scripts (default suite, T5X installed as tests/test_t5x.py): a tiny
  pix2struct-shaped CoDA model as `CodaEncoderDecoderModel` reads one batch of the
  coda_pix2struct_docvqa task (TFRecords written here in Pix2Struct's layout) through its feature
  converter: the patches arrive unchanged (numpy patchify of the stored PNG), and T5X's loss,
  logits and greedy decodes equal the native model's (CodaT5Model, EncoderDecoder) on the same
  parameters; T5X's Adafactor and partitioner accept the patch embedding's logical axes.
* `coda reproduce --table 6 --engine t5x --dry-run` lists `python -m t5x.train` / `t5x.eval`
  commands with the cosine run file and the vision task files; a train and an eval command parse
  under T5X's gin (in a fresh process, as `python -m t5x.train` would) into the pix2struct_large
  CoDA model, the task, and a learning rate equal to `coda train`'s cosine schedule.
* Slow: a tiny pix2struct-shaped model (dense, written with `python -m coda_flax.t5x`) trains 2
  steps of CoDA r = 4 with the real `t5x.train` on those TFRecords (adapters and routers new,
  the backbone bit-identical), `t5x.eval` scores it (ANLS, exact match) and `t5x.infer` writes
  its predictions; `coda reproduce --table 6 --engine t5x` runs one tiny cell.
"""

import io
import json
import os
import re
import shlex
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest

from test_t5x import _require_t5x
from train_helpers import t5x_train_metrics

from coda_flax import CodaConfig, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, "gin")
TASK = "coda_pix2struct_docvqa"
LENGTHS = {"inputs": 16, "targets": 12}
# models/pix2struct_large.gin made tiny (the same fields as bindings for T5X's gin below)
TINY = dict(vocab_size=300, d_model=32, num_heads=4, num_kv_heads=4, head_dim=8, d_ff=48,
            num_encoder_layers=1, num_decoder_layers=1, max_patch_positions=32,
            relative_attention_num_buckets=8, dropout_rate=0.0)
CODA = CodaConfig(reduction=4, adapter_dim=4, attention="k_to_all")


def _tiny(coda=CODA):
    return ModelConfig.from_preset("pix2struct_large", coda=coda, **TINY)


@pytest.fixture(scope="module")
def vision_data(tmp_path_factory):
    """docvqa/processed/{train,val}.tfr-00000-of-00001 with 4 examples each, as Pix2Struct's
    preprocessing writes them; returns (data dir, {id: pixels})."""
    from test_pix2struct_tasks import _example, _png

    from coda_flax.tasks._tf import tf

    root = tmp_path_factory.mktemp("t5x_vision")
    rng = np.random.RandomState(0)
    d = root / "data" / "docvqa" / "processed"
    d.mkdir(parents=True)
    pixels = {}
    for split in ("train", "val"):
        with tf.io.TFRecordWriter(str(d / f"{split}.tfr-00000-of-00001")) as w:
            for i in range(4):
                png, px = _png(rng, 48 + 8 * i, 64)
                pixels[f"{split}{i}"] = px
                w.write(_example(png, f"{split}{i}", [f"answer {i}", f"Answer {i}!"]))
    return root, pixels


# ------------------------------------------------------------------ the model, one batch
@pytest.fixture(scope="module")
def t5x_vision_model(vision_data):
    _require_t5x()
    import seqio

    from t5x import utils

    from coda_flax.t5x import (Adafactor, CodaEncoderDecoderModel, continuous_vocabulary,
                               finetuning_optimizer, logical_factor_rules, pix2struct_task,
                               pix2struct_vocabulary)

    root, _ = vision_data
    vocab = pix2struct_vocabulary()                         # no VOCAB_PATH: bytes, as coda train
    assert pix2struct_task(TASK, vocab, str(root / "data"), LENGTHS) == TASK
    opt = finetuning_optimizer(
        Adafactor(decay_rate=0.8, logical_factor_rules=logical_factor_rules()), "finetune")
    model = CodaEncoderDecoderModel(_tiny(), continuous_vocabulary(), vocab, opt, z_loss=1e-4)
    utils.verify_matching_vocabs(utils.DatasetConfig(TASK, LENGTHS, "train", 2, False, 0), model)
    ds = seqio.get_dataset(TASK, LENGTHS, model.FEATURE_CONVERTER_CLS(pack=False),
                           dataset_split="validation", shuffle=False, num_epochs=1)
    batch = next(ds.batch(2).as_numpy_iterator())
    ids = ["val0", "val1"]                     # the first two records, read in order
    # T5X's eval.py initialises without input_types (float32 ones): the patches stay float.
    # (jitted, as T5X's partitioner does: op by op, init takes half a minute)
    import jax
    shapes = {k: v.shape for k, v in batch.items()}
    variables = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(
        jax.random.PRNGKey(3))
    return model, opt, batch, ids, variables


@pytest.mark.filterwarnings("ignore:.*Traversal.*:DeprecationWarning")
def test_t5x_model_reads_patches_and_matches_the_native_model(t5x_vision_model, vision_data):
    import jax
    from flax import core as flax_core

    from coda_flax.frontends.patches import patchify
    from coda_flax.model import EncoderDecoder
    from coda_flax.train.t5_model import CodaT5Model

    model, _, batch, ids, variables = t5x_vision_model
    _, pixels = vision_data
    enc = batch["encoder_input_tokens"]
    assert enc.dtype == np.float32 and enc.shape == (2, 16, 2 + 16 * 16 * 3)
    for row, key in zip(enc, ids):                  # the converter carries the patches as made
        np.testing.assert_allclose(row, patchify(pixels[key], 16, 16), atol=1e-5)
    params = flax_core.unfreeze(variables["params"])
    axes = flax_core.unfreeze(variables["params_axes"])["encoder"]["patch_embedder"]
    assert axes["patch_projection"]["kernel_axes"].names == ("patch", "embed")
    assert axes["row_embedder"]["embedding_axes"].names == ("abspos_buckets", "embed")
    ours = CodaT5Model(_tiny(), z_loss=1e-4)
    ref_module = EncoderDecoder(_tiny())

    @jax.jit          # (jitted: CoDA's soft top-k iterations are slow op by op)
    def both(p):
        t5x = (model.loss_fn(p, batch, None)[0], model._compute_logits(p, batch))  # T5X's
        native = (ours.loss_fn(p, batch, None)[0],
                  ref_module.apply({"params": p}, enc, batch["decoder_input_tokens"]))
        return t5x, native

    (loss, logits), (want_loss, want_logits) = both(params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    assert np.isfinite(loss) and np.ptp(np.asarray(logits)) > 0
    # T5X's decoding: cache from ones-like patches, beam-expanded raw patches, temperature 0.
    from t5x import decoding

    from coda_flax.t5x import CodaEncoderDecoderModel
    greedy = CodaEncoderDecoderModel(model.config, model.input_vocabulary,
                                     model.output_vocabulary, model.optimizer_def,
                                     decode_fn=decoding.temperature_sample)
    decodes, want = jax.jit(lambda p: (
        greedy.predict_batch_with_aux(p, batch, decoder_params={"temperature": 0.0})[0],
        ours.predict_batch(p, batch)))(params)
    np.testing.assert_array_equal(decodes, want)


@pytest.mark.filterwarnings("ignore:.*Traversal.*:DeprecationWarning")
def test_t5x_optimizer_and_partitioner_take_the_patch_axes(t5x_vision_model):
    """T5X's Adafactor (its factor rules raise KeyError on an unknown logical axis) builds its
    state over every parameter (TRAINABLE='all', as CoDA pretraining: finetuning's
    MultiOptimizer shows Adafactor only the adapters, routers and norms), and T5X's partitioner
    maps the patch embedding through the rules of t5x/model.gin."""
    import jax
    from flax.linen import partitioning as flax_partitioning
    from t5x import partitioning
    from t5x import train_state as train_state_lib

    from coda_flax.t5x import axis_rules

    from coda_flax.t5x import Adafactor, finetuning_optimizer, logical_factor_rules

    model, _, _, _, variables = t5x_vision_model
    opt = finetuning_optimizer(
        Adafactor(decay_rate=0.8, logical_factor_rules=logical_factor_rules()), "all")
    state = train_state_lib.FlaxOptimTrainState.create(opt, variables)
    factors = opt.hyper_params.factor_map
    assert "encoder/patch_embedder/patch_projection/kernel" in factors
    rules = partitioning.standard_logical_axis_rules(additional_rules=axis_rules(model.config))
    mesh_axes = jax.tree_util.tree_map(
        lambda a: flax_partitioning.logical_to_mesh_axes(a.names, rules),
        state.params_axes["encoder"]["patch_embedder"],
        is_leaf=lambda x: isinstance(x, flax_partitioning.AxisMetadata))
    assert tuple(mesh_axes["patch_projection"]["kernel_axes"]) == (None, None)
    assert tuple(mesh_axes["row_embedder"]["embedding_axes"]) == (None, None)
    assert int(state.step) == 0


def test_bad_vision_settings_name_the_fix(t5x_vision_model):
    from coda_flax.t5x import CodaEncoderDecoderModel, pix2struct_task

    model, opt, _, _, _ = t5x_vision_model
    with pytest.raises(ValueError, match="unknown task 'coda_rte'.*t5x/tasks/"):
        pix2struct_task("coda_rte", None, None, LENGTHS)
    with pytest.raises(ValueError, match="feature_lengths must give 'inputs'"):
        pix2struct_task(TASK, None, None, {"targets": 12})
    with pytest.raises(ValueError, match="head='decoder'"):
        CodaEncoderDecoderModel(model.config.replace(head="ctc"), model.input_vocabulary,
                                model.output_vocabulary, opt)


# ------------------------------------------------------------------ coda reproduce --engine t5x
def _dry_run_commands(tmp_path, *extra):
    from coda_flax.cli.reproduce import main as cli_main

    out = tmp_path / "out"
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli_main(["--table", "6", "--engine", "t5x", "--dry-run", "--pretrain-steps",
                         "0", "--output", str(out), *extra]) == 0
    text = buf.getvalue()
    return text, [shlex.split(line.strip()) for line in text.splitlines()
                  if line.startswith("  python -m t5x.")]


def test_reproduce_table6_engine_t5x_dry_run_lists_t5x_commands(tmp_path):
    text, commands = _dry_run_commands(tmp_path)
    assert "NOT RUNNABLE" not in text and len(re.findall(r"(?m)^\[\d+/15\] ", text)) == 15
    train = [c for c in commands if c[2] == "t5x.train"]
    evals = [c for c in commands if c[2] == "t5x.eval"]
    assert len(train) == len(evals) == 15
    files = {"ocrvqa": "t5x/tasks/ocrvqa.gin", "docvqa": "t5x/tasks/docvqa.gin",
             "screen2words": "t5x/tasks/screen2words.gin"}
    for c in train:
        gin_files = [a.split("=", 1)[1] for a in c if a.startswith("--gin_file=")]
        task = [a.split("=", 1)[1] for a in c if a.startswith("--gin.PAPER_TASK=")][0]
        assert gin_files[0] == "models/pix2struct_large.gin"
        assert gin_files[2:] == ["t5x/runs/finetune_cosine.gin",
                                 files[task.strip("'").split("_")[-1]]]
        assert "--gin.LEARNING_RATE=0.01" in c and "--gin.TRAIN_STEPS=20000" in c
        assert not any(a.startswith("--gin.train.schedule") for a in c)
    for c in evals:
        gin_files = [a.split("=", 1)[1] for a in c if a.startswith("--gin_file=")]
        assert gin_files[2] == "t5x/runs/eval.gin" and gin_files[3].startswith("t5x/tasks/")
    assert sum("--gin.REDUCTION=16" in c for c in train) == 3
    from coda_flax.experiments import gin_commands as gc
    from coda_flax.experiments.paper_tables import ReproduceError
    with pytest.raises(ReproduceError, match="learning-rate schedule 'rsqrt'"):
        gc.t5x_argv("train", ["models/tiny.gin", "runs/finetune.gin"],
                    {"train.schedule": "'rsqrt'"})                 # Table 5's: no T5X run file


@pytest.mark.parametrize("task,dataset", [("ocrvqa", "OCR-VQA"), ("docvqa", "DocVQA"),
                                          ("screen2words", "Screen2Words")])
def test_vision_task_files_hold_table8(task, dataset):
    from test_t5x_paper import _macros

    from coda_flax.configs import table8

    want = table8.finetune(dataset)
    got = _macros(f"t5x/tasks/{task}.gin")
    assert got == {"PAPER_TASK": f"coda_pix2struct_{task}",
                   "TASK_FEATURE_LENGTHS": want["feature_lengths"],
                   "TRAIN_STEPS": want["train_steps"], "BATCH_SIZE": want["batch_size"],
                   "LEARNING_RATE": want["learning_rate"]}
    assert want["schedule"] == "cosine"
    assert "include 't5x/pix2struct_task.gin'" in open(
        os.path.join(GIN_DIR, "t5x", "tasks", f"{task}.gin")).read()


PARSE_SCRIPT = r"""
import json, sys
from t5x.train import train          # __main__.train / evaluate, as under `python -m t5x.<script>`
from t5x.eval import evaluate
import gin, seqio
from t5x import gin_utils, utils
results = []
for argv in json.loads(sys.argv[1]):
    gin.clear_config()
    paths = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_search_paths=")]
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_file=")]
    bindings = [a[len("--gin."):] for a in argv if a.startswith("--gin.")]
    gin_utils.parse_gin_flags(paths, files, bindings)
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    task = gin.query_parameter("%MIXTURE_OR_TASK_NAME").scoped_configurable_fn()
    utils.verify_matching_vocabs(utils.DatasetConfig(task, {}, "train", 1, False, 0), model)
    vocab = seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
    out = dict(config=repr(model.config), task=task, vocab=type(vocab).__name__,
               converter=model.FEATURE_CONVERTER_CLS.__name__,
               lengths=gin.query_parameter("%TASK_FEATURE_LENGTHS"))
    if argv[0] == "t5x.train":
        lr = gin.get_configurable(utils.create_learning_rate_scheduler)()
        out["lr"] = [float(lr(s)) for s in (0, 5000, 10000, 19999)]
        out["batch_size"] = gin.query_parameter("%BATCH_SIZE")
    results.append(out)
print("RESULT " + json.dumps(results))
"""


def _parse_in_t5x(commands, tmp_path):
    """The commands' gin flags parsed in one fresh process, as T5X's scripts parse them."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", PARSE_SCRIPT,
                           json.dumps([c[2:] for c in commands])], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def test_table6_t5x_commands_parse_into_the_model_task_and_cosine_schedule(tmp_path):
    """One train and one eval command of the dry run, parsed by T5X's gin as its scripts do:
    MODEL is pix2struct_large with CoDA r = 16, the task reads patches, and the learning rate
    is `coda train`'s cosine schedule (optax) at the same steps."""
    _require_t5x()
    from coda_flax.train.optimizer import learning_rate_schedule

    _, commands = _dry_run_commands(
        tmp_path, f"--gin.DATA_DIR='{tmp_path}/data'",
        "--gin.INITIAL_CHECKPOINT_PATH='/ckpts/{preset}_t5x/checkpoint_0'")
    train = [c for c in commands if c[2] == "t5x.train" and "--gin.REDUCTION=16" in c
             and "--gin.PAPER_TASK='coda_pix2struct_screen2words'" in c][0]
    ev = [c for c in commands if c[2] == "t5x.eval" and "--gin.REDUCTION=16" in c
          and "--gin.PAPER_TASK='coda_pix2struct_screen2words'" in c][0]
    got, got_eval = _parse_in_t5x([train, ev], tmp_path)
    want = ModelConfig.from_preset("pix2struct_large", dropout_rate=0.1, dtype="bfloat16",
                                   coda=CodaConfig(reduction=16, attention="k_to_all"))
    assert got["config"] == repr(want)
    assert got["task"] == "coda_pix2struct_screen2words" and got["batch_size"] == 32
    assert got["converter"] == "ContinuousEncDecFeatureConverter"
    assert got["lengths"] == {"inputs": 4096, "targets": 128} and got["vocab"] == "ByteVocabulary"
    native = learning_rate_schedule("cosine", 0.01, 0, 20000)
    np.testing.assert_allclose(got["lr"], [float(native(s)) for s in (0, 5000, 10000, 19999)],
                               rtol=1e-5, atol=1e-8)
    assert got_eval["config"] == repr(want.replace(dropout_rate=0.0))
    assert got_eval["task"] == "coda_pix2struct_screen2words"
    assert got_eval["converter"] == "ContinuousEncDecFeatureConverter"


# ------------------------------------------------------------------ real t5x.train / t5x.eval
@pytest.fixture(scope="module")
def dense_t5x(vision_data):
    """The tiny pix2struct-shaped model, dense and random (standing in for `coda convert` of
    Pix2Struct), written as a T5X checkpoint by `python -m coda_flax.t5x`."""
    _require_t5x()
    import flax.linen as nn
    import jax

    from coda_flax.checkpoints.native import save_checkpoint
    from coda_flax.cli.t5x import main as to_t5x
    from coda_flax.model import EncoderDecoder, init_args

    root, _ = vision_data
    dense = _tiny(coda=None)
    params = nn.meta.unbox(EncoderDecoder(dense).init(jax.random.PRNGKey(0),
                                                      *init_args(dense))["params"])
    save_checkpoint(str(root / "dense"), params, dense)
    assert to_t5x([str(root / "dense"), str(root / "dense_t5x")]) == 0   # patches init
    return root / "dense_t5x" / "checkpoint_0"


@pytest.mark.slow
def test_t5x_train_and_eval_a_tiny_pix2struct_cell(vision_data, dense_t5x):
    from coda_flax.checkpoints.peft import param_group
    from coda_flax.checkpoints.t5x import read_t5x
    from coda_flax.checkpoints.tree import flatten_params
    from coda_flax.train.optimizer import learning_rate_schedule

    root, _ = vision_data
    init = dense_t5x
    model_dir = root / "run"
    tiny = [f"--gin.model_config.{k}={v}" for k, v in TINY.items() if k != "dropout_rate"]
    common = [f"--gin_search_paths={GIN_DIR}", "--gin_file=models/pix2struct_large.gin",
              "--gin_file=variants/coda_k_to_all.gin"]
    flags = [*tiny, "--gin.REDUCTION=4", "--gin.CodaConfig.adapter_dim=4",
             f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.DATA_DIR='{root / 'data'}'",
             "--gin.ACTIVATION_DTYPE='float32'"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    logs = {k: str(root / f"{k}.log") for k in ("train", "eval", "infer")}
    for script, argv in (
            ("train", [*common, "--gin_file=t5x/runs/finetune_cosine.gin",
                       "--gin_file=t5x/tasks/docvqa.gin", *flags,
                       f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{init}'",
                       "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2", "--gin.DROPOUT_RATE=0.0",
                       "--gin.utils.SaveCheckpointConfig.period=1",
                       "--gin.train.train_eval_dataset_cfg=None",
                       "--gin.train.infer_eval_dataset_cfg=None"]),
            ("eval", [*common, "--gin_file=t5x/runs/eval.gin", "--gin_file=t5x/tasks/docvqa.gin",
                      *flags, f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoint_2'}'",
                      f"--gin.EVAL_OUTPUT_DIR='{model_dir / 'eval'}'",
                      "--gin.utils.DatasetConfig.batch_size=4"]),
            ("infer", [*common, "--gin_file=t5x/runs/infer.gin",
                       "--gin_file=t5x/tasks/docvqa.gin", *flags,
                       f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoint_2'}'",
                       f"--gin.INFER_OUTPUT_DIR='{model_dir / 'infer'}'",
                       "--gin.utils.DatasetConfig.batch_size=4"])):
        with open(logs[script], "w") as f:
            proc = subprocess.run([sys.executable, "-m", f"t5x.{script}", *argv], env=env,
                                  cwd=str(root), stdout=f, stderr=subprocess.STDOUT, timeout=1200)
        assert proc.returncode == 0, open(logs[script]).read()[-6000:]

    metrics = t5x_train_metrics(logs["train"])
    assert sorted(metrics) == [1, 2]
    assert [metrics[s]["coda/k"] for s in (1, 2)] == [4, 4]                # ceil(16 / 4)
    cosine = learning_rate_schedule("cosine", 0.01, 0, 2)                  # coda train's
    np.testing.assert_allclose([metrics[s]["learning_rate"] for s in (1, 2)],
                               [float(cosine(0)), float(cosine(1))], rtol=1e-4)
    start = flatten_params(read_t5x(str(init)))
    end = {k: np.asarray(v) for k, v in
           flatten_params(read_t5x(str(model_dir / "checkpoint_2"))).items()}
    assert set(start) < set(end)                       # adapters and routers start from scratch
    new = set(end) - set(start)
    assert {k for k in new if "router" in k} and {k for k in new if "adapter/up" in k}
    assert all(np.array_equal(np.asarray(start[k]), end[k]) for k in start
               if param_group(k) == "backbone")
    assert any("patch_embedder" in k for k in start)
    rows = [json.loads(line) for line in open(model_dir / "eval" / "inference_eval" /
                                              f"{TASK}-metrics.jsonl")]
    assert [r["step"] for r in rows] == [2]
    assert 0.0 <= rows[0]["anls"] <= 100.0 and 0.0 <= rows[0]["exact_match"] <= 100.0
    preds = model_dir / "infer" / f"{TASK}-predict.jsonl-00000-of-00001"
    lines = [json.loads(line) for line in open(preds)]
    assert [line["inputs"]["targets_pretokenized"] for line in lines] == [
        f"answer {i}" for i in range(4)]                                   # the val split
    assert all(isinstance(line["prediction"], str) for line in lines)


@pytest.mark.slow
def test_coda_reproduce_table6_engine_t5x_runs_a_tiny_cell(vision_data, dense_t5x, tmp_path,
                                                           monkeypatch):
    """`coda reproduce --table 6 --engine t5x` runs one cell (CoDA r = 4 on DocVQA, batch 2, 2
    steps, the tiny model) with T5X's scripts: the table's commands, the eval results read back."""
    from coda_flax.experiments import paper_tables as pt
    from coda_flax.experiments import reproduce as rp

    root, _ = vision_data
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    spec = pt.load_table(6)
    for col in spec["columns"]:
        col.update(batch_size=2, train_steps=2)
    bindings = [*(f"model_config.{k} = {v}" for k, v in TINY.items() if k != "dropout_rate"),
                "CodaConfig.adapter_dim = 4", f"TASK_FEATURE_LENGTHS = {LENGTHS}",
                f"DATA_DIR = '{root / 'data'}'", f"INITIAL_CHECKPOINT_PATH = '{dense_t5x}'",
                "ACTIVATION_DTYPE = 'float32'", "train.train_eval_dataset_cfg = None",
                "train.infer_eval_dataset_cfg = None", "utils.DatasetConfig.batch_size = 4"]
    logs = []
    summary = rp.run_table(spec, tmp_path / "out", bindings=bindings, only=["coda_r4.docvqa"],
                           pretrain_steps=0, engine="t5x", log=logs.append)
    assert summary["ran"] == ["coda_r4.docvqa"] and not summary["failed"], "\n".join(logs)
    assert any("python -m t5x.train" in line and "t5x/runs/finetune_cosine.gin" in line
               for line in logs)
    results = json.load(open(tmp_path / "out" / "table6" / "coda_r4.docvqa" /
                             "eval_results.json"))
    assert results["engine"] == "t5x" and results["step"] == 2
    assert 0.0 <= results["anls"] <= 100.0
