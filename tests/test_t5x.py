"""coda_flax.t5x: CoDA inside T5X's own EncoderDecoderModel / train.py.

Without T5X: the module T5X drives is called exactly the way t5x/models.py calls it (init,
_compute_logits, encode, _compute_kv_cache, _compute_logits_from_slice) and must match
coda_flax.EncoderDecoder; the params_axes layout, the trainable-parameter filter, the rules
and the lazy import are checked too. With T5X installed (pytest.importorskip), the real
t5x.models.EncoderDecoderModel subclass trains, scores and decodes like CodaT5Model, the gin
file builds it, and save_t5x_checkpoint writes a checkpoint T5X reads back.
"""

import ast
import inspect
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning

from coda_flax import CodaConfig, EncoderDecoder, ModelConfig, tiny_config
from coda_flax.checkpoints.peft import param_group
from coda_flax.t5x import (AXIS_RULES, FACTOR_RULES, T5XEncoderDecoder, model_config,
                           param_filter, split_axes)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_GIN = os.path.join(ROOT, "gin", "t5x", "coda_model.gin")
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


def test_module_has_encoder_decoders_parameters(setup):
    config, _, variables, params = setup
    ref = EncoderDecoder(config).init(jax.random.PRNGKey(0), jnp.ones((B, N), jnp.int32),
                                      jnp.ones((B, L), jnp.int32))
    ours = traverse_util.flatten_dict(params)
    theirs = traverse_util.flatten_dict(nn.meta.unbox(ref["params"]))
    assert sorted(ours) == sorted(theirs)
    for k in ours:                                  # same initialisation, same names
        np.testing.assert_array_equal(ours[k], theirs[k])
    assert set(variables) == {"params"}             # nothing else for T5X's train state


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
    lora = tiny_config(CodaConfig(reduction=2, lora_rank=2, lora_targets=("all",)))
    tokens = jnp.ones((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: T5XEncoderDecoder(lora).init(
        jax.random.PRNGKey(0), tokens, tokens[:, :4]))
    names = {n for leaf in jax.tree_util.tree_leaves(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)) for n in leaf.names}
    t5x_standard = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}
    assert names - t5x_standard == set(FACTOR_RULES) == {n for n, _ in AXIS_RULES}
    # gin/t5x/coda_model.gin binds the same partitioning rules.
    text = open(MODEL_GIN).read()
    literal = re.search(r"additional_rules = (\[.*\])", text).group(1)
    assert tuple(map(tuple, ast.literal_eval(literal))) == AXIS_RULES


def test_model_config_for_gin():
    c = model_config(preset="paper_text_base", coda=CodaConfig(reduction=3), dropout_rate=0.1)
    assert c == ModelConfig.from_preset("paper_text_base", coda=CodaConfig(reduction=3),
                                        dropout_rate=0.1)
    assert c.num_kv_heads == 1 and c.coda.adapter_dim == 64
    assert model_config(**dict(vars(_config()))) == _config()


# ------------------------------------------------------------------ with T5X installed
@pytest.fixture(scope="module")
def t5x_model():
    pytest.importorskip("t5x", reason="T5X is not installed (not on PyPI)")
    import seqio
    from t5x import adafactor, decoding, optimizers

    from coda_flax.t5x import CodaEncoderDecoderModel, logical_factor_rules

    vocab = seqio.ByteVocabulary()                              # 259 ids, no files needed
    opt = optimizers.MultiOptimizer(((
        traverse_util.ModelParamTraversal(param_filter("finetune")),
        adafactor.Adafactor(decay_rate=0.8, logical_factor_rules=logical_factor_rules())),))
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

    override = tmp_path / "tiny.gin"
    override.write_text(
        "from __gin__ import dynamic_registration\n"
        "import seqio\nimport coda_flax.t5x as coda_t5x\n"
        f"include '{MODEL_GIN}'\n"
        "DROPOUT_RATE = 0.1\nVOCABULARY = @seqio.ByteVocabulary()\nPRESET = None\n"
        "coda_t5x.model_config:\n  vocab_size = 300\n  d_model = 16\n  num_heads = 2\n"
        "  num_kv_heads = 1\n  head_dim = 8\n  d_ff = 32\n  num_encoder_layers = 1\n"
        "  num_decoder_layers = 1\n")
    with gin.unlock_config():
        gin.clear_config()
        try:
            gin.parse_config_files_and_bindings([str(override)], [])
            model = gin.query_parameter("%MODEL").scoped_configurable_fn()
            rules = gin.query_parameter(
                "partitioning.standard_logical_axis_rules.additional_rules")
        finally:
            gin.clear_config()
    assert isinstance(model, CodaEncoderDecoderModel)
    assert model.config.coda == CodaConfig(reduction=3, attention="k_to_all",
                                           router="soft_topk")
    assert model.config.dropout_rate == 0.1 and model.config.dtype == "bfloat16"
    assert tuple(map(tuple, rules)) == AXIS_RULES


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
    pytest.importorskip("t5x", reason="T5X is not installed (keeps the default suite fast)")
    import importlib

    import seqio

    monkeypatch.delenv("CODA_VOCAB", raising=False)
    module = importlib.import_module("coda_flax.t5x.tasks")
    assert "coda_rte" in module.REGISTERED
    vocab = seqio.get_mixture_or_task("coda_rte").output_features["inputs"].vocabulary
    assert vocab.sentencepiece_model_file == module.T5_VOCAB
