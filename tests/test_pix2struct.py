"""Pix2Struct checkpoints -> coda_flax (issue 21): a tiny random Hugging Face
Pix2StructForConditionalGeneration (PyTorch) gives the same logits after conversion, the CoDA
model at r = 1 (zero adapters) matches it, every Pix2Struct / T5 difference that coda_flax cannot
represent is refused by name, and the original T5X layout, written with T5X's own Checkpointer,
round-trips to the same parameters."""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np
import pytest

from coda_flax import CodaConfig, EncoderDecoder
from coda_flax.checkpoints import dense_to_coda, flatten_params, load_checkpoint
from coda_flax.checkpoints.pix2struct import (hf_pix2struct_to_params, infer_pix2struct_config,
                                              is_pix2struct_hf, load_hf_pix2struct,
                                              load_t5x_pix2struct, pix2struct_model_config)
from coda_flax.cli.convert import add_convert_parser

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = dict(vocab_size=96, hidden_size=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=128,
            dropout_rate=0.0)
VISION = dict(hidden_size=32, patch_embed_hidden_size=12, d_ff=48, d_kv=8, num_hidden_layers=3,
              num_attention_heads=4, seq_len=16, dropout_rate=0.0)
PATCH_DIM = 2 + 12                                    # row id, column id, 2 x 2 x 3 pixels


def make_hf_model(text=None, vision=None, seed=0):
    """A random Pix2StructForConditionalGeneration with every weight (norm scales, the patch
    bias, the relative bias) drawn at random, so a mis-mapped tensor changes the logits."""
    config = transformers.Pix2StructConfig(text_config={**TEXT, **(text or {})},
                                           vision_config={**VISION, **(vision or {})})
    torch.manual_seed(seed)
    model = transformers.Pix2StructForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = make_hf_model()
    d = str(tmp_path_factory.mktemp("pix2struct") / "hf")
    model.save_pretrained(d)
    return model, d


def _batch():
    """Two images as Pix2Struct patches: a 3 x 4 grid, and a 2 x 3 grid padded with zero rows."""
    rng = np.random.RandomState(1)
    enc = np.zeros((2, 12, PATCH_DIM), np.float32)
    for b, (rows, cols) in enumerate(((3, 4), (2, 3))):
        ids = np.array([(r + 1, c + 1) for r in range(rows) for c in range(cols)], np.float32)
        enc[b, :len(ids), :2] = ids
        enc[b, :len(ids), 2:] = rng.randn(len(ids), PATCH_DIM - 2)
    dec = np.array([[0, 5, 9, 17, 3], [0, 44, 2, 8, 60]], np.int32)
    return enc, dec


def torch_logits(model, enc, dec):
    mask = torch.from_numpy((enc[..., 0] > 0).astype(np.float32))
    with torch.no_grad():
        out = model(flattened_patches=torch.from_numpy(enc), attention_mask=mask,
                    decoder_input_ids=torch.from_numpy(dec).long(),
                    decoder_attention_mask=torch.ones(dec.shape))
    return out.logits.numpy()


def jax_logits(config, params, enc, dec):
    return np.asarray(EncoderDecoder(config).apply({"params": params}, enc, dec))


def test_hf_pix2struct_logits_match_pytorch(hf_dir):
    model, d = hf_dir
    assert is_pix2struct_hf(d)
    config, params = load_hf_pix2struct(d)
    assert (config.encoder_input, config.encoder_relative_attention,
            config.patch_projection_bias) == ("patches", False, True)
    assert (config.patch_size, config.max_patch_positions, config.mlp_activations) == (
        2, 16, ("gelu", "linear"))
    assert (config.num_encoder_layers, config.num_decoder_layers, config.num_kv_heads) == (3, 2, 4)
    enc, dec = _batch()
    want = torch_logits(model, enc, dec)
    got = jax_logits(config, params, enc, dec)
    assert np.abs(want).max() > 1.0                       # logits far from trivially equal
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_coda_r1_with_zero_adapters_is_the_dense_pix2struct(hf_dir):
    model, d = hf_dir
    config, params = load_hf_pix2struct(d)
    enc, dec = _batch()
    dense = jax_logits(config, params, enc, dec)
    coda = CodaConfig(reduction=1, adapter_dim=4)
    coda_params = dense_to_coda(params, coda, 0, model_config=config)
    flat = flatten_params(coda_params)
    assert any("/adapter/up/" in k for k in flat)
    assert all(not np.any(np.asarray(v)) for k, v in flat.items() if "/adapter/up/" in k)
    np.testing.assert_array_equal(jax_logits(config.replace(coda=coda), coda_params, enc, dec),
                                  dense)
    np.testing.assert_allclose(dense, torch_logits(model, enc, dec), atol=1e-4, rtol=1e-4)


def test_pytorch_bin_and_tied_head_load(hf_dir, tmp_path):
    model, d = hf_dir
    _, params = load_hf_pix2struct(d)
    bin_dir = str(tmp_path / "bin")
    os.makedirs(bin_dir)
    torch.save(model.state_dict(), os.path.join(bin_dir, "pytorch_model.bin"))
    for name in ("config.json",):
        with open(os.path.join(d, name)) as src, open(os.path.join(bin_dir, name), "w") as dst:
            dst.write(src.read())
    _, from_bin = load_hf_pix2struct(bin_dir)
    for k, v in flatten_params(params).items():
        np.testing.assert_array_equal(flatten_params(from_bin)[k], v)
    # a tied head (no lm_head.weight) is the token embedding, copied, never rescaled
    tensors = {k: v.numpy() for k, v in model.state_dict().items() if k != "decoder.lm_head.weight"}
    hf = json.load(open(os.path.join(d, "config.json")))
    config = pix2struct_model_config(dict(hf, tie_word_embeddings=True), tied_head=True)
    tied = hf_pix2struct_to_params(tensors, config)
    np.testing.assert_array_equal(tied["decoder"]["logits_dense"]["kernel"],
                                  tensors["decoder.embed_tokens.weight"].T)
    with pytest.raises(ValueError, match="lm_head.weight is missing but tie_word_embeddings"):
        pix2struct_model_config(hf, tied_head=True)


@pytest.mark.parametrize("text,vision,match", [
    ({"d_ff": 64}, {}, r"decoder's d_ff \(64\) differs from the encoder's \(48\)"),
    ({"layer_norm_epsilon": 1e-5}, {}, r"layer norm epsilon \(1e-05\) differs"),
    ({}, {"num_attention_heads": 2, "d_kv": 16}, r"num_heads \(4\) differs"),
    ({"dense_act_fn": "relu"}, {}, r"dense_act_fn \('relu'\) differs"),
    ({"dense_act_fn": "selu"}, {"dense_act_fn": "selu"}, r"dense_act_fn 'selu' is not supported"),
    ({"d_kv": 4}, {"d_kv": 4}, r"num_heads \* d_kv = 4 \* 4 != hidden_size 32"),
    ({"decoder_start_token_id": 2}, {}, r"decoder_start_token_id=2; coda_flax decoders start"),
    ({}, {"patch_embed_hidden_size": 10}, r"patch_embed_hidden_size=10 is not patch_size\*\*2"),
])
def test_unrepresentable_differences_are_refused_by_name(text, vision, match):
    hf = {"model_type": "pix2struct", "text_config": {**TEXT, **text},
          "vision_config": {**VISION, **vision}}
    with pytest.raises(ValueError, match=match):
        pix2struct_model_config(hf)


def test_weights_that_do_not_fit_the_config_are_refused(hf_dir):
    model, d = hf_dir
    hf = json.load(open(os.path.join(d, "config.json")))
    config = pix2struct_model_config(hf)
    tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError,
                       match=r"missing tensor 'encoder.embeddings.patch_projection.bias'"):
        hf_pix2struct_to_params({k: v for k, v in tensors.items() if not k.endswith(".bias")},
                                config)
    with pytest.raises(ValueError, match=r"unexpected tensor 'encoder.encoder.layer.3.mlp"):
        hf_pix2struct_to_params({**tensors, "encoder.encoder.layer.3.mlp.wo.weight":
                                 tensors["encoder.encoder.layer.0.mlp.wo.weight"]}, config)
    with pytest.raises(ValueError, match="model_type 't5' is not 'pix2struct'"):
        pix2struct_model_config(dict(hf, model_type="t5"))


def _convert(argv):
    parser = argparse.ArgumentParser(prog="coda")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *argv])
    return args.func(args)


@pytest.mark.slow
def test_coda_convert_pix2struct_end_to_end(hf_dir, tmp_path):
    model, d = hf_dir
    enc, dec = _batch()
    want = torch_logits(model, enc, dec)
    out = str(tmp_path / "pix2struct_coda")
    assert _convert(["--hf", d, "--output", out, "--reduction", "1", "--adapter-dim", "4"]) == 0
    config, params = load_checkpoint(out)
    assert config.coda == CodaConfig(reduction=1, adapter_dim=4) and config.patch_projection_bias
    np.testing.assert_allclose(jax_logits(config, params, enc, dec), want, atol=1e-4, rtol=1e-4)
    out8 = str(tmp_path / "pix2struct_r8")               # r = 8 routes 2 of the 12 patches
    assert _convert(["--hf", d, "--output", out8, "--reduction", "8", "--adapter-dim", "4"]) == 0
    config8, params8 = load_checkpoint(out8)
    logits8 = jax_logits(config8, params8, enc, dec)
    assert np.isfinite(logits8).all() and not np.allclose(logits8, want, atol=1e-3)


# ------------------------------------------------------------------- original T5X layout

def hf_to_pix2struct_t5x(model) -> dict:
    """The HF model's weights in Pix2Struct's original T5X (flaxformer) tree: the inverse of
    transformers' convert_pix2struct_original_pytorch_to_hf.py, 2-D attention kernels."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    t = {"encoder/token_embedder/patch_projection/kernel":
         sd["encoder.embeddings.patch_projection.weight"].T,
         "encoder/token_embedder/patch_projection/bias":
         sd["encoder.embeddings.patch_projection.bias"],
         "encoder/token_embedder/embedders_0/pos_embedding":
         sd["encoder.embeddings.row_embedder.weight"],
         "encoder/token_embedder/embedders_1/pos_embedding":
         sd["encoder.embeddings.column_embedder.weight"],
         "encoder/encoder_norm/scale": sd["encoder.layernorm.weight"],
         "decoder/token_embedder/embedding": sd["decoder.embed_tokens.weight"],
         "decoder/relpos_bias/rel_embedding":
         sd["decoder.layer.0.self_attention.attention.relative_attention_bias.weight"].T,
         "decoder/decoder_norm/scale": sd["decoder.final_layer_norm.weight"],
         "decoder/logits_dense/kernel": sd["decoder.lm_head.weight"].T}
    proj = {"query": "query", "key": "key", "value": "value", "output": "out"}
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith("encoder.encoder.layer."):
            i, rest = parts[3], parts[4:]
            if rest[0] == "attention":
                t[f"encoder/layers_{i}/attention/{proj[rest[1]]}/kernel"] = v.T
            elif rest[0] == "mlp":
                t[f"encoder/layers_{i}/mlp/{rest[1]}/kernel"] = v.T
            else:
                t[f"encoder/layers_{i}/{rest[0]}/scale"] = v
        elif k.startswith("decoder.layer."):
            i, rest = parts[2], parts[3:]
            block = {"self_attention": "self_attention",
                     "encoder_decoder_attention": "encoder_decoder_attention",
                     "mlp": "mlp"}[rest[0]]
            norm = {"self_attention": "pre_self_attention_layer_norm",
                    "encoder_decoder_attention": "pre_cross_attention_layer_norm",
                    "mlp": "pre_mlp_layer_norm"}[rest[0]]
            if rest[1] == "layer_norm":
                t[f"decoder/layers_{i}/{norm}/scale"] = v
            elif rest[1] == "attention" and rest[2] in proj:
                t[f"decoder/layers_{i}/{block}/{proj[rest[2]]}/kernel"] = v.T
            elif rest[1] == "DenseReluDense":
                t[f"decoder/layers_{i}/mlp/{rest[2]}/kernel"] = v.T
    return {k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}


def write_with_t5x(params_flat: dict, directory: str, step: int = 250000) -> str:
    """A checkpoint_N written by T5X's own Checkpointer (as Pix2Struct's training wrote them)."""
    import flax.core
    from flax import traverse_util
    from flax.linen import partitioning as flax_partitioning
    from t5x import checkpoints, partitioning, train_state

    params = traverse_util.unflatten_dict({tuple(k.split("/")): v
                                           for k, v in params_flat.items()})
    axes = traverse_util.unflatten_dict({
        tuple(k.split("/")[:-1]) + (k.split("/")[-1] + "_axes",):
        flax_partitioning.AxisMetadata(names=(None,) * v.ndim) for k, v in params_flat.items()})
    state = train_state.InferenceState.create(
        flax.core.freeze({"params": params, "params_axes": axes}))
    state = state.replace_step(np.int32(step))
    os.makedirs(directory, exist_ok=True)
    checkpointer = checkpoints.Checkpointer(state, partitioning.PjitPartitioner(num_partitions=1),
                                            directory)
    checkpointer.save(state)
    return os.path.join(directory, f"checkpoint_{step}")


def test_t5x_layout_round_trip_gives_the_same_parameters(hf_dir, tmp_path):
    pytest.importorskip("t5x.checkpoints")
    model, d = hf_dir
    config, params = load_hf_pix2struct(d)
    ckpt = write_with_t5x(hf_to_pix2struct_t5x(model), str(tmp_path / "t5x"))
    assert os.path.isdir(os.path.join(ckpt,
                                      "target.encoder.token_embedder.patch_projection.kernel"))
    inferred, loaded = load_t5x_pix2struct(ckpt)
    assert inferred == config
    want, got = flatten_params(params), flatten_params(loaded)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert infer_pix2struct_config(hf_to_pix2struct_t5x(model)) == config


@pytest.mark.slow
def test_coda_convert_t5x_pix2struct(hf_dir, tmp_path):
    pytest.importorskip("t5x.checkpoints")
    model, d = hf_dir
    config, params = load_hf_pix2struct(d)
    want = flatten_params(params)
    ckpt = write_with_t5x(hf_to_pix2struct_t5x(model), str(tmp_path / "t5x"))
    out = str(tmp_path / "converted")
    assert _convert(["--t5x", ckpt, "--output", out, "--reduction", "4", "--adapter-dim", "4"]) == 0
    coda_config, coda_params = load_checkpoint(out)
    assert coda_config == config.replace(coda=CodaConfig(reduction=4, adapter_dim=4))
    np.testing.assert_array_equal(flatten_params(coda_params)["encoder/patch_embedder/"
                                                              "patch_projection/bias"],
                                  want["encoder/patch_embedder/patch_projection/bias"])


def test_pix2struct_large_preset_is_the_public_large_checkpoint():
    """Pix2Struct's sizes/large.gin (18 / 18 layers, 24 heads x 64, MLP 3968, d 1536) through
    transformers' config -> the pix2struct_large preset (dropout: HF's text default 0.1)."""
    from coda_flax import ModelConfig
    large = dict(hidden_size=1536, d_ff=3968, d_kv=64)
    hf = transformers.Pix2StructConfig(
        text_config=dict(large, num_heads=24, num_layers=18),
        vision_config=dict(large, num_attention_heads=24, num_hidden_layers=18)).to_dict()
    hf["model_type"] = "pix2struct"
    assert pix2struct_model_config(hf) == ModelConfig.from_preset("pix2struct_large",
                                                                  dropout_rate=0.1)
