"""Checkpoint import / export (issue 3): Hugging Face T5, T5X, dense -> CoDA, adapter files.

Every checkpoint here is written by the test itself from a randomly initialised tiny model;
nothing is downloaded. The Hugging Face tests compare logits and greedy decodes against the
PyTorch model of `transformers`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from coda_flax import CodaConfig, EncoderDecoder, ModelConfig, tiny_config
from coda_flax.checkpoints import (config_from_dict, config_to_dict, dense_to_coda,
                                   expected_shapes, flatten_params, format_parameter_summary,
                                   infer_t5x_config, load_adapters, load_checkpoint, load_hf_t5,
                                   load_t5x, param_group, parameter_summary,
                                   print_trainable_parameters, save_adapters, trainable_mask,
                                   unflatten_params)
from coda_flax.cli.convert import add_convert_parser

try:
    import torch
    import transformers
except ImportError:          # the [hf] extra is not installed: only the HF tests skip
    torch = transformers = None
requires_hf = pytest.mark.skipif(transformers is None, reason="needs torch + transformers")

# Three tiny T5s: v1.0 (relu, tied + rescaled head), v1.1 / FLAN (gated-gelu, untied head),
# and an asymmetric one (3 encoder / 2 decoder layers, heads * d_kv != d_model) whose head is
# the embedding without rescaling (what transformers 5 writes for tie_word_embeddings=False
# when lm_head equals the embedding: no lm_head.weight, scale_decoder_outputs=false).
HF_CONFIGS = {
    "v1_0": dict(vocab_size=48, d_model=24, d_kv=6, num_heads=4, d_ff=40, num_layers=2,
                 feed_forward_proj="relu", tie_word_embeddings=True,
                 relative_attention_num_buckets=8, relative_attention_max_distance=10),
    "v1_1": dict(vocab_size=56, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                 relative_attention_num_buckets=32, relative_attention_max_distance=20),
    "multi": dict(vocab_size=40, d_model=20, d_kv=5, num_heads=3, d_ff=36, num_layers=3,
                  num_decoder_layers=2, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, relative_attention_num_buckets=16,
                  relative_attention_max_distance=12),
}
ENC_LEN, DEC_LEN = 24, 14           # both longer than every max_distance above


def make_hf_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                dropout_rate=0.0, **HF_CONFIGS[name])
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if name == "v1_1":
        # FLAN-T5 layout: an lm_head of its own (transformers 5 ties it unless it differs).
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """name -> (torch model, save_pretrained directory)."""
    out = {}
    for name in HF_CONFIGS:
        model = make_hf_model(name)
        d = str(tmp_path_factory.mktemp(f"hf_{name}"))
        model.save_pretrained(d)
        out[name] = (model, d)
    return out


def padded_batch(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, vocab, size=(3, ENC_LEN))
    enc[0, 17:] = 0                           # padding (pad id 0)
    enc[2, 9:] = 0
    dec = rng.integers(2, vocab, size=(3, DEC_LEN))
    dec[:, 0] = 0                             # decoder_start_token_id
    return enc, dec


def torch_logits(model, enc, dec):
    with torch.no_grad():
        return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                     decoder_input_ids=torch.tensor(dec)).logits.numpy()


@functools.lru_cache(maxsize=None)
def _jitted_apply(config, mutable=False):
    def apply(p, e, d):
        return EncoderDecoder(config).apply({"params": p}, e, d,
                                            mutable=["intermediates"] if mutable else False)
    return jax.jit(apply)


def jax_logits(config, params, enc, dec):
    return np.asarray(_jitted_apply(config)(params, jnp.asarray(enc), jnp.asarray(dec)))


def random_params(config, seed=0):
    """Random float32 numpy params of the right shapes (no jitted init: threefry compiles
    slowly on CPU). Norm scales near 1, kernels ~ 1/sqrt(fan_in)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for k, shape in expected_shapes(config).items():
        if k.endswith("scale"):
            flat[k] = 1.0 + 0.1 * rng.standard_normal(shape)
        elif "embedding" in k:
            flat[k] = rng.standard_normal(shape)
        else:
            fan_in = shape[0] if "out/" not in k else shape[0] * shape[1]
            flat[k] = rng.standard_normal(shape) / np.sqrt(fan_in)
    return unflatten_params({k: v.astype(np.float32) for k, v in flat.items()})


def abstract_params(config):
    """The boxed (logically partitioned) parameter tree of init, as shapes only."""
    tokens = jnp.ones((1, 6), jnp.int32)
    return jax.eval_shape(lambda: EncoderDecoder(config).init(
        jax.random.PRNGKey(0), tokens, tokens))["params"]


def greedy_decode(config, params, enc, max_new_tokens, eos_id=1):
    """Greedy decoding by teacher-forced re-decoding of the prefix (no cache), T5 style:
    starts from token 0 and pads finished rows with 0, like HF generate."""
    model = EncoderDecoder(config)
    enc = jnp.asarray(enc)
    encoded = jax.jit(lambda p, e: model.apply({"params": p}, e, method="encode"))(params, enc)
    decode = jax.jit(lambda p, e, d: model.apply({"params": p}, e, enc, d, method="decode"))
    out = np.zeros((enc.shape[0], max_new_tokens + 1), np.int64)   # fixed shape: one compile
    done = np.zeros(enc.shape[0], bool)
    for t in range(max_new_tokens):
        nxt = np.argmax(np.asarray(decode(params, encoded, jnp.asarray(out))[:, t]), -1)
        out[:, t + 1] = np.where(done, 0, nxt)
        done |= out[:, t + 1] == eos_id
        if done.all():
            return out[:, :t + 2]
    return out


def assert_trees_equal(a, b):
    fa, fb = flatten_params(a), flatten_params(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


# ------------------------------------------------------------------------- Hugging Face

@requires_hf
@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_hf_logits_match_pytorch(hf_dirs, name):
    model, d = hf_dirs[name]
    config, params = load_hf_t5(d)
    hf = HF_CONFIGS[name]
    assert config.num_encoder_layers == hf["num_layers"]
    assert config.num_decoder_layers == hf.get("num_decoder_layers", hf["num_layers"])
    assert config.num_kv_heads == config.num_heads == hf["num_heads"]
    assert config.logits_via_embedding == (name == "v1_0")
    assert config.mlp_activations == (("relu",) if name == "v1_0" else ("gelu", "linear"))
    assert ("logits_dense" in params["decoder"]) == (name != "v1_0")
    assert params["encoder"]["relpos_bias"]["rel_embedding"].shape == (
        hf["num_heads"], hf["relative_attention_num_buckets"])
    enc, dec = padded_batch(hf["vocab_size"])
    ref = torch_logits(model, enc, dec)
    ours = jax_logits(config, params, enc, dec)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()


@requires_hf
@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_hf_greedy_decode_matches_generate(hf_dirs, name):
    model, d = hf_dirs[name]
    config, params = load_hf_t5(d)
    enc, _ = padded_batch(HF_CONFIGS[name]["vocab_size"], seed=1)
    steps = 8
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                             do_sample=False, num_beams=1, max_new_tokens=steps).numpy()
    ours = greedy_decode(config, params, enc, steps)
    np.testing.assert_array_equal(ours, ref)


@requires_hf
def test_hf_sharded_and_pytorch_bin_load_the_same_params(hf_dirs, tmp_path, monkeypatch):
    model, d = hf_dirs["v1_1"]
    _, params = load_hf_t5(d)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    assert_trees_equal(load_hf_t5(str(sharded))[1], params)
    # transformers 5 always writes safetensors; write the legacy pickle by hand (it holds
    # the tied encoder/decoder embed_tokens copies too).
    pt = tmp_path / "pt"
    pt.mkdir()
    shutil.copy(os.path.join(d, "config.json"), pt / "config.json")
    torch.save(model.state_dict(), pt / "pytorch_model.bin")
    assert_trees_equal(load_hf_t5(str(pt))[1], params)
    monkeypatch.setitem(sys.modules, "torch", None)           # as if torch were not installed
    with pytest.raises(ImportError, match="needs torch"):
        load_hf_t5(str(pt))


def _edited_copy(src, dst, edit_tensors=None, edit_config=None):
    from safetensors.numpy import load_file, save_file

    os.makedirs(dst)
    cfg = json.load(open(os.path.join(src, "config.json")))
    if edit_config:
        edit_config(cfg)
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    tensors = load_file(os.path.join(src, "model.safetensors"))
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    return dst


@requires_hf
def test_hf_errors_name_the_problem(hf_dirs, tmp_path):
    _, d = hf_dirs["v1_1"]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_hf_t5(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_t5(str(tmp_path / "empty"))
    shutil.copy(os.path.join(d, "config.json"), tmp_path / "empty" / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_t5(str(tmp_path / "empty"))

    extra = "encoder.block.0.layer.0.SelfAttention.extra.weight"
    bad = _edited_copy(d, str(tmp_path / "unknown"),
                       lambda t: t.__setitem__(extra, np.zeros((2, 2), np.float32)))
    with pytest.raises(ValueError, match=f"unexpected tensor '{extra}'"):
        load_hf_t5(bad)

    gone = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    bad = _edited_copy(d, str(tmp_path / "missing"), lambda t: t.pop(gone))
    with pytest.raises(ValueError, match=rf"missing tensor '{gone}' \(expected shape \(32, 48\)"):
        load_hf_t5(bad)

    bad = _edited_copy(d, str(tmp_path / "shape"), edit_config=lambda c: c.update(d_ff=50))
    with pytest.raises(ValueError, match=r"has shape \(48, 32\), expected \(50, 32\)"):
        load_hf_t5(bad)


@requires_hf
def test_relative_position_buckets_match_hf():
    """Our bucket function (with T5X's eps inside the log) against HF's, long distances."""
    from transformers.models.t5.modeling_t5 import T5Attention

    from coda_flax.layers import relative_position_bucket

    rel = np.arange(-300, 301)
    for buckets, max_distance in ((8, 10), (16, 12), (32, 20), (32, 128)):
        for bidirectional in (True, False):
            ours = np.asarray(relative_position_bucket(jnp.asarray(rel), bidirectional,
                                                       buckets, max_distance))
            ref = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional,
                                                        buckets, max_distance).numpy()
            np.testing.assert_array_equal(ours, ref)


# ------------------------------------------------------------------------ dense -> CoDA

@requires_hf
def test_dense_to_coda_starts_at_the_dense_function(hf_dirs):
    _, d = hf_dirs["v1_1"]
    config, params = load_hf_t5(d)
    enc, dec = padded_batch(config.vocab_size)
    dense = jax_logits(config, params, enc, dec)

    coda = CodaConfig(reduction=1, adapter_dim=4)
    converted = dense_to_coda(params, coda, jax.random.PRNGKey(0), model_config=config)
    flat, base = flatten_params(converted), flatten_params(params)
    assert all(flat[k] is base[k] for k in base)                    # backbone reused as is
    assert not np.any(flat["encoder/layers_0/adapter/up/kernel"])   # zero up-projection
    np.testing.assert_array_equal(jax_logits(config.replace(coda=coda), converted, enc, dec),
                                  dense)

    coda3 = CodaConfig(reduction=3, adapter_dim=4)
    converted3 = dense_to_coda(params, coda3, 0)                    # config inferred
    cfg3 = config.replace(coda=coda3)
    logits, state = _jitted_apply(cfg3, mutable=True)(converted3, jnp.asarray(enc),
                                                       jnp.asarray(dec))
    assert np.isfinite(np.asarray(logits)).all()
    k = int(np.ceil(ENC_LEN / 3))
    inter = state["intermediates"]["encoder"]
    for i in range(config.num_encoder_layers):
        (idx,) = inter[f"layers_{i}"]["router_indices"]
        assert idx.shape == (enc.shape[0], k)
        assert (np.diff(np.asarray(idx), axis=-1) > 0).all()        # sorted, distinct
    assert "router" in converted3["encoder"]["layers_0"]


def test_expected_shapes_include_lazily_built_routers():
    for coda in (CodaConfig(reduction=1.2), CodaConfig(reduction=1, num_routed=5)):
        assert "encoder/layers_1/router/kernel" in expected_shapes(tiny_config(coda))
    assert not any("router" in k for k in expected_shapes(tiny_config(CodaConfig(reduction=1))))


def test_dense_to_coda_rejects_mismatched_params():
    config = tiny_config()
    params = random_params(config)
    flat = flatten_params(params)
    flat["encoder/layers_0/mlp/wo/kernel"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"'encoder/layers_0/mlp/wo/kernel' has shape \(3, 3\)"):
        dense_to_coda(unflatten_params(flat), CodaConfig(), 0, model_config=config)


# --------------------------------------------------------------------------------- PEFT

def test_param_groups_and_trainable_mask(capsys):
    assert param_group("encoder/layers_0/adapter/up/kernel") == "adapters"
    assert param_group(("encoder", "layers_1", "router", "kernel")) == "routers"
    assert param_group("decoder/layers_0/pre_mlp_layer_norm/scale") == "layer_norms"
    assert param_group("encoder/encoder_norm/scale") == "layer_norms"
    assert param_group("encoder/layers_0/attention/query/lora_b") == "lora"
    assert param_group("encoder/layers_0/attention/query/kernel") == "backbone"
    assert param_group("token_embedder/embedding") == "backbone"

    config = tiny_config(CodaConfig(reduction=3, adapter_dim=4, lora_rank=2))
    params = abstract_params(config)                 # boxed: the mask must see through boxes
    flat_mask = flatten_params(trainable_mask(params))
    for k, trained in flat_mask.items():
        assert trained == (param_group(k) != "backbone"), k
    assert all(flatten_params(trainable_mask(params, "all")).values())
    with pytest.raises(ValueError, match="unknown mode 'frozen'"):
        trainable_mask(params, "frozen")

    s = parameter_summary(params)
    sizes = {k: int(np.prod(v.shape)) for k, v in flatten_params(params).items()}
    assert s["total"] == sum(sizes.values())
    assert s["trainable"] == sum(n for k, n in sizes.items() if param_group(k) != "backbone")
    assert s["groups"]["routers"]["params"] == 2 * config.d_model
    assert s["groups"]["backbone"]["trainable"] == 0
    assert 0 < s["trainable_percent"] < 100
    assert parameter_summary(params, trainable_mask(params, "all"))["trainable_percent"] == 100
    text = format_parameter_summary(s)
    assert "trainable params:" in text and "adapters" in text and "lora" in text
    assert print_trainable_parameters(params) == s
    assert f"trainable params: {s['trainable']:,} || all params: {s['total']:,}" in \
        capsys.readouterr().out


# ------------------------------------------------------------------------ adapter files

ADAPTER_MODEL = dict(vocab_size=256, d_model=32, num_heads=4, num_kv_heads=4, head_dim=8,
                     d_ff=64, num_encoder_layers=2, num_decoder_layers=2,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16)


def _dense_params(config, seed=0):
    return random_params(config, seed)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A dense base, a 'finetuned' CoDA model on it, and its adapter directory."""
    dense_cfg = ModelConfig(**ADAPTER_MODEL)
    base = _dense_params(dense_cfg)
    coda = CodaConfig(reduction=2, adapter_dim=4)
    config = dense_cfg.replace(coda=coda)
    params = flatten_params(dense_to_coda(base, coda, 1, model_config=dense_cfg))
    rng = np.random.default_rng(0)
    for k, v in params.items():            # simulate finetuning of the trainable groups
        if param_group(k) != "backbone":
            params[k] = np.asarray(v) + rng.normal(0, 0.1, np.shape(v)).astype(np.float32)
    params = unflatten_params(params)
    d = str(tmp_path_factory.mktemp("adapters"))
    info = save_adapters(d, params, config)
    return dict(base=base, config=config, params=params, dir=d, info=info)


def test_adapters_roundtrip_reproduces_finetuned_logits(finetuned):
    config, d = finetuned["config"], finetuned["dir"]
    assert sorted(os.listdir(d)) == ["adapter_config.json", "model-adapters.safetensors"]
    full_bytes = sum(np.asarray(v).nbytes for v in flatten_params(finetuned["params"]).values())
    assert finetuned["info"]["bytes"] < full_bytes / 5
    enc, dec = padded_batch(config.vocab_size)
    want = jax_logits(config, finetuned["params"], enc, dec)
    fresh = jax.tree_util.tree_map(np.copy, finetuned["base"])      # a fresh dense base
    merged = load_adapters(d, fresh)
    np.testing.assert_array_equal(jax_logits(config, merged, enc, dec), want)
    merged = load_adapters(d, finetuned["params"], config=config)    # onto a CoDA base
    np.testing.assert_array_equal(jax_logits(config, merged, enc, dec), want)


def test_adapters_refuse_a_different_base_or_config(finetuned):
    d, config = finetuned["dir"], finetuned["config"]
    other = _dense_params(ModelConfig(**dict(ADAPTER_MODEL, d_model=48)))
    with pytest.raises(ValueError, match=r"base parameter '.*' has shape \(.*48.*\), the "
                                         r"adapters .* expect \(.*32.*\)"):
        load_adapters(d, other)
    wide = config.with_coda(adapter_dim=8)
    with pytest.raises(ValueError, match=r"'(en|de)coder/layers_0/adapter/down/kernel' has shape "
                                         r"\(32, 4\), the model expects \(32, 8\)"):
        load_adapters(d, finetuned["base"], config=wide)
    with pytest.raises(ValueError, match=r"saved for d_ff=64, the config passed has d_ff=96"):
        load_adapters(d, finetuned["base"], config=config.replace(d_ff=96))


@pytest.mark.parametrize("damage", ["truncate", "header", "data"])
def test_adapters_refuse_damaged_files(finetuned, tmp_path, damage):
    d = str(tmp_path / "copy")
    shutil.copytree(finetuned["dir"], d)
    file = os.path.join(d, "model-adapters.safetensors")
    raw = bytearray(open(file, "rb").read())
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    elif damage == "header":
        raw[8:24] = b"\xff" * 16                 # inside the JSON header
    else:
        raw[-40:-8] = b"\x7f" * 32               # tensor bytes: only the checksum notices
    open(file, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match="corrupt or truncated.*re-save"):
        load_adapters(d, finetuned["base"])


def _edit_json(file, edit):
    meta = json.load(open(file))
    edit(meta)
    json.dump(meta, open(file, "w"))


@pytest.mark.parametrize("field,value", [("relative_attention_max_distance", 32),
                                         ("layer_norm_epsilon", 1e-5),
                                         ("coda.num_iters", 3)])
def test_adapters_refuse_an_edited_config_that_changes_no_shape(finetuned, tmp_path, field,
                                                               value):
    d = str(tmp_path / "copy")
    shutil.copytree(finetuned["dir"], d)
    *path, name = ["model_config", *field.split(".")]

    def edit(meta):
        node = meta
        for p in path:
            node = node[p]
        node[name] = value
    _edit_json(os.path.join(d, "adapter_config.json"), edit)
    with pytest.raises(ValueError, match=rf"model_config differs .*\b{field}=.* vs {value!r}"):
        load_adapters(d, finetuned["base"])
    cfg = finetuned["config"]
    if "." in field:        # passing another CodaConfig is allowed (e.g. another r): a warning
        with pytest.warns(UserWarning, match=rf"trained with CodaConfig .*'{name}'"):
            load_adapters(finetuned["dir"], finetuned["base"], config=cfg.with_coda(
                **{name: value}))
    else:                   # another backbone passed in: an error
        with pytest.raises(ValueError, match=rf"saved for {name}=.*has {name}={value!r}"):
            load_adapters(finetuned["dir"], finetuned["base"], config=cfg.replace(
                **{name: value}))


def test_adapters_fingerprint_covers_every_function_field_but_dtype_and_dropout(finetuned):
    from coda_flax.checkpoints.adapters import config_fingerprint
    config = finetuned["config"]
    fields = config_fingerprint(config)["config"]
    import dataclasses
    assert set(fields) == {f.name for f in dataclasses.fields(ModelConfig)} - {
        "dtype", "dropout_rate"}
    assert set(fields["coda"]) == {f.name for f in dataclasses.fields(CodaConfig)}
    assert (config_fingerprint(config.replace(dtype="bfloat16"))["config_sha256"] ==
            config_fingerprint(config)["config_sha256"] !=
            config_fingerprint(config.replace(layer_norm_epsilon=1e-5))["config_sha256"])


def test_adapters_hash_is_required_and_non_finite_values_are_refused(finetuned, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(finetuned["dir"], d)
    _edit_json(os.path.join(d, "adapter_config.json"), lambda m: m.pop("sha256"))
    with pytest.raises(ValueError, match="records no sha256"):
        load_adapters(d, finetuned["base"])
    flat = flatten_params(finetuned["params"])
    key = next(k for k in sorted(flat) if "adapter" in k)
    nan = unflatten_params(dict(flat, **{key: np.full(np.shape(flat[key]), np.nan, np.float32)}))
    with pytest.raises(ValueError, match=rf"refusing to save: parameter '{key}' has \d+ "
                                         r"non-finite"):
        save_adapters(str(tmp_path / "nan"), nan, finetuned["config"])
    # a NaN file with a matching hash (written by an older version, or by hand)
    from safetensors.numpy import load_file, save_file
    from coda_flax.checksums import sha256_file
    weights = os.path.join(d, "model-adapters.safetensors")
    tensors = load_file(weights)
    tensors[key] = np.full(tensors[key].shape, np.inf, np.float32)
    save_file(tensors, weights)
    _edit_json(os.path.join(d, "adapter_config.json"),
               lambda m: m.update(sha256=sha256_file(weights)))
    with pytest.raises(ValueError, match=rf"parameter '{key}' has \d+ non-finite"):
        load_adapters(d, finetuned["base"])


def test_a_damaged_checkpoint_is_one_clear_error(finetuned, tmp_path):
    from coda_flax.checkpoints import save_checkpoint
    d = str(tmp_path / "ckpt")
    save_checkpoint(d, finetuned["params"], finetuned["config"])
    os.remove(os.path.join(d, "params", "_METADATA"))
    with pytest.raises(ValueError, match=r"params: the orbax metadata \(_METADATA\) .* missing "
                                         r"or unreadable; the checkpoint is damaged"):
        load_checkpoint(d)


def test_adapters_missing_files(finetuned, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter directory"):
        load_adapters(str(tmp_path / "none"), finetuned["base"])
    d = str(tmp_path / "copy")
    shutil.copytree(finetuned["dir"], d)
    os.remove(os.path.join(d, "model-adapters.safetensors"))
    with pytest.raises(FileNotFoundError, match="model-adapters.safetensors"):
        load_adapters(d, finetuned["base"])
    os.remove(os.path.join(d, "adapter_config.json"))
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapters(d, finetuned["base"])


def test_config_json_roundtrip_and_unknown_fields():
    config = tiny_config(CodaConfig(reduction=2.5, lora_rank=2, lora_targets=("query", "wo")))
    d = json.loads(json.dumps(config_to_dict(config)))
    assert config_from_dict(d) == config
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['d_modle'\]"):
        config_from_dict(dict(d, d_modle=3))
    with pytest.raises(ValueError, match=r"CodaConfig: unknown field\(s\) \['ratio'\]"):
        config_from_dict(dict(d, coda=dict(d["coda"], ratio=2)))


# ---------------------------------------------------------------------------------- T5X

T5X_CONFIG = tiny_config(num_heads=4, num_kv_heads=2, head_dim=6, d_model=20)


def _t5x_2d(params):
    """Our params in T5X's stored layout: attention kernels flattened to 2D."""
    out = {}
    for k, v in flatten_params(params).items():
        v = np.asarray(v)
        if k.endswith(("query/kernel", "key/kernel", "value/kernel")):
            v = v.reshape(v.shape[0], -1)
        elif k.endswith("out/kernel"):
            v = v.reshape(-1, v.shape[-1])
        out[k] = v
    return out


def _write_zarr(path, array):
    import tensorstore as ts

    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": path},
            "metadata": {"shape": list(array.shape), "chunks": list(array.shape),
                         "dtype": "<f4", "compressor": {"id": "gzip"}}}
    ts.open(spec, create=True, open=True).result().write(array).result()


def write_t5x_legacy(directory, params, version=3, old_spec=False):
    """A T5X checkpoint_N: msgpack 'checkpoint' + zarr arrays for the 2D+ kernels."""
    os.makedirs(directory)
    target = {}
    for k, v in _t5x_2d(params).items():
        name = "target." + k.replace("/", ".")
        if v.ndim < 2 or "norm" in k:
            target[k] = v                                  # inline in the msgpack
            continue
        _write_zarr(os.path.join(directory, name), v)
        if old_spec:                                       # tensorstore < 0.1.14 form
            target[k] = {"driver": "zarr", "kvstore": {"driver": "file"}, "path": name,
                         "metadata": {"shape": list(v.shape)}}
        else:
            target[k] = {"driver": "zarr", "dtype": "float32",
                         "kvstore": {"driver": "file", "path": name},
                         "metadata": {"shape": list(v.shape), "chunks": list(v.shape),
                                      "compressor": {"id": "gzip"}}}
    # optimizer state that must never be opened: its zarr array does not exist
    missing = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket",
                                             "path": "state.param_states.x.v"},
               "metadata": {"shape": [4]}}
    optimizer = {"target": unflatten_params(target),
                 "state": {"step": np.int32(100), "param_states": {"x": {"v": missing}}}}
    contents = optimizer if version == 0 else {"version": version, "optimizer": optimizer}
    with open(os.path.join(directory, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(contents))


@pytest.fixture(scope="module")
def t5x_params():
    return _dense_params(T5X_CONFIG, seed=3)


@pytest.mark.parametrize("version,old_spec", [(3, False), (0, True)])
def test_t5x_legacy_reader(t5x_params, tmp_path, version, old_spec):
    d = str(tmp_path / "checkpoint_100")
    write_t5x_legacy(d, t5x_params, version, old_spec)
    assert os.path.isdir(os.path.join(d, "target.encoder.layers_0.attention.query.kernel"))
    assert_trees_equal(load_t5x(d, T5X_CONFIG), t5x_params)
    assert_trees_equal(load_t5x(os.path.join(d, "checkpoint"), T5X_CONFIG), t5x_params)
    inferred = infer_t5x_config(load_t5x(d, T5X_CONFIG))
    assert inferred == T5X_CONFIG.replace(relative_attention_max_distance=128)
    assert_trees_equal(load_t5x(d), t5x_params)            # config inferred from 2D shapes


def test_t5x_legacy_errors(t5x_params, tmp_path):
    d = str(tmp_path / "checkpoint_1")
    write_t5x_legacy(d, t5x_params)
    with pytest.raises(ValueError, match=r"(query|key)/kernel' has shape \(20, (24|12)\), "
                                         r"which cannot hold \(20, 6, 4\)"):
        load_t5x(d, T5X_CONFIG.replace(num_heads=6, head_dim=4, num_kv_heads=6))
    shutil.rmtree(os.path.join(d, "target.encoder.layers_1.mlp.wo.kernel"))
    with pytest.raises(FileNotFoundError, match="encoder/layers_1/mlp/wo/kernel is stored in"):
        load_t5x(d, T5X_CONFIG)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_t5x(str(tmp_path / "nope"))


def test_t5x_orbax_reader(t5x_params, tmp_path):
    import orbax.checkpoint as ocp

    d = str(tmp_path / "checkpoint_5")
    state = {"target": unflatten_params(_t5x_2d(t5x_params)),
             "state": {"step": np.int32(5), "param_states": {"v": np.ones(3, np.float32)}}}
    ckpt = ocp.PyTreeCheckpointer()
    ckpt.save(d, state)
    assert_trees_equal(load_t5x(d, T5X_CONFIG), t5x_params)
    assert_trees_equal(load_t5x(d), t5x_params)


# ------------------------------------------------------------------------- coda convert

def _convert(argv):
    parser = argparse.ArgumentParser(prog="coda")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *argv])
    return args.func(args)


@requires_hf
def test_coda_convert_end_to_end(hf_dirs, tmp_path, capsys):
    _, d = hf_dirs["multi"]
    config, params = load_hf_t5(d)
    enc, dec = padded_batch(config.vocab_size)
    want = jax_logits(config, params, enc, dec)

    out = str(tmp_path / "dense")
    assert _convert(["--hf", d, "--output", out]) == 0
    assert "trainable params:" in capsys.readouterr().out
    loaded_cfg, loaded = load_checkpoint(out)
    assert loaded_cfg == config
    np.testing.assert_array_equal(jax_logits(loaded_cfg, loaded, enc, dec), want)

    out = str(tmp_path / "coda")
    assert _convert(["--hf", d, "--output", out, "--reduction", "1", "--adapter-dim", "4",
                     "--attention", "k_to_k"]) == 0
    coda_cfg, coda_params = load_checkpoint(out)
    assert coda_cfg.coda == CodaConfig(reduction=1, adapter_dim=4, attention="k_to_k")
    np.testing.assert_array_equal(jax_logits(coda_cfg, coda_params, enc, dec), want)

    assert _convert(["--hf", d, "--output", out]) == 2              # refuses to overwrite
    assert "already exists" in capsys.readouterr().err


def test_coda_convert_t5x_with_preset_check(t5x_params, tmp_path, capsys):
    d = str(tmp_path / "checkpoint_7")
    write_t5x_legacy(d, t5x_params)
    assert _convert(["--t5x", d, "--output", str(tmp_path / "out")]) == 0
    config, params = load_checkpoint(str(tmp_path / "out"))
    assert_trees_equal(params, t5x_params)
    assert _convert(["--t5x", d, "--preset", "t5_1_1_small", "--output",
                     str(tmp_path / "bad")]) == 2
    assert "wrong config or preset?" in capsys.readouterr().err


def test_read_format_json_checks_the_header(tmp_path):
    from coda_flax.checkpoints.io import read_format_json, write_json

    path = str(tmp_path / "config.json")
    read = lambda: read_format_json(path, "coda_flax checkpoint config", "coda_flax", 1,
                                    fix="convert it again")
    write_json(path, {"format": "coda_flax", "format_version": 1, "model_config": {}})
    assert read()["format_version"] == 1
    write_json(path, {"format": "other", "model_config": {}})
    with pytest.raises(ValueError, match="is not a coda_flax checkpoint config.*convert it again"):
        read()
    write_json(path, {"format": "coda_flax", "format_version": 1})
    with pytest.raises(ValueError, match="needs format='coda_flax' and model_config"):
        read()
    write_json(path, {"format": "coda_flax", "format_version": 2, "model_config": {}})
    with pytest.raises(ValueError, match="newer coda_flax .*2 > 1"):
        read()
