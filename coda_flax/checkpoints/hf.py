"""Hugging Face T5 checkpoints (T5 v1.0, v1.1, FLAN-T5, mT5) -> (ModelConfig, params).

A Hugging Face directory holds config.json and the weights as model.safetensors, sharded
safetensors (model.safetensors.index.json), or pytorch_model.bin (read with torch, only
when torch is installed). Names map one to one onto T5X's minimal T5:

    shared.weight [V, d]                                 -> token_embedder/embedding
    {enc,dec}.block.i.layer.0.SelfAttention.{q,k,v}.weight [h*dh, d]
                                                         -> .../{query,key,value}/kernel [d, h, dh]
    ....o.weight [d, h*dh]                               -> .../out/kernel [h, dh, d]
    ....DenseReluDense.{wi, wi_0, wi_1, wo}.weight [out, in] -> .../mlp/*/kernel [in, out]
    {enc,dec}.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, h]
                                                         -> {encoder,decoder}/relpos_bias/rel_embedding [h, buckets]
    lm_head.weight [V, d]                                -> decoder/logits_dense/kernel [d, V]

HF T5 has no 1/sqrt(head_dim) on the attention logits (T5 folds it into the query weights), so
kernels map without rescaling. The output head: T5 v1.0 ties it to the embedding and rescales
the decoder output by d_model**-0.5 (our logits_via_embedding=True); v1.1 / FLAN-T5 have an
untied, unscaled lm_head. transformers >= 5 writes `scale_decoder_outputs` into config.json and
may omit lm_head.weight when it equals the embedding; both layouts are read.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from coda_flax.checkpoints.tree import check_flat_params, expected_shapes, unflatten_params
from coda_flax.config import ModelConfig

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
SUPPORTED_MODEL_TYPES = ("t5", "mt5")
# HF activation names -> ours. HF's "gelu" is the exact (erf) GELU; "gelu_new" the tanh one.
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_exact", "gelu_new": "gelu",
                "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "silu": "silu",
                "swish": "silu"}
# Keys HF itself ignores or that duplicate the shared embedding.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


# ---------------------------------------------------------------------------------- reading

def read_hf_config(path: str) -> dict[str, Any]:
    """config.json of a Hugging Face model directory."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Hugging Face checkpoint: {path} is not a directory; expected a "
                                f"directory with config.json and model.safetensors (as written "
                                f"by save_pretrained).")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"Hugging Face checkpoint: {cfg_path} not found; the directory "
                                f"must hold the model's config.json next to its weights.")
    with open(cfg_path) as f:
        return json.load(f)


def read_hf_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of an HF directory as numpy arrays (float32 for floating point)."""
    for name in WEIGHT_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            if name.endswith(".index.json"):
                return _read_sharded(path, file)
            return _read_file(file)
    raise FileNotFoundError(f"Hugging Face checkpoint: no weights in {path}; expected one of "
                            f"{', '.join(WEIGHT_FILES)}.")


def _read_sharded(path: str, index_file: str) -> dict[str, np.ndarray]:
    with open(index_file) as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_file} has no 'weight_map' object; re-save the checkpoint.")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        file = os.path.join(path, shard)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{index_file} lists shard {shard}, which is missing from "
                                    f"{path}.")
        tensors.update(_read_file(file))
    return tensors


def _read_file(file: str) -> dict[str, np.ndarray]:
    if file.endswith(".safetensors"):
        return _read_safetensors(file)
    return _read_torch(file)


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="numpy") as f:
            return {k: _to_float32(f.get_tensor(k)) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{file} is not a readable safetensors file ({e}); it may be "
                         f"truncated or corrupt: download or save it again.") from None


def _read_torch(file: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{file} is a PyTorch pickle and reading it needs torch, which is "
                          f"not installed. Install torch (pip install torch) or re-save the "
                          f"model with save_pretrained(..., safe_serialization=True).") from None
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: _to_float32(v.detach().float().numpy() if v.is_floating_point() else v.numpy())
            for k, v in state.items()}


def _to_float32(x) -> np.ndarray:
    """Floating point (float16 / bfloat16 / float64 included) -> float32; others as they are."""
    x = np.asarray(x)
    is_float = np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16"
    return x.astype(np.float32) if is_float else x


# --------------------------------------------------------------------------------- config

def _mlp_activations(hf: Mapping[str, Any]) -> tuple[str, ...]:
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ValueError(f"config.json: feed_forward_proj={proj!r} is not 'ACT' or 'gated-ACT'.")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]     # HF's own special case
    if act not in _ACTIVATIONS:
        raise ValueError(f"config.json: activation {act!r} (from feed_forward_proj={proj!r}) is "
                         f"not supported; supported: {sorted(_ACTIVATIONS)}.")
    return (_ACTIVATIONS[act], "linear") if gated else (_ACTIVATIONS[act],)


def _scales_decoder_output(hf: Mapping[str, Any]) -> bool:
    """T5 v1.0 multiplies the decoder output by d_model**-0.5 before the tied head."""
    if "scale_decoder_outputs" in hf:                        # transformers >= 5
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False   # transformers 4.x semantics


def hf_model_config(hf: Mapping[str, Any], tied_head: bool = True) -> ModelConfig:
    """The ModelConfig of an HF T5 config.json. `tied_head`: the output head is the embedding
    (lm_head.weight absent or equal to shared.weight)."""
    model_type = hf.get("model_type", "t5")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"config.json: model_type {model_type!r} is not supported; this "
                         f"importer reads {SUPPORTED_MODEL_TYPES} encoder-decoders.")
    try:
        heads = int(hf["num_heads"])
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]), d_model=int(hf["d_model"]), num_heads=heads,
            num_kv_heads=heads, head_dim=int(hf["d_kv"]), d_ff=int(hf["d_ff"]),
            num_encoder_layers=int(hf["num_layers"]),
            num_decoder_layers=int(hf.get("num_decoder_layers") or hf["num_layers"]),
            relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            dropout_rate=float(hf.get("dropout_rate", 0.0)),
            mlp_activations=_mlp_activations(hf),
            logits_via_embedding=tied_head and _scales_decoder_output(hf),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)))
    except KeyError as e:
        raise ValueError(f"config.json: missing field {e.args[0]!r}, required for a T5 "
                         f"model.") from None


# -------------------------------------------------------------------------------- mapping

def _linear(num_in: int) -> tuple[Callable, Callable]:
    """HF Linear [out, in] <-> our kernel [*in, *out] with `num_in` input dims."""
    def hf_shape(ours):
        return (int(np.prod(ours[num_in:])), int(np.prod(ours[:num_in])))
    return hf_shape, lambda w, ours: np.ascontiguousarray(w.T).reshape(ours)


_COPY = (lambda ours: tuple(ours), lambda w, ours: w)
_TRANSPOSE = (lambda ours: tuple(ours[::-1]), lambda w, ours: np.ascontiguousarray(w.T))


def _attention(hf: str, ours: str) -> dict[str, tuple[str, tuple]]:
    m = {f"{hf}.{a}.weight": (f"{ours}/{b}/kernel", _linear(1))
         for a, b in (("q", "query"), ("k", "key"), ("v", "value"))}
    m[f"{hf}.o.weight"] = (f"{ours}/out/kernel", _linear(2))
    return m


def _mlp(hf: str, ours: str, config: ModelConfig) -> dict[str, tuple[str, tuple]]:
    names = ["wi"] if len(config.mlp_activations) == 1 else [
        f"wi_{i}" for i in range(len(config.mlp_activations))]
    m = {f"{hf}.{n}.weight": (f"{ours}/{n}/kernel", _linear(1)) for n in names}
    m[f"{hf}.wo.weight"] = (f"{ours}/wo/kernel", _linear(1))
    return m


def hf_param_map(config: ModelConfig) -> dict[str, tuple[str, tuple]]:
    """HF key -> (our flat key, (hf_shape_fn, transform_fn)) for a dense T5 config."""
    m = {"shared.weight": ("token_embedder/embedding", _COPY)}
    for stack in ("encoder", "decoder"):
        m[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            f"{stack}/relpos_bias/rel_embedding", _TRANSPOSE)
        m[f"{stack}.final_layer_norm.weight"] = (
            f"{stack}/{stack}_norm/scale", _COPY)
    for i in range(config.num_encoder_layers):
        hf, ours = f"encoder.block.{i}", f"encoder/layers_{i}"
        m.update(_attention(f"{hf}.layer.0.SelfAttention", f"{ours}/attention"))
        m[f"{hf}.layer.0.layer_norm.weight"] = (f"{ours}/pre_attention_layer_norm/scale", _COPY)
        m.update(_mlp(f"{hf}.layer.1.DenseReluDense", f"{ours}/mlp", config))
        m[f"{hf}.layer.1.layer_norm.weight"] = (f"{ours}/pre_mlp_layer_norm/scale", _COPY)
    for i in range(config.num_decoder_layers):
        hf, ours = f"decoder.block.{i}", f"decoder/layers_{i}"
        m.update(_attention(f"{hf}.layer.0.SelfAttention", f"{ours}/self_attention"))
        m[f"{hf}.layer.0.layer_norm.weight"] = (
            f"{ours}/pre_self_attention_layer_norm/scale", _COPY)
        m.update(_attention(f"{hf}.layer.1.EncDecAttention", f"{ours}/encoder_decoder_attention"))
        m[f"{hf}.layer.1.layer_norm.weight"] = (
            f"{ours}/pre_cross_attention_layer_norm/scale", _COPY)
        m.update(_mlp(f"{hf}.layer.2.DenseReluDense", f"{ours}/mlp", config))
        m[f"{hf}.layer.2.layer_norm.weight"] = (f"{ours}/pre_mlp_layer_norm/scale", _COPY)
    if not config.logits_via_embedding:
        m["lm_head.weight"] = ("decoder/logits_dense/kernel", _linear(1))
    return m


# -------------------------------------------------------------------------------- loading

def _head_is_embedding(tensors: Mapping[str, np.ndarray]) -> bool:
    head = tensors.get("lm_head.weight")
    return head is None or (head.shape == tensors["shared.weight"].shape
                            and np.array_equal(head, tensors["shared.weight"]))


def _normalise_keys(tensors: dict[str, np.ndarray], config: ModelConfig, scale_head: bool,
                    source: str) -> None:
    """Drops keys that HF ignores or that repeat the shared embedding (checked equal) and
    leaves lm_head.weight exactly when the config has an untied head (logits_dense)."""
    for key in _IGNORED:
        tensors.pop(key, None)
    for key in _EMBEDDING_COPIES:
        if key in tensors:
            copy = tensors.pop(key)
            if not np.array_equal(copy, tensors["shared.weight"]):
                raise ValueError(f"{source}: {key} differs from shared.weight; T5 ties its "
                                 f"input embeddings and untied ones are not supported.")
    if config.logits_via_embedding:
        tensors.pop("lm_head.weight", None)         # the tied head: equal to shared.weight
        return
    head = tensors.get("lm_head.weight", tensors["shared.weight"])   # HF 5 omits a tied head
    if scale_head:        # an untied head that HF still rescales: fold d_model**-0.5 in
        head = (head * np.float32(config.d_model ** -0.5)).astype(np.float32)
    tensors["lm_head.weight"] = head


def hf_to_params(tensors: Mapping[str, np.ndarray], config: ModelConfig,
                 source: str = "Hugging Face checkpoint") -> dict[str, Any]:
    """Maps HF T5 tensors onto our nested parameter dict, validating every key and shape.

    tensors: HF names -> arrays as `load_hf_t5` prepares them (encoder/decoder embed_tokens
    copies removed; lm_head.weight present exactly when config has an untied head).
    """
    mapping = hf_param_map(config)
    expected = expected_shapes(config)
    unknown = sorted(set(tensors) - set(mapping))
    if unknown:
        raise ValueError(f"{source}: unexpected tensor {unknown[0]!r} (shape "
                         f"{tuple(tensors[unknown[0]].shape)}; {len(unknown)} unexpected in "
                         f"all) for a T5 with {config.num_encoder_layers} encoder / "
                         f"{config.num_decoder_layers} decoder layers and mlp "
                         f"{config.mlp_activations}; check config.json against the weights.")
    flat = {}
    for hf_key, (ours, (hf_shape, transform)) in mapping.items():
        want = hf_shape(expected[ours])
        if hf_key not in tensors:
            raise ValueError(f"{source}: missing tensor {hf_key!r} (expected shape {want}, "
                             f"for {ours}); the weights are incomplete for config.json.")
        w = tensors[hf_key]
        if tuple(w.shape) != want:
            raise ValueError(f"{source}: tensor {hf_key!r} has shape {tuple(w.shape)}, "
                             f"expected {want} from config.json (d_model={config.d_model}, "
                             f"num_heads={config.num_heads}, d_kv={config.head_dim}, "
                             f"d_ff={config.d_ff}, vocab_size={config.vocab_size}).")
        flat[ours] = transform(w, expected[ours])
    check_flat_params(flat, expected, source)
    return unflatten_params(flat)


def load_hf_t5(path: str) -> tuple[ModelConfig, dict[str, Any]]:
    """Reads a Hugging Face T5 directory -> (ModelConfig, params) as float32 numpy arrays.

    The params plug straight into `EncoderDecoder(config).apply({"params": params}, ...)`;
    `dense_to_coda` turns them into a CoDA model.
    """
    hf = read_hf_config(path)
    tensors = read_hf_tensors(path)
    if "shared.weight" not in tensors:
        raise ValueError(f"Hugging Face checkpoint {path}: no 'shared.weight' (the token "
                         f"embedding) among {len(tensors)} tensors; is this a T5 model?")
    config = hf_model_config(hf, tied_head=_head_is_embedding(tensors))
    scale_head = _scales_decoder_output(hf) and not config.logits_via_embedding
    _normalise_keys(tensors, config, scale_head, f"Hugging Face checkpoint {path}")
    return config, hf_to_params(tensors, config, f"Hugging Face checkpoint {path}")
