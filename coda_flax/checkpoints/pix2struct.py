"""Pix2Struct checkpoints -> (ModelConfig, params): Hugging Face and the original T5X layout.

Pix2Struct (Lee et al., 2022) is a T5 v1.1 encoder-decoder whose encoder reads image patches.
Every way it differs from our T5 v1.1 model is handled here, by a ModelConfig field or by a
refusal naming it:

    difference                                    handled by
    patch embedding: Linear(p*p*C -> d) + bias,   encoder_input="patches", patch_projection_bias,
      learned row / column tables (seq_len rows)  max_patch_positions = seq_len, patch_size / C
    encoder: no relative position bias            encoder_relative_attention=False
    encoder padding mask                          row id > 0 (ours, and the T5X model's); HF's
                                                  own model tests sum(patch) != 0: the same on
                                                  Pix2Struct's patches, whose padding rows are 0
    layer norm: T5's RMSNorm (no mean, no bias)   RMSNorm; encoder eps (layer_norm_eps) and
                                                  decoder eps (layer_norm_epsilon) must agree
    attention: no biases, no 1/sqrt(d) scaling    as T5 (refused: none; HF has no such option)
    text attention: inner dim = hidden_size       num_heads * d_kv must equal hidden_size
    MLP: gated, dense_act_fn ("gelu_new" = tanh)  mlp_activations=(act, "linear"); encoder and
                                                  decoder activation / d_ff must agree
    encoder / decoder heads and d_kv              must agree (one num_heads / head_dim)
    decoder: relative bias in layer 0, shared     decoder/relpos_bias (as T5)
    output head: untied lm_head, no rescaling     decoder/logits_dense; a tied head
                                                  (tie_word_embeddings) is copied into
                                                  logits_dense, Pix2Struct never rescales it
    decoder_start_token_id / pad_token_id = 0     required (our feature converter's convention)
    dropout: text dropout_rate, vision dropout    dropout_rate = the text one (training only);
                                                  the vision rate is a finetuning setting
    vision relative_attention_*, is_vqa           unused by the model (is_vqa: preprocessing)

Original T5X layout (google-research/pix2struct, flaxformer): our names, except

    encoder/token_embedder/patch_projection/{kernel,bias} -> encoder/patch_embedder/patch_projection
    encoder/token_embedder/embedders_{0,1}/pos_embedding  -> encoder/patch_embedder/
                                                             {row,column}_embedder/embedding
    decoder/token_embedder/embedding                      -> token_embedder/embedding

and attention kernels stored 2-D (reshaped as for T5X T5, coda_flax.checkpoints.t5x).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

import numpy as np

from coda_flax.checkpoints.hf import _ACTIVATIONS, read_hf_config, read_hf_tensors
from coda_flax.checkpoints.t5x import attention_head_sizes, read_t5x, t5x_to_params
from coda_flax.checkpoints.tree import (check_flat_params, expected_shapes, flatten_params,
                                        unflatten_params)
from coda_flax.config import ModelConfig

__all__ = ["MODEL_TYPE", "is_pix2struct_hf", "pix2struct_model_config", "hf_pix2struct_to_params",
           "load_hf_pix2struct", "is_pix2struct_t5x", "infer_pix2struct_config",
           "pix2struct_t5x_to_params", "load_t5x_pix2struct"]

MODEL_TYPE = "pix2struct"
NUM_CHANNELS = 3                     # RGB: Pix2StructImageProcessor's patches
# Pix2StructTextConfig / Pix2StructVisionConfig defaults (fields older config.json may omit).
_TEXT_DEFAULTS = dict(vocab_size=50244, hidden_size=768, d_kv=64, d_ff=2048, num_layers=12,
                      num_heads=12, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, dropout_rate=0.1,
                      layer_norm_epsilon=1e-6, dense_act_fn="gelu_new", decoder_start_token_id=0,
                      pad_token_id=0)
_VISION_DEFAULTS = dict(hidden_size=768, patch_embed_hidden_size=768, d_ff=2048, d_kv=64,
                        num_hidden_layers=12, num_attention_heads=12, dense_act_fn="gelu_new",
                        layer_norm_eps=1e-6, seq_len=4096)
_T5X_RENAMES = (("encoder/token_embedder/patch_projection/",
                 "encoder/patch_embedder/patch_projection/"),
                ("encoder/token_embedder/embedders_0/pos_embedding",
                 "encoder/patch_embedder/row_embedder/embedding"),
                ("encoder/token_embedder/embedders_1/pos_embedding",
                 "encoder/patch_embedder/column_embedder/embedding"),
                ("decoder/token_embedder/embedding", "token_embedder/embedding"))


# --------------------------------------------------------------------------------- config

def is_pix2struct_hf(path: str) -> bool:
    """True when the Hugging Face directory's config.json is a Pix2Struct model."""
    return read_hf_config(path).get("model_type") == MODEL_TYPE


def _refuse_unless_equal(what: str, text, vision, fix: str) -> None:
    if text != vision:
        raise ValueError(f"Pix2Struct config.json: the decoder's {what} ({text!r}) differs from "
                         f"the encoder's ({vision!r}); coda_flax has one {fix} for both, so this "
                         f"checkpoint cannot be converted.")


def _activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"Pix2Struct config.json: dense_act_fn {name!r} is not supported; "
                         f"supported: {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]


def _patch_geometry(patch_dim: int, patch_size: int | None) -> int:
    """The patch side p with p * p * 3 = patch_dim (or the processor's patch_size, checked)."""
    if patch_size is None:
        patch_size = int(round(math.sqrt(patch_dim / NUM_CHANNELS)))
    if patch_size * patch_size * NUM_CHANNELS != patch_dim:
        raise ValueError(f"Pix2Struct: patch_embed_hidden_size={patch_dim} is not "
                         f"patch_size**2 * {NUM_CHANNELS} (patch_size={patch_size}); only RGB "
                         f"square patches are supported.")
    return patch_size


def _processor_patch_size(path: str | None) -> int | None:
    """patch_size of preprocessor_config.json ({"height": p, "width": p}), when present."""
    import json
    file = None if path is None else os.path.join(path, "preprocessor_config.json")
    if file is None or not os.path.isfile(file):
        return None
    with open(file) as f:
        size = json.load(f).get("patch_size")
    if isinstance(size, dict):
        if size.get("height") != size.get("width"):
            raise ValueError(f"{file}: non-square patch_size {size} is not supported.")
        return int(size["height"])
    return None if size is None else int(size)


def pix2struct_model_config(hf: Mapping[str, Any], patch_size: int | None = None,
                            tied_head: bool = False) -> ModelConfig:
    """The dense ModelConfig of a Pix2Struct config.json (module docstring: what must agree).

    patch_size: the image processor's (None: from patch_embed_hidden_size = p * p * 3).
    tied_head: lm_head is the token embedding (only used to check tie_word_embeddings).
    """
    if hf.get("model_type") != MODEL_TYPE:
        raise ValueError(f"config.json: model_type {hf.get('model_type')!r} is not "
                         f"{MODEL_TYPE!r}; use load_hf_t5 for T5 models.")
    text = {**_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    vision = {**_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    _refuse_unless_equal("hidden_size", text["hidden_size"], vision["hidden_size"], "d_model")
    _refuse_unless_equal("d_ff", text["d_ff"], vision["d_ff"], "d_ff")
    _refuse_unless_equal("num_heads", text["num_heads"], vision["num_attention_heads"],
                         "num_heads")
    _refuse_unless_equal("d_kv", text["d_kv"], vision["d_kv"], "head_dim")
    _refuse_unless_equal("dense_act_fn", text["dense_act_fn"], vision["dense_act_fn"],
                         "MLP activation")
    _refuse_unless_equal("layer norm epsilon", float(text["layer_norm_epsilon"]),
                         float(vision["layer_norm_eps"]), "layer_norm_epsilon")
    if text["num_heads"] * text["d_kv"] != text["hidden_size"]:
        raise ValueError(f"Pix2Struct config.json: num_heads * d_kv = {text['num_heads']} * "
                         f"{text['d_kv']} != hidden_size {text['hidden_size']}; the Hugging "
                         f"Face text model projects to hidden_size, so this config is "
                         f"inconsistent.")
    for key in ("decoder_start_token_id", "pad_token_id"):
        if text[key] not in (0, None):
            raise ValueError(f"Pix2Struct config.json: text_config.{key}={text[key]}; coda_flax "
                             f"decoders start from and pad with id 0.")
    if tied_head and not hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False)):
        raise ValueError("Pix2Struct checkpoint: lm_head.weight is missing but "
                         "tie_word_embeddings is false; the weights are incomplete.")
    return ModelConfig(
        vocab_size=int(text["vocab_size"]), d_model=int(text["hidden_size"]),
        num_heads=int(text["num_heads"]), num_kv_heads=int(text["num_heads"]),
        head_dim=int(text["d_kv"]), d_ff=int(text["d_ff"]),
        num_encoder_layers=int(vision["num_hidden_layers"]),
        num_decoder_layers=int(text["num_layers"]),
        relative_attention_num_buckets=int(text["relative_attention_num_buckets"]),
        relative_attention_max_distance=int(text["relative_attention_max_distance"]),
        dropout_rate=float(text["dropout_rate"]),
        mlp_activations=(_activation(text["dense_act_fn"]), "linear"),
        layer_norm_epsilon=float(text["layer_norm_epsilon"]),
        encoder_input="patches", encoder_relative_attention=False,
        patch_size=_patch_geometry(int(vision["patch_embed_hidden_size"]), patch_size),
        num_channels=NUM_CHANNELS, max_patch_positions=int(vision["seq_len"]),
        patch_projection_bias=True)


# -------------------------------------------------------------------------------- mapping

def _linear_into(w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HF Linear weight [out, in] -> our kernel [*in, *out] (shape)."""
    return np.ascontiguousarray(w.T).reshape(shape)


def _hf_names(config: ModelConfig) -> dict[str, str]:
    """HF Pix2Struct tensor name -> our flat parameter name."""
    m = {"encoder.embeddings.patch_projection.weight":
         "encoder/patch_embedder/patch_projection/kernel",
         "encoder.embeddings.patch_projection.bias": "encoder/patch_embedder/patch_projection/bias",
         "encoder.embeddings.row_embedder.weight": "encoder/patch_embedder/row_embedder/embedding",
         "encoder.embeddings.column_embedder.weight":
         "encoder/patch_embedder/column_embedder/embedding",
         "encoder.layernorm.weight": "encoder/encoder_norm/scale",
         "decoder.embed_tokens.weight": "token_embedder/embedding",
         "decoder.layer.0.self_attention.attention.relative_attention_bias.weight":
         "decoder/relpos_bias/rel_embedding",
         "decoder.final_layer_norm.weight": "decoder/decoder_norm/scale",
         "decoder.lm_head.weight": "decoder/logits_dense/kernel"}
    proj = (("query", "query"), ("key", "key"), ("value", "value"), ("output", "out"))
    mlp = ("wi_0", "wi_1", "wo")
    for i in range(config.num_encoder_layers):
        hf, ours = f"encoder.encoder.layer.{i}", f"encoder/layers_{i}"
        m.update({f"{hf}.attention.{a}.weight": f"{ours}/attention/{b}/kernel" for a, b in proj})
        m.update({f"{hf}.mlp.{n}.weight": f"{ours}/mlp/{n}/kernel" for n in mlp})
        for norm in ("pre_attention_layer_norm", "pre_mlp_layer_norm"):
            m[f"{hf}.{norm}.weight"] = f"{ours}/{norm}/scale"
    for i in range(config.num_decoder_layers):
        hf, ours = f"decoder.layer.{i}", f"decoder/layers_{i}"
        for block, name in (("self_attention", "self_attention"),
                            ("encoder_decoder_attention", "encoder_decoder_attention")):
            m.update({f"{hf}.{block}.attention.{a}.weight": f"{ours}/{name}/{b}/kernel"
                      for a, b in proj})
        m.update({f"{hf}.mlp.DenseReluDense.{n}.weight": f"{ours}/mlp/{n}/kernel" for n in mlp})
        m[f"{hf}.self_attention.layer_norm.weight"] = f"{ours}/pre_self_attention_layer_norm/scale"
        m[f"{hf}.encoder_decoder_attention.layer_norm.weight"] = (
            f"{ours}/pre_cross_attention_layer_norm/scale")
        m[f"{hf}.mlp.layer_norm.weight"] = f"{ours}/pre_mlp_layer_norm/scale"
    return m


def _convert_hf_tensor(name: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith(("embedder.weight", "embed_tokens.weight", ".bias")) or w.ndim == 1:
        return w                                             # embeddings, biases, norm scales
    return _linear_into(w, shape)            # Linear weights and the relative bias [buckets, h]


def hf_pix2struct_to_params(tensors: Mapping[str, np.ndarray], config: ModelConfig,
                            source: str = "Pix2Struct checkpoint") -> dict[str, Any]:
    """HF Pix2StructForConditionalGeneration tensors -> our nested params (every key and shape
    checked). A missing decoder.lm_head.weight (tied head) takes the token embedding."""
    tensors = dict(tensors)
    if "decoder.lm_head.weight" not in tensors and "decoder.embed_tokens.weight" in tensors:
        tensors["decoder.lm_head.weight"] = tensors["decoder.embed_tokens.weight"]
    names = _hf_names(config)
    unknown = sorted(set(tensors) - set(names))
    if unknown:
        raise ValueError(f"{source}: unexpected tensor {unknown[0]!r} ({len(unknown)} in all) "
                         f"for a Pix2Struct with {config.num_encoder_layers} encoder / "
                         f"{config.num_decoder_layers} decoder layers; check config.json "
                         f"against the weights.")
    expected = expected_shapes(config)
    flat = {}
    for hf, ours in names.items():
        if hf not in tensors:
            raise ValueError(f"{source}: missing tensor {hf!r} (for {ours}, shape "
                             f"{expected[ours]}); the weights are incomplete for config.json.")
        w = tensors[hf]
        if w.size != int(np.prod(expected[ours])):
            raise ValueError(f"{source}: tensor {hf!r} has shape {tuple(w.shape)}, which cannot "
                             f"hold {ours} {expected[ours]}; check config.json.")
        flat[ours] = _convert_hf_tensor(hf, w, expected[ours])
    check_flat_params(flat, expected, source)
    return unflatten_params(flat)


def load_hf_pix2struct(path: str) -> tuple[ModelConfig, dict[str, Any]]:
    """A Hugging Face Pix2StructForConditionalGeneration directory (config.json + safetensors /
    pytorch_model.bin) -> (dense ModelConfig, params as float32 numpy)."""
    hf = read_hf_config(path)
    tensors = read_hf_tensors(path)
    config = pix2struct_model_config(hf, _processor_patch_size(path),
                                     tied_head="decoder.lm_head.weight" not in tensors)
    return config, hf_pix2struct_to_params(tensors, config, f"Pix2Struct checkpoint {path}")


# ------------------------------------------------------------------- original T5X layout

def is_pix2struct_t5x(params: Mapping[str, Any]) -> bool:
    """True for a T5X parameter tree in Pix2Struct's layout (a patch-embedding token embedder)."""
    return any(k.startswith("encoder/token_embedder/patch_projection/")
               for k in flatten_params(params))


def _renamed(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in flatten_params(params).items():
        for old, new in _T5X_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def _layers(flat: Mapping[str, Any], stack: str) -> int:
    ids = {int(m.group(1)) for k in flat if (m := re.match(rf"{stack}/layers_(\d+)/", k))}
    return max(ids) + 1 if ids else 0


def infer_pix2struct_config(params: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """The dense ModelConfig of Pix2Struct T5X parameters, from their shapes. Shapes cannot tell
    the MLP activation or the relative-attention max distance: Pix2Struct's gin files fix them
    to gelu (tanh) and 128 (pass overrides when a checkpoint differs)."""
    flat = {k: np.shape(v) for k, v in _renamed(params).items()}
    need = ("token_embedder/embedding", "decoder/relpos_bias/rel_embedding",
            "encoder/patch_embedder/patch_projection/kernel",
            "encoder/patch_embedder/row_embedder/embedding",
            "encoder/layers_0/attention/query/kernel", "encoder/layers_0/attention/key/kernel",
            "encoder/layers_0/mlp/wi_0/kernel", "decoder/logits_dense/kernel")
    for k in need:
        if k not in flat:
            raise ValueError(f"Pix2Struct T5X checkpoint: parameter {k!r} is missing (after "
                             f"renaming the T5X layout), so the config cannot be inferred.")
    vocab, d_model = flat["token_embedder/embedding"]
    heads, buckets = flat["decoder/relpos_bias/rel_embedding"]
    head_dim, kv_heads = attention_head_sizes(flat, "encoder/layers_0/attention", heads)
    fields = dict(
        vocab_size=vocab, d_model=d_model, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, d_ff=flat["encoder/layers_0/mlp/wi_0/kernel"][1],
        num_encoder_layers=_layers(flat, "encoder"), num_decoder_layers=_layers(flat, "decoder"),
        relative_attention_num_buckets=buckets, mlp_activations=("gelu", "linear"),
        encoder_input="patches", encoder_relative_attention=False, num_channels=NUM_CHANNELS,
        patch_size=_patch_geometry(flat["encoder/patch_embedder/patch_projection/kernel"][0],
                                   None),
        max_patch_positions=flat["encoder/patch_embedder/row_embedder/embedding"][0],
        patch_projection_bias="encoder/patch_embedder/patch_projection/bias" in flat)
    fields.update(overrides)
    return ModelConfig(**fields)


def pix2struct_t5x_to_params(params: Mapping[str, Any], config: ModelConfig,
                             source: str = "Pix2Struct T5X checkpoint") -> dict[str, Any]:
    """Pix2Struct T5X parameters (module docstring: the layout) -> our params, checked."""
    return t5x_to_params(unflatten_params(_renamed(params)), config, source)


def load_t5x_pix2struct(path: str, config: ModelConfig | None = None
                        ) -> tuple[ModelConfig, dict[str, Any]]:
    """An original Pix2Struct T5X checkpoint_N (legacy msgpack + zarr, or orbax) -> (dense
    ModelConfig, params); config None: inferred from the shapes."""
    raw = read_t5x(path)
    if not is_pix2struct_t5x(raw):
        raise ValueError(f"T5X checkpoint {path} is not in Pix2Struct's layout (no "
                         f"encoder/token_embedder/patch_projection); use load_t5x for T5.")
    if config is None:
        config = infer_pix2struct_config(raw)
    return config, pix2struct_t5x_to_params(raw, config, f"Pix2Struct T5X checkpoint {path}")
