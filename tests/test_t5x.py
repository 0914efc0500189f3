"""coda_flax.t5x: CoDA inside T5X's own EncoderDecoderModel / train.py / eval.py / infer.py.

Without T5X: the module T5X drives is called exactly the way t5x/models.py calls it (init,
_compute_logits, encode, _compute_kv_cache, _compute_logits_from_slice) and must match
coda_flax.EncoderDecoder; the params_axes layout, the trainable-parameter filter, the rules
and the lazy import are checked too, and adapters / multi-head key-value kernels shard over
'model' on 8 virtual devices. With T5X installed: the real t5x.models.EncoderDecoderModel
subclass trains, scores and decodes like CodaT5Model, CodaTrainer differentiates only the
trained parameters, the gin file builds the model, save_t5x_checkpoint writes a checkpoint T5X
reads back, and T5X's own `t5x.train` (stopped and resumed), `t5x.eval` and `t5x.infer` run on
a tiny offline example. Without T5X those skip, except in CI (CI=true with ../shared/wheels
present, where scripts/env.sh installs T5X): there they fail.
"""

import ast
import inspect
import os
import re
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning

from coda_flax import CodaConfig, EncoderDecoder, ModelConfig, tiny_config
from coda_flax.checkpoints.peft import param_group
from coda_flax.t5x import (AXIS_RULES, FACTOR_RULES, T5XEncoderDecoder, axis_rules,
                           model_config, param_filter, split_axes)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, "gin")
MODEL_GIN = os.path.join(GIN_DIR, "t5x", "model.gin")
# CI clones the repository with a read-only ../shared beside it; scripts/env.sh installs T5X
# from its wheels there, so in CI a missing T5X is a failure, not a skip.
SHARED_WHEELS = os.path.join(os.path.dirname(ROOT), "shared", "wheels")
T5X_EXPECTED = (os.environ.get("CI", "").lower() in ("1", "true")
                and os.path.isdir(SHARED_WHEELS))


def _require_t5x():
    """Skips where T5X is not installed (it is not on PyPI); fails in CI, where it must be."""
    try:
        import t5x.train  # noqa: F401
    except ImportError as e:
        if T5X_EXPECTED:
            pytest.fail(f"CI=true and {SHARED_WHEELS} exists, but t5x does not import ({e}): "
                        f"scripts/env.sh should have installed it from the wheels.")
        pytest.skip(f"T5X is not installed (not on PyPI): {e}")
B, N, L = 2, 8, 5                                  # batch, encoder length, decoder length


def _config(**overrides):
    fields = dict(vocab_size=300, num_encoder_layers=1, num_decoder_layers=1)
    return tiny_config(CodaConfig(reduction=2), **{**fields, **overrides})


def _batch():
    rng = np.random.RandomState(0)
    enc = rng.randint(2, 300, (B, N)).astype(np.int32)
    enc[1, 6:] = 0                                                   # padding
    return {"encoder_input_tokens": enc,
            "decoder_input_tokens": np.array([[0, 5, 6, 7, 8], [0, 9, 10, 0, 0]], np.int32),
            "decoder_target_tokens": np.array([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]], np.int32),
            "decoder_loss_weights": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.float32)}


@pytest.fixture(scope="module")
def setup():
    config = _config()
    module = T5XEncoderDecoder(config)
    # Exactly t5x EncoderDecoderModel.get_initial_variables (no input_types: float32 ones).
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((B, N), jnp.float32),
                            jnp.ones((B, L), jnp.float32), jnp.ones((B, L), jnp.float32),
                            encoder_positions=None, decoder_positions=None,
                            encoder_segment_ids=None, decoder_segment_ids=None, decode=False,
                            enable_dropout=False)
    params = nn.meta.unbox(variables["params"])
    return config, module, variables, params


# ------------------------------------------------------------------ without T5X
def test_importing_coda_flax_t5x_does_not_import_t5x():
    code = ("import sys, coda_flax, coda_flax.t5x\n"
            "assert 't5x' not in sys.modules, 'coda_flax.t5x imported t5x'\n"
            "assert 'CodaEncoderDecoderModel' in dir(coda_flax.t5x)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_missing_t5x_gives_an_install_hint(monkeypatch):
    import coda_flax.t5x as ct

    monkeypatch.setitem(sys.modules, "t5x", None)          # as if T5X were not installed
    monkeypatch.delitem(sys.modules, "coda_flax.t5x.models", raising=False)
    with pytest.raises(ImportError, match=r"needs the t5x package.*pip install"):
        ct.CodaEncoderDecoderModel
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ct.nope


def test_module_params_are_what_coda_flax_checkpoints_hold(setup):
    """T5X initialises with float32 token arrays; the parameters must still be exactly the
    names and shapes of coda_flax's checkpoint format (expected_shapes: an independent table),
    which save_t5x_checkpoint / `coda convert` write and read, and nothing else may be in the
    variables (T5X would treat another collection as mutable training state)."""
    from coda_flax.checkpoints.tree import expected_shapes, flatten_params

    config, _, variables, params = setup
    flat = {k: tuple(np.shape(v)) for k, v in flatten_params(params).items()}
    assert flat == expected_shapes(config)
    assert "encoder/layers_0/router/kernel" in flat and "encoder/layers_0/adapter/up/kernel" in flat
    assert set(variables) == {"params"}
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(params))


def test_module_called_like_t5x_matches_encoder_decoder(setup):
    config, module, _, params = setup
    batch = _batch()
    ref = EncoderDecoder(config)
    want = ref.apply({"params": params}, batch["encoder_input_tokens"],
                     batch["decoder_input_tokens"], batch["decoder_target_tokens"])

    # t5x EncoderDecoderModel._compute_logits, for eval (mutable intermediates, as
    # score_batch) and for training (enable_dropout with a dropout rng; dropout_rate is 0
    # here, so the logits must not change).
    kw = dict(encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
              decoder_positions=None, decode=False)
    args = (batch["encoder_input_tokens"], batch["decoder_input_tokens"],
            batch["decoder_target_tokens"])
    got, state = module.apply({"params": params}, *args, enable_dropout=False, rngs=None,
                              mutable=["intermediates"], **kw)
    np.testing.assert_array_equal(got, want)
    train = module.apply({"params": params}, *args, enable_dropout=True,
                         rngs={"dropout": jax.random.PRNGKey(1)}, mutable=False, **kw)
    np.testing.assert_array_equal(train, want)
    # t5x score_batch(return_intermediates=True): the routing decisions are sown
    assert "layers_0" in state["intermediates"]["encoder"]


def test_fast_decoding_called_like_t5x_matches_teacher_forcing(setup):
    config, module, _, params = setup
    batch = _batch()
    enc, dec = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    ref = EncoderDecoder(config)

    def reference(p):
        return (ref.apply({"params": p}, enc, dec),
                ref.apply({"params": p}, enc, method="encode"))

    def t5x_style(p):   # t5x predict_batch_with_aux: encode, _compute_kv_cache, then steps
        encoded = module.apply({"params": p}, enc, enable_dropout=False, method=module.encode)
        _, init = module.apply({"params": p}, encoder_input_tokens=jnp.ones_like(enc),
                               decoder_input_tokens=jnp.ones_like(dec),
                               decoder_target_tokens=jnp.ones_like(dec), mutable=["cache"],
                               decode=True, enable_dropout=False)
        cache, steps = init["cache"], []
        for i in range(L):                        # _compute_logits_from_slice
            ids = dec[:, i:i + 1]
            logits, new = module.apply({"params": p, "cache": cache}, encoded, enc, ids, ids,
                                       enable_dropout=False, decode=True,
                                       max_decode_length=L, mutable=["cache"],
                                       method=module.decode)
            steps.append(logits[:, 0])
            cache = new["cache"]
        return encoded, jnp.stack(steps, axis=1), cache

    full, want_encoded = reference(params)
    encoded, steps, cache = t5x_style(params)
    np.testing.assert_array_equal(encoded, want_encoded)
    np.testing.assert_allclose(steps, full, rtol=1e-5, atol=1e-5)
    ids = dec[:, :1]
    # T5X only prefills prompts when module.decode takes `prefill`; ours decodes step by step.
    assert "prefill" not in inspect.signature(module.decode).parameters
    with pytest.raises(ValueError, match="max_decode_length=7"):
        module.apply({"params": params, "cache": cache}, encoded, enc, ids, ids,
                     enable_dropout=False, decode=True, max_decode_length=7,
                     mutable=["cache"], method=module.decode)


def test_split_axes_is_t5xs_params_axes_layout(setup):
    _, _, variables, params = setup
    out = split_axes(variables)
    assert set(out) == {"params", "params_axes"}
    flat = traverse_util.flatten_dict(out["params"])
    assert all(isinstance(v, jax.Array) for v in flat.values())
    axes = traverse_util.flatten_dict(out["params_axes"])
    key = ("encoder", "layers_0", "attention", "query", "kernel_axes")
    assert axes[key] == flax_partitioning.AxisMetadata(names=("embed", "heads", "kv"))
    # What t5x.train_state._validate_params_axes checks: an axis name per parameter.
    names = traverse_util.flatten_dict(flax_partitioning.get_axis_names(out["params_axes"]))
    assert set(names) == set(flat) == set(traverse_util.flatten_dict(params))
    with pytest.raises(ValueError, match="no logical axis names"):
        split_axes({"params": params})


@pytest.mark.filterwarnings("ignore:.*Traversal.*:DeprecationWarning")  # T5X's MultiOptimizer API
def test_param_filter_selects_what_coda_finetuning_trains(setup):
    _, _, _, params = setup
    flat = traverse_util.flatten_dict(params, sep="/")

    def selected(trainable):
        traversal = traverse_util.ModelParamTraversal(param_filter(trainable))
        marked = traversal.update(lambda x: None, params)        # None where selected
        return {k for k, v in traverse_util.flatten_dict(marked, sep="/").items()
                if v is None}

    finetune = selected("finetune")
    assert finetune == {k for k in flat if param_group(k) != "backbone"}
    assert "encoder/layers_0/router/kernel" in finetune
    assert "encoder/layers_0/adapter/up/kernel" in finetune
    assert "encoder/layers_0/pre_attention_layer_norm/scale" in finetune
    assert "encoder/layers_0/attention/query/kernel" not in finetune
    assert "token_embedder/embedding" not in finetune
    assert selected("all") == set(flat)
    with pytest.raises(ValueError, match="unknown trainable"):
        param_filter("adapters")


def test_rules_name_every_axis_t5x_does_not_know():
    """Text (with LoRA) and image (Pix2Struct patches) models: every logical axis name that
    T5X's standard partitioning / Adafactor factor rules lack has a rule here."""
    from coda_flax.model import init_args

    lora = tiny_config(CodaConfig(reduction=2, lora_rank=2, lora_targets=("all",)))
    patches = tiny_config(CodaConfig(reduction=2), encoder_input="patches", patch_size=2,
                          max_patch_positions=8, encoder_relative_attention=False)
    names = set()
    for config in (lora, patches):
        boxed = jax.eval_shape(lambda: T5XEncoderDecoder(config).init(
            jax.random.PRNGKey(0), *init_args(config)))
        names |= {n for leaf in jax.tree_util.tree_leaves(
            boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)) for n in leaf.names}
    t5x_factor = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}
    t5x_axis = t5x_factor | {"abspos_buckets"}            # replicated by T5X's standard rules
    assert names - t5x_factor == set(FACTOR_RULES)
    assert names - t5x_axis == {n for n, _ in AXIS_RULES}
    # t5x/model.gin binds axis_rules(MODEL_CONFIG): kv heads shard unless there is only one.
    assert "additional_rules = @coda_t5x.axis_rules()" in open(MODEL_GIN).read()
    assert dict(axis_rules(lora)) == {"kv_heads": "model", "adapter": "model", "lora_rank": None,
                                      "patch": None}
    mqa = ModelConfig.from_preset("paper_text_base")
    assert dict(axis_rules(mqa)) == {"kv_heads": None, "adapter": "model", "lora_rank": None,
                                     "patch": None}


SHARDING_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp
from coda_flax import CodaConfig, tiny_config
from coda_flax.t5x import T5XEncoderDecoder, axis_rules, split_axes
from coda_flax.train import partitioning
assert jax.device_count() == 8, jax.devices()
config = tiny_config(CodaConfig(reduction=2, adapter_dim=8), num_heads=4, num_kv_heads=4)
tokens = jnp.ones((1, 8), jnp.int32)
boxed = jax.eval_shape(lambda: T5XEncoderDecoder(config).init(jax.random.PRNGKey(0), tokens,
                                                             tokens[:, :4]))["params"]
names = ["encoder/layers_0/adapter/down/kernel", "encoder/layers_0/adapter/up/kernel",
         "encoder/layers_0/attention/key/kernel", "encoder/layers_0/attention/value/kernel",
         "decoder/layers_0/encoder_decoder_attention/key/kernel"]
def pick(tree):
    from flax import traverse_util
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {n: flat[n] for n in names}
mesh = partitioning.make_mesh(num_partitions=4)                # ('data', 'model') = (2, 4)
out = {"coda_flax": {n: [str(s.spec), s.is_fully_replicated] for n, s in pick(
    partitioning.param_shardings(boxed, mesh)).items()}}
if sys.argv[1] == "t5x":
    from flax.core import freeze
    from t5x import partitioning as t5x_partitioning
    from t5x.train_state import InferenceState
    rules = t5x_partitioning.standard_logical_axis_rules(additional_rules=axis_rules(config))
    partitioner = t5x_partitioning.PjitPartitioner(num_partitions=4, logical_axis_rules=rules)
    variables = split_axes({"params": boxed})
    state = InferenceState.create(freeze(jax.tree_util.tree_map(
        lambda x: jnp.zeros(x.shape, x.dtype), variables)))
    axes = partitioner.get_mesh_axes(state).params
    shardings = jax.tree_util.tree_map(lambda spec: jax.sharding.NamedSharding(
        partitioner.mesh, spec), axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    out["t5x"] = {n: [str(s.spec), s.is_fully_replicated] for n, s in pick(shardings).items()}
print("RESULT" + json.dumps(out))
"""


def test_adapters_and_kv_projections_shard_under_model_parallelism():
    """On 8 (virtual CPU) devices, a ('data', 'model') = (2, 4) mesh: adapter kernels and the
    multi-head key / value projections are split over 'model' (not fully replicated), by
    coda_flax's own partitioning rules and, where T5X is installed, by T5X's partitioner with
    t5x/model.gin's rules."""
    try:
        import t5x.partitioning  # noqa: F401
        which = "t5x"
    except ImportError:
        if T5X_EXPECTED:
            raise
        which = "coda_flax"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT, which], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert set(result) == ({"coda_flax", "t5x"} if which == "t5x" else {"coda_flax"})
    for source, shardings in result.items():
        for name, (spec, replicated) in shardings.items():
            assert not replicated and "model" in spec, (source, name, spec)


MESH_WORKER = os.path.join(ROOT, "tests", "t5x_mesh_worker.py")


def _mesh_run(devices, *model_axes):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    proc = subprocess.run([sys.executable, MESH_WORKER, *map(str, model_axes)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json
    return json.loads(proc.stdout.split("RESULT", 1)[1])


@pytest.mark.slow             # two processes, ~3 min on 2 busy cores
def test_t5x_partitioner_shards_coda_over_model_axes_2_and_4_with_the_losses_of_one_device():
    """T5X's PjitPartitioner + CodaTrainer, 3 steps on 8 virtual CPU devices with 'model' = 2
    and = 4 (model_parallel_submesh; on CPU num_partitions puts every device on 'model'): each
    device holds its slice of the adapter, attention and MLP kernels (shapes read from the
    placed arrays), the router and embedding-width tensors whole, and the losses are those of
    the same run on one device."""
    _require_t5x()
    one = _mesh_run(1, 1)
    many = _mesh_run(8, 2, 4)
    assert (one["devices"], many["devices"]) == (1, 8)
    assert many["num_partitions=2"] == {"data": 1, "model": 8}
    # full shapes (tiny_config, 4 heads, adapter 8, d_ff 32, d_model 16, vocab 264) with the
    # dimension named 'model' by the rules divided by the model axis
    full = {"adapter/down/kernel": (16, 8), "adapter/up/kernel": (8, 16),
            "router/kernel": (16,), "attention/query/kernel": (16, 4, 8),
            "attention/key/kernel": (16, 4, 8), "mlp/wi_0/kernel": (16, 32),
            "mlp/wo/kernel": (32, 16)}
    split = {"adapter/down/kernel": 1, "adapter/up/kernel": 0, "router/kernel": None,
             "attention/query/kernel": 1, "attention/key/kernel": 1, "mlp/wi_0/kernel": 1,
             "mlp/wo/kernel": 0}
    for m in (2, 4):
        run = many[str(m)]
        assert run["mesh"] == {"data": 8 // m, "model": m}
        for name, shape in full.items():
            want = list(shape)
            if split[name] is not None:
                want[split[name]] //= m
            assert run["shards"][f"encoder/layers_0/{name}"] == [want] * 8, (m, name)
        assert run["shards"]["token_embedder/embedding"] == [[264 // m, 16]] * 8   # vocab
        np.testing.assert_allclose(run["losses"], one["1"]["losses"], rtol=2e-5)
    assert len(set(one["1"]["losses"])) == 3                                   # it trains


def test_gin_files_ship_with_the_package():
    """The T5X gin files are the repository's gin/t5x/ beside the model and variant files of
    `coda train`, which setup.cfg ships in the package (coda_flax/gin), and `python -m
    coda_flax.t5x --gin-dir` (for T5X's --gin_search_paths; needs no T5X) prints that folder:
    the same as `python -m coda_flax.train --gin-dir`."""
    import configparser

    import coda_flax.t5x as ct

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    globs = cfg["options.package_data"]["coda_flax.gin"].replace(",", " ").split()
    assert ct.GIN_DIR == GIN_DIR
    files = sorted(os.path.relpath(os.path.join(d, f), GIN_DIR) for d, _, names in
                   os.walk(os.path.join(GIN_DIR, "t5x")) for f in names)
    tasks = [f"t5x/tasks/{t}.gin" for t in ("mnli", "rte", "boolq", "squad", "record", "xsum",
                                            "ocrvqa", "docvqa", "screen2words")]
    assert {"t5x/model.gin", "t5x/trainer.gin", "t5x/init_from_params.gin", "t5x/paper_task.gin",
            "t5x/pix2struct_task.gin", "t5x/tiny_offline.gin", "t5x/runs/finetune.gin",
            "t5x/runs/finetune_cosine.gin", "t5x/runs/pretrain.gin", "t5x/runs/eval.gin",
            "t5x/runs/infer.gin", *tasks} == set(files)
    assert all(any(_glob_match(f, g) for g in globs) for f in files), files
    for flag in ("coda_flax.t5x", "coda_flax.train"):
        out = subprocess.run([sys.executable, "-m", flag, "--gin-dir"], cwd="/",
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == GIN_DIR


def test_model_config_for_gin():
    c = model_config(preset="paper_text_base", coda=CodaConfig(reduction=3), dropout_rate=0.1)
    assert c == ModelConfig.from_preset("paper_text_base", coda=CodaConfig(reduction=3),
                                        dropout_rate=0.1)
    assert c.num_kv_heads == 1 and c.coda.adapter_dim == 64
    assert model_config(**dict(vars(_config()))) == _config()


# ------------------------------------------------------------------ with T5X installed
@pytest.fixture(scope="module")
def t5x_model():
    _require_t5x()
    import seqio
    from t5x import decoding

    from coda_flax.t5x import (Adafactor, CodaEncoderDecoderModel, finetuning_optimizer,
                               logical_factor_rules)

    vocab = seqio.ByteVocabulary()                              # 259 ids, no files needed
    opt = finetuning_optimizer(
        Adafactor(decay_rate=0.8, logical_factor_rules=logical_factor_rules()), "finetune")
    model = CodaEncoderDecoderModel(_config(), vocab, vocab, opt, z_loss=1e-4,
                                    decode_fn=decoding.temperature_sample)
    return model, opt


@pytest.mark.filterwarnings("ignore:.*Traversal.*:DeprecationWarning")
def test_t5x_model_trains_only_finetuning_parameters(t5x_model):
    from t5x import train_state as train_state_lib

    model, opt = t5x_model
    shapes = {"encoder_input_tokens": (B, N), "decoder_input_tokens": (B, L)}
    variables = model.get_initial_variables(jax.random.PRNGKey(0), shapes)
    assert set(variables) == {"params", "params_axes"}
    # T5X's train state: validates params_axes, derives Adafactor's factor map from them.
    state = train_state_lib.FlaxOptimTrainState.create(opt, variables)
    batch = _batch()

    @jax.jit
    def train_step(state):                  # as t5x.trainer: grad of loss_fn, then update
        grads = jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1))[0])(
            state.params)
        return state.apply_gradient(grads, learning_rate=1e-2)

    new = train_step(state)
    before = traverse_util.flatten_dict(state.params, sep="/")
    after = traverse_util.flatten_dict(new.params, sep="/")
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    trainable = {k for k in before if param_group(k) != "backbone"}
    # Adapters' W_up starts at zero, so W_down has no gradient on the first step.
    assert trainable - {k for k in trainable if k.endswith("adapter/down/kernel")} <= moved
    assert moved <= trainable


@pytest.mark.filterwarnings("ignore:.*Traversal.*:DeprecationWarning")
def test_coda_trainer_differentiates_only_the_trained_parameters(t5x_model, monkeypatch):
    """CodaTrainer hands T5X's gradient accumulation the trained parameters only (the frozen
    backbone is a constant of the loss), updates exactly those, and routes the k of its stage."""
    from t5x import partitioning as t5x_partitioning
    from t5x import train_state as train_state_lib

    from coda_flax.t5x import CodaTrainer
    from coda_flax.t5x import trainer as coda_trainer

    model, opt = t5x_model
    shapes = {"encoder_input_tokens": (B, N), "decoder_input_tokens": (B, L)}
    state = train_state_lib.FlaxOptimTrainState.create(
        opt, model.get_initial_variables(jax.random.PRNGKey(0), shapes))
    partitioner = t5x_partitioning.PjitPartitioner(num_partitions=1)
    axes = partitioner.get_mesh_axes(state)
    differentiated = []
    accumulate = coda_trainer.trainer_lib.accumulate_grads_microbatched

    def spy(model_, train_state, *args, **kwargs):
        differentiated.append(set(train_state.params))
        return accumulate(model_, train_state, *args, **kwargs)

    monkeypatch.setattr(coda_trainer.trainer_lib, "accumulate_grads_microbatched", spy)
    trainer = CodaTrainer(model, state, partitioner, eval_names=[], summary_dir=None,
                          train_state_axes=axes, rng=jax.random.PRNGKey(3),
                          learning_rate_fn=lambda step: 1e-2, num_microbatches=None,
                          k_schedule_steps=4, k_anneal_fraction=0.5, k_anneal_stages=2)
    before = {k: np.array(v) for k, v in traverse_util.flatten_dict(state.params,
                                                                    sep="/").items()}
    trainable = {k for k in before if param_group(k) != "backbone"}
    assert trainer.trained == trainable
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    summary = trainer.train(iter([batch] * 4), 4).result()
    assert differentiated and all(d == trainable for d in differentiated)
    # stages over 4 steps: k = N until step 2, then ceil(N / 2); one compilation each
    assert [s.k for s in trainer.plan.stages] == [N, 4] and set(trainer._steps) == {N, 4}
    assert float(summary["coda/k"].value) == 4 and int(trainer.train_state.step) == 4
    after = traverse_util.flatten_dict(trainer.train_state.params, sep="/")
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert moved <= trainable and {k for k in moved if "router" in k}


@pytest.mark.filterwarnings("ignore:.*Traversal.*:DeprecationWarning")
def test_both_trainers_take_the_same_stages_from_the_one_k_plan(t5x_model, tmp_path):
    """CodaTrainer (T5X) and coda_flax's Trainer, given the same steps / fraction / stages,
    anneal k through the same stages: hand-computed, r = 2 over half of 100 steps in 3 stages."""
    from t5x import partitioning as t5x_partitioning
    from t5x import train_state as train_state_lib

    from coda_flax.kplan import KStage
    from coda_flax.t5x import CodaTrainer
    from coda_flax.train.t5_model import CodaT5Model
    from coda_flax.train.trainer import Trainer, TrainerConfig

    model, opt = t5x_model
    shapes = {"encoder_input_tokens": (B, N), "decoder_input_tokens": (B, L)}
    state = train_state_lib.FlaxOptimTrainState.create(
        opt, jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes)))
    partitioner = t5x_partitioning.PjitPartitioner(num_partitions=1)
    t5x_trainer = CodaTrainer(model, state, partitioner, eval_names=[], summary_dir=None,
                              train_state_axes=partitioner.get_mesh_axes(state),
                              rng=jax.random.PRNGKey(3), learning_rate_fn=lambda step: 1e-2,
                              num_microbatches=None, k_schedule_steps=100,
                              k_anneal_fraction=0.5, k_anneal_stages=3)
    own = Trainer(CodaT5Model(model.config), TrainerConfig(
        model_dir=str(tmp_path), total_steps=100, k_anneal_fraction=0.5, k_anneal_stages=3,
        progress=False))
    want = {64: [KStage(0, 64), KStage(25, 48), KStage(50, 32)],     # ceil(64 - 16 i)
            N: [KStage(0, 8), KStage(25, 6), KStage(50, 4)]}
    for n, stages in want.items():
        t5x_trainer.plan = None                     # planned from the first batch's length
        t5x_trainer._set_length({"encoder_input_tokens": np.zeros((B, n), np.int32)})
        # a run already at its last step: train plans k for n, then has no step left to take
        own.train({"step": 100}, lambda start: iter(()), n=n, resume=False)
        assert list(t5x_trainer.plan.stages) == list(own.plan.stages) == stages


def test_t5x_model_scores_and_decodes_like_coda_t5_model(t5x_model):
    from coda_flax.train.t5_model import CodaT5Model

    model, _ = t5x_model
    ours = CodaT5Model(_config(), z_loss=1e-4)
    params = nn.meta.unbox(ours.get_initial_variables(
        jax.random.PRNGKey(2), {"encoder_input_tokens": (B, N),
                                "decoder_input_tokens": (B, L)})["params"])
    batch = _batch()
    loss, metrics = model.loss_fn(params, batch, None)
    np.testing.assert_allclose(loss, ours.loss_fn(params, batch, None)[0], rtol=1e-5)
    np.testing.assert_allclose(model.score_batch(params, batch),
                               ours.score_batch(params, batch), rtol=1e-5)
    scores, inter = model.score_batch(params, batch, return_intermediates=True)
    assert "layers_0" in inter["encoder"]
    # T5X's greedy decoding (temperature 0) through the module's cache == ours.
    t5x_decodes, _ = model.predict_batch_with_aux(params, batch,
                                                  decoder_params={"temperature": 0.0})
    np.testing.assert_array_equal(t5x_decodes, ours.predict_batch(params, batch))


def test_t5x_beam_search_runs(t5x_model):
    from t5x import decoding

    from coda_flax.t5x import CodaEncoderDecoderModel

    model, opt = t5x_model
    beam = CodaEncoderDecoderModel(model.config, model.input_vocabulary,
                                   model.output_vocabulary, opt,
                                   decode_fn=decoding.beam_search)
    params = model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (B, N),
                                "decoder_input_tokens": (B, L)})["params"]
    decodes, aux = beam.predict_batch_with_aux(params, _batch(), num_decodes=3,
                                               return_all_decodes=True)
    assert decodes.shape == (B, 3, L) and aux["scores"].shape == (B, 3)
    assert np.all(np.diff(np.asarray(aux["scores"]), axis=1) >= 0)   # increasing


def test_t5x_model_rejects_a_too_small_vocabulary(t5x_model):
    from coda_flax.t5x import CodaEncoderDecoderModel

    model, opt = t5x_model
    with pytest.raises(ValueError, match="vocab_size >= 259"):
        CodaEncoderDecoderModel(_config().replace(vocab_size=64), model.input_vocabulary,
                                model.output_vocabulary, opt)


@pytest.mark.filterwarnings("ignore:.*Traversal.*:DeprecationWarning")
def test_gin_file_builds_the_model(t5x_model, tmp_path):
    import gin

    from coda_flax.t5x import CodaEncoderDecoderModel

    """`coda train`'s model and variant files (models/tiny.gin, variants/coda_k_to_all.gin) +
    t5x/model.gin give T5X's MODEL the model those files describe, with T5X's dropout."""
    override = tmp_path / "overlay.gin"
    override.write_text(
        "from __gin__ import dynamic_registration\n"
        "import seqio\n"
        "DROPOUT_RATE = 0.1\nVOCABULARY = @seqio.ByteVocabulary()\n")
    files = [os.path.join(GIN_DIR, "models", "tiny.gin"),
             os.path.join(GIN_DIR, "variants", "coda_k_to_all.gin"), MODEL_GIN, str(override)]
    with gin.unlock_config():
        gin.clear_config()
        try:
            gin.parse_config_files_and_bindings(files, [])
            model = gin.query_parameter("%MODEL").scoped_configurable_fn()
            rules = gin.query_parameter(
                "partitioning.standard_logical_axis_rules.additional_rules"
            ).scoped_configurable_fn()
        finally:
            gin.clear_config()
    assert isinstance(model, CodaEncoderDecoderModel)
    # gin/models/tiny.gin's numbers, written out here
    assert model.config == ModelConfig(
        vocab_size=8100, d_model=128, num_heads=4, num_kv_heads=1, head_dim=32, d_ff=256,
        num_encoder_layers=2, num_decoder_layers=1, dropout_rate=0.1, dtype="bfloat16",
        coda=CodaConfig(reduction=3, attention="k_to_all", router="soft_topk"))
    assert rules == axis_rules(model.config)
    assert dict(rules) == {"kv_heads": None, "adapter": "model", "lora_rank": None,  # 1 kv head
                           "patch": None}


def test_save_t5x_checkpoint_is_read_back_by_t5x(t5x_model, tmp_path):
    from t5x import checkpoints

    from coda_flax.t5x import save_t5x_checkpoint

    model, _ = t5x_model
    params = model.get_initial_variables(
        jax.random.PRNGKey(4), {"encoder_input_tokens": (B, N),
                                "decoder_input_tokens": (B, L)})["params"]
    path = save_t5x_checkpoint(params, model.config, str(tmp_path), step=7)
    assert path.endswith("checkpoint_7")
    restored = checkpoints.load_t5x_checkpoint(path)
    assert int(restored["state"]["step"]) == 7
    got = traverse_util.flatten_dict(restored["target"], sep="/")
    want = traverse_util.flatten_dict(params, sep="/")
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(ValueError, match="save_t5x_checkpoint"):
        save_t5x_checkpoint(params, _config().replace(d_ff=64), str(tmp_path / "bad"))


def test_tasks_module_registers_the_paper_tasks_for_t5x(monkeypatch):
    _require_t5x()
    import importlib

    import seqio

    monkeypatch.delenv("CODA_VOCAB", raising=False)
    module = importlib.import_module("coda_flax.t5x.tasks")
    assert "coda_rte" in module.REGISTERED
    vocab = seqio.get_mixture_or_task("coda_rte").output_features["inputs"].vocabulary
    assert vocab.sentencepiece_model_file == module.T5_VOCAB
    from coda_flax.t5x import vocabulary
    assert vocab == vocabulary() and vocab.extra_ids == 100
    assert "100extra" not in open(MODEL_GIN).read()          # the vocabulary comes from code


# ------------------------------------------------------- T5X's own train.py / eval.py / infer.py
# A tiny CoDA r = 3 model converted from a random dense one, on the offline Shakespeare play
# task (a synthetic corpus: no downloads), driven by `python -m t5x.train / eval / infer` with
# the packaged gin files. k anneals over 6 steps (r = 3, n = 64, half the steps, 3 stages): 64, 64,
# 43, 22, 22, 22.
STEPS, STOP = 6, 3
K_FLAGS = ["--gin.K_SCHEDULE_STEPS=6", "--gin.K_ANNEAL_FRACTION=0.5", "--gin.K_ANNEAL_STAGES=3"]
TINY = dict(vocab_size=8192, d_model=32, num_heads=4, num_kv_heads=4, head_dim=8, d_ff=64,
            num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
            relative_attention_max_distance=32)


def _t5x_command(script, run_file, *flags):
    """T5X's script with `coda train`'s tiny model + CoDA variant, a t5x/runs file and the
    offline overlay."""
    gin = ["models/tiny.gin", "variants/coda_k_to_all.gin", run_file, "t5x/tiny_offline.gin"]
    return [sys.executable, "-m", f"t5x.{script}", f"--gin_search_paths={GIN_DIR}",
            *[f"--gin_file={g}" for g in gin], *flags]


def _start(cmd, env, log):
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def _wait(proc, log, what):
    assert proc.wait(timeout=900) == 0, f"{what} failed:\n" + open(log).read()[-6000:]


def _train_flags(model_dir, steps, init):
    return [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
            f"--gin.INITIAL_CHECKPOINT_PATH='{init}'", *K_FLAGS,
            "--gin.utils.SaveCheckpointConfig.period=3", "--gin.train.gc_period=1",
            "--gin.train.train_eval_dataset_cfg=None", "--gin.train.infer_eval_dataset_cfg=None",
            "--gin.utils.create_learning_rate_scheduler.warmup_steps=0",
            "--gin.utils.create_learning_rate_scheduler.base_learning_rate=0.01"]


def _train_metrics(log):
    """{step: {metric: value}} from T5X's per-epoch (here per-step) train summaries."""
    out = {}
    for step, fields in re.findall(r"\] \[(\d+)\] collection=train (accuracy=.*)", open(log).read()):
        out[int(step)] = {k: float(v) for k, v in re.findall(r"([\w/]+)=([-0-9.e+]+)", fields)}
    return out


# Under pytest-xdist (scripts/test.sh: --dist loadgroup) the tests sharing the module-scoped run
# go to one worker. The run (convert, train | train to STOP and resume, eval, infer: ~3-5 min on
# 2 cores) is --slow: in the default suite, tests/test_t5x_paper.py's RTE run keeps one T5X
# train + t5x.eval path.
def T5X_RUN_GROUP(test):
    return pytest.mark.slow(pytest.mark.xdist_group("t5x_run")(test))


@pytest.fixture(scope="module")
def t5x_run(tmp_path_factory):
    """Runs once: convert, train uninterrupted | train to STOP then resume, eval and infer."""
    _require_t5x()
    import flax.linen as nn

    from corpus_helpers import prepared_corpus

    from coda_flax.checkpoints.convert import dense_to_coda
    from coda_flax.checkpoints.native import save_checkpoint
    from coda_flax.cli.t5x import main as to_t5x

    t0 = time.time()
    root = tmp_path_factory.mktemp("t5x_run")
    prepared_corpus(root, vocab_size=300)
    dense = ModelConfig(**TINY)
    tokens = jnp.ones((1, 8), jnp.int32)
    params = nn.meta.unbox(EncoderDecoder(dense).init(jax.random.PRNGKey(0), tokens,
                                                      tokens[:, :4])["params"])
    coda = CodaConfig(reduction=3, adapter_dim=8)
    params = dense_to_coda(params, coda, 1, model_config=dense)
    save_checkpoint(str(root / "coda"), params, dense.replace(coda=coda))
    assert to_t5x([str(root / "coda"), str(root / "coda_t5x")]) == 0
    init = str(root / "coda_t5x" / "checkpoint_0")

    # One persistent compilation cache: a later process reuses what an earlier one compiled.
    env = {**os.environ, "CODA_DATA_DIR": str(root), "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env.pop("CODA_VOCAB", None)
    logs = {k: str(root / f"{k}.log") for k in ("full", "stop", "resume", "eval", "infer")}
    full, stopped = str(root / "full"), str(root / "stopped")

    def train(model_dir, steps, log):
        return _start(_t5x_command("train", "t5x/runs/finetune.gin",
                                   *_train_flags(model_dir, steps, init)), env, log)

    # Two phases of two or three processes each (the machine has few cores):
    # 1. the uninterrupted run | the run stopped at STOP;
    # 2. the resumed run | t5x.eval and t5x.infer on the uninterrupted run's final checkpoint
    #    (whose parameters the resumed run must reproduce: checked below).
    phase = [(train(full, STEPS, logs["full"]), logs["full"], "uninterrupted run"),
             (train(stopped, STOP, logs["stop"]), logs["stop"], "stopped run")]
    for proc, log, what in phase:
        _wait(proc, log, what)
    assert os.path.isdir(os.path.join(stopped, f"checkpoint_{STOP}"))
    assert not os.path.exists(os.path.join(stopped, f"checkpoint_{STEPS}"))
    checkpoint = os.path.join(full, f"checkpoint_{STEPS}")
    split = ["--gin.utils.DatasetConfig.split='validation'",
             "--gin.utils.DatasetConfig.batch_size=8"]
    phase = [(train(stopped, STEPS, logs["resume"]), logs["resume"], "resumed run"),
             (_start(_t5x_command("eval", "t5x/runs/eval.gin", f"--gin.CHECKPOINT_PATH='{checkpoint}'",
                                  f"--gin.EVAL_OUTPUT_DIR='{root / 'eval'}'", *split),
                     env, logs["eval"]), logs["eval"], "t5x.eval"),
             (_start(_t5x_command("infer", "t5x/runs/infer.gin", f"--gin.CHECKPOINT_PATH='{checkpoint}'",
                                  f"--gin.INFER_OUTPUT_DIR='{root / 'infer'}'", *split),
                     env, logs["infer"]), logs["infer"], "t5x.infer")]
    for proc, log, what in phase:
        _wait(proc, log, what)
    print(f"t5x_run: {time.time() - t0:.0f}s")
    return dict(root=root, logs=logs, full=full, stopped=stopped, params=params,
                config=dense.replace(coda=coda))


def _checkpoint_params(path):
    from coda_flax.checkpoints.t5x import read_t5x
    from coda_flax.checkpoints.tree import flatten_params

    return {k: np.asarray(v) for k, v in flatten_params(read_t5x(path)).items()}


@T5X_RUN_GROUP
def test_t5x_train_resumes_with_the_losses_of_an_uninterrupted_run(t5x_run):
    logs = t5x_run["logs"]
    full, stop, resume = (_train_metrics(logs[k]) for k in ("full", "stop", "resume"))
    assert sorted(full) == list(range(1, STEPS + 1)), full.keys()
    assert sorted(stop) == list(range(1, STOP + 1))
    assert sorted(resume) == list(range(STOP + 1, STEPS + 1))
    assert "Starting main loop over steps 3-6" in open(logs["resume"]).read()
    # coda_t5x.Adafactor names the heuristic rule itself: no "factor rule ... is ignored".
    assert "is ignored" not in open(logs["full"]).read()
    for step in range(1, STEPS + 1):
        got = (stop if step <= STOP else resume)[step]
        for name in ("loss", "cross_ent_loss", "coda/k"):
            np.testing.assert_allclose(got[name], full[step][name], rtol=1e-6,
                                       err_msg=f"{name} at step {step}")
    losses = [full[s]["loss"] for s in range(1, STEPS + 1)]
    assert len(set(losses)) > 1                               # it trains: the loss moves
    # The parameters the two runs end with are the same.
    a = _checkpoint_params(os.path.join(t5x_run["full"], f"checkpoint_{STEPS}"))
    b = _checkpoint_params(os.path.join(t5x_run["stopped"], f"checkpoint_{STEPS}"))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


@T5X_RUN_GROUP
def test_t5x_train_anneals_k_in_stages(t5x_run):
    from coda_flax import CodaConfig
    from coda_flax.kplan import KPlan

    plan = KPlan.for_run(CodaConfig(reduction=3), 64, STEPS, 0.5, 3)
    assert [s.k for s in plan.stages] == [64, 43, 22]
    full = _train_metrics(t5x_run["logs"]["full"])
    # The summary of step s covers train step s - 1 (T5X's step counter is the one after it).
    assert [full[s]["coda/k"] for s in range(1, STEPS + 1)] == \
        [plan.k_at(s - 1) for s in range(1, STEPS + 1)] == [64, 64, 43, 22, 22, 22]


@T5X_RUN_GROUP
def test_t5x_train_keeps_the_backbone_bit_identical(t5x_run):
    from coda_flax.checkpoints.tree import flatten_params

    start = {k: np.asarray(v) for k, v in flatten_params(t5x_run["params"]).items()}
    end = _checkpoint_params(os.path.join(t5x_run["stopped"], f"checkpoint_{STEPS}"))
    assert sorted(start) == sorted(end)
    moved = {k for k in start if not np.array_equal(start[k], end[k])}
    trainable = {k for k in start if param_group(k) != "backbone"}
    assert moved <= trainable
    assert {k for k in moved if "router" in k} and {k for k in moved if "adapter/up" in k}


@T5X_RUN_GROUP
def test_t5x_eval_and_infer_write_predictions(t5x_run):
    """On the final checkpoint (the uninterrupted run's: the resumed run ends with the same
    parameters, test_t5x_train_resumes_with_the_losses_of_an_uninterrupted_run)."""
    import glob
    import json

    root = t5x_run["root"]
    metrics = root / "eval" / "inference_eval" / "coda_shakespeare_play-metrics.jsonl"
    assert metrics.exists(), os.listdir(root / "eval")
    records = [json.loads(line) for line in open(metrics)]
    assert [r["step"] for r in records] == [STEPS]
    assert 0.0 <= records[0]["accuracy"] <= 100.0
    preds = glob.glob(str(root / "infer" / "coda_shakespeare_play-*.jsonl*"))
    assert preds, os.listdir(root / "infer")
    rows = [json.loads(line) for line in open(preds[0])]
    assert len(rows) == _validation_size(root) and all("prediction" in r for r in rows)
    assert {r["inputs"].split(":")[0] for r in rows if isinstance(r["inputs"], str)} <= \
        {"shakespeare play"}


def _validation_size(root):
    import json

    from coda_flax.datasets.shakespeare import corpus_dir
    path = os.path.join(corpus_dir(str(root)), "play_passages.jsonl")
    return sum(json.loads(line).get("split") == "validation" for line in open(path))


def _glob_match(path, pattern):
    """setuptools' package_data glob: '*' stays within one folder (fnmatch's crosses '/')."""
    import fnmatch
    parts, globs = path.split("/"), pattern.split("/")
    return len(parts) == len(globs) and all(map(fnmatch.fnmatch, parts, globs))
