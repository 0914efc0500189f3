"""T5X checkpoints -> params: the legacy msgpack + TensorStore layout, and orbax directories.

Legacy layout (the public T5 v1.1 / FLAN-T5 T5X checkpoints, t5x/checkpoints.py VERSION 2-3):

    checkpoint_1000000/
      checkpoint                                   msgpack: {"version": 3, "optimizer":
                                                     {"target": params, "state": {...}}}
                                                   (version 0: the "optimizer" dict itself)
      target.encoder.layers_0.attention.query.kernel/   a zarr array (.zarray + chunks)
      ...

Small arrays are stored inline in the msgpack; large (partitioned) ones are replaced by a
TensorStore spec {"driver": "zarr", "kvstore": {"driver": "file" | "gcs", "path":
"target.encoder..."}, "metadata": {...}} whose path is relative to the checkpoint directory
(tensorstore < 0.1.14 put "path" at the top level). Only "target" (the parameters) is read;
the optimizer state stays on disk.

Orbax layout: a directory written by orbax (_METADATA / _CHECKPOINT_METADATA), parameters
under "target" (T5X) or "params" (flax TrainState).

T5X's DenseGeneral stores attention kernels flattened to 2D: query/key/value [d_model,
heads * head_dim], out [heads * head_dim, d_model]; they are reshaped into our 3D kernels
[d_model, heads, head_dim] / [heads, head_dim, d_model]. Names are otherwise identical.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from coda_flax.checkpoints.native import read_orbax_tree
from coda_flax.checkpoints.tree import (check_flat_params, expected_shapes, flatten_params,
                                        unflatten_params)
from coda_flax.config import ModelConfig

_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA")
_ORBAX_SUBDIRS = ("", "state", "default", "params")
_ATTENTION = re.compile(r"(attention|self_attention|encoder_decoder_attention)/"
                        r"(query|key|value|out)/kernel$")


# ------------------------------------------------------------------------------ the files

def _is_ts_spec(value: Any) -> bool:
    return isinstance(value, dict) and {"driver", "kvstore"} <= set(value)


def _find_legacy_file(path: str) -> str | None:
    if os.path.isfile(path):
        return path
    file = os.path.join(path, "checkpoint")
    if os.path.isfile(file) and not any(os.path.exists(os.path.join(path, m))
                                        for m in _ORBAX_MARKERS):
        return file
    return None


def _find_orbax_dir(path: str) -> str | None:
    """The directory holding the PyTree itself: recent T5X writes step metadata
    (_CHECKPOINT_METADATA) at checkpoint_N/ and the tree (_METADATA) under checkpoint_N/state/."""
    for marker in _ORBAX_MARKERS:                       # _METADATA first
        for sub in _ORBAX_SUBDIRS:
            d = os.path.join(path, sub)
            if os.path.exists(os.path.join(d, marker)):
                return d
    return None


def _read_ts_array(spec: Mapping[str, Any], ckpt_dir: str, name: str,
                   version: int) -> np.ndarray:
    """Reads one TensorStore-backed array of a legacy checkpoint (paths relative to ckpt_dir)."""
    import tensorstore as ts

    kvstore = dict(spec["kvstore"])
    rel = kvstore.get("path", spec.get("path"))
    if rel is None:
        raise ValueError(f"T5X checkpoint {ckpt_dir}: the TensorStore spec of {name} has no "
                         f"path ({spec}); the checkpoint file is damaged.")
    path = rel if os.path.isabs(rel) else os.path.join(ckpt_dir, rel)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"T5X checkpoint {ckpt_dir}: parameter {name} is stored in "
                                f"{path}, which is missing; copy the whole checkpoint "
                                f"directory, not just its 'checkpoint' file.")
    store = ts.open({"driver": spec.get("driver", "zarr"),
                     "kvstore": {"driver": "file", "path": path}}, open=True).result()
    array = store.read().result()
    if version < 3 and array.dtype == np.uint16:     # version 2 stored bfloat16 as uint16
        import ml_dtypes
        array = array.view(ml_dtypes.bfloat16)
    return array


def _materialise(tree: Any, ckpt_dir: str, version: int, prefix: str = "") -> Any:
    if _is_ts_spec(tree):
        return _read_ts_array(tree, ckpt_dir, prefix, version)
    if isinstance(tree, dict):
        return {k: _materialise(v, ckpt_dir, version, f"{prefix}/{k}" if prefix else k)
                for k, v in tree.items()}
    return tree


def read_t5x_legacy(path: str) -> dict[str, Any]:
    """The parameters ("target") of a legacy T5X checkpoint, arrays as numpy."""
    from flax import serialization

    file = _find_legacy_file(path)
    if file is None:
        raise FileNotFoundError(f"T5X checkpoint: no 'checkpoint' file at {path}.")
    with open(file, "rb") as f:
        raw = f.read()
    if raw.startswith(b"model_checkpoint_path"):
        raise ValueError(f"{file} is a TensorFlow (Mesh TF) checkpoint index, not a T5X one; "
                         f"convert it with T5X's convert_tf_checkpoint first.")
    try:
        contents = serialization.msgpack_restore(raw)
    except Exception as e:        # msgpack raises several unrelated types on bad input
        raise ValueError(f"{file} is not a readable T5X msgpack checkpoint ({type(e).__name__}: "
                         f"{e}); it may be truncated or corrupt.") from None
    if not isinstance(contents, dict):
        raise ValueError(f"{file}: expected a msgpack map at the top, got "
                         f"{type(contents).__name__}.")
    version = int(contents.get("version", 0))
    state = contents["optimizer"] if version >= 1 and "optimizer" in contents else contents
    target = state.get("target", state.get("params")) if isinstance(state, dict) else None
    if target is None:
        raise ValueError(f"{file}: no 'target' (parameters) in the checkpoint; top-level "
                         f"entries: {sorted(state) if isinstance(state, dict) else state}.")
    return _materialise(target, os.path.dirname(os.path.abspath(file)), version, "target")


def _params_of(tree: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    for key in ("target", "params"):
        if key in tree:
            sub = tree[key]
            return sub["params"] if set(sub) == {"params"} else sub
    if "token_embedder" in tree:
        return tree
    raise ValueError(f"{source}: cannot find the parameters; expected a 'target' or 'params' "
                     f"entry, found {sorted(tree)}.")


def read_t5x_orbax(path: str) -> dict[str, Any]:
    """The parameters of an orbax-written T5X (or flax TrainState) checkpoint directory."""
    d = _find_orbax_dir(path)
    if d is None:
        raise FileNotFoundError(f"T5X checkpoint: no orbax checkpoint (_METADATA) at {path}.")
    for key in ("target", "params"):
        try:
            return dict(_params_of({key: read_orbax_tree(d, subtree=key)}, path))
        except KeyError:
            continue
    return dict(_params_of(read_orbax_tree(d), path))


def read_t5x(path: str) -> dict[str, Any]:
    """Nested T5X parameters from either layout (kernels as stored, 2D or 3D)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"T5X checkpoint {path} not found; expected a checkpoint_N "
                                f"directory (legacy 'checkpoint' msgpack + zarr arrays, or "
                                f"an orbax directory) or the 'checkpoint' file itself.")
    if _find_legacy_file(path) is not None:
        return read_t5x_legacy(path)
    if _find_orbax_dir(path) is not None:
        return read_t5x_orbax(path)
    raise FileNotFoundError(f"T5X checkpoint: {path} holds neither a legacy 'checkpoint' file "
                            f"nor an orbax checkpoint (_METADATA); point at the checkpoint_N "
                            f"directory.")


# ------------------------------------------------------------------------- shapes, config

def _layer_count(flat: Mapping[str, Any], stack: str) -> int:
    ids = {int(m.group(1)) for k in flat if (m := re.match(rf"{stack}/layers_(\d+)/", k))}
    return max(ids) + 1 if ids else 0


def attention_head_sizes(flat_shapes: Mapping[str, tuple], attention: str,
                         num_heads: int) -> tuple[int, int]:
    """(head_dim, num_kv_heads) read off the query and key kernels under `attention` (e.g.
    "encoder/layers_0/attention"), whether they are our 3-D [d_model, heads, head_dim] kernels
    or T5X's 2-D [d_model, heads * head_dim] ones."""
    q, k = flat_shapes[f"{attention}/query/kernel"], flat_shapes[f"{attention}/key/kernel"]
    head_dim = q[2] if len(q) == 3 else q[1] // num_heads
    return head_dim, (k[1] if len(k) == 3 else k[1] // head_dim)


def infer_t5x_config(params: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """A dense ModelConfig from parameter shapes (T5X 2D or our 3D kernels).

    Shapes cannot tell the MLP activation (gated -> gelu, single -> relu assumed) or the
    relative-attention max distance (128 assumed); pass them as overrides when they differ.
    """
    flat = {k: np.shape(v) for k, v in flatten_params(params).items()}
    if any("/adapter/" in k or "/router/" in k for k in flat):
        raise ValueError("infer_t5x_config: the parameters contain CoDA adapters / routers; "
                         "pass the ModelConfig explicitly (load_checkpoint reads our own "
                         "checkpoints with their config).")
    need = ("token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
            "encoder/layers_0/attention/query/kernel", "encoder/layers_0/attention/key/kernel")
    for k in need:
        if k not in flat:
            raise ValueError(f"infer_t5x_config: parameter {k!r} is missing, so the config "
                             f"cannot be inferred; pass --preset / config=.")
    vocab, d_model = flat["token_embedder/embedding"]
    heads, buckets = flat["encoder/relpos_bias/rel_embedding"]
    head_dim, kv_heads = attention_head_sizes(flat, "encoder/layers_0/attention", heads)
    mlp = "encoder/layers_0/mlp/"
    gated = sum(1 for key in flat if key.startswith(mlp + "wi_"))
    d_ff = flat[mlp + ("wi_0" if gated else "wi") + "/kernel"][1]
    fields = dict(vocab_size=vocab, d_model=d_model, num_heads=heads, num_kv_heads=kv_heads,
                  head_dim=head_dim, d_ff=d_ff,
                  num_encoder_layers=_layer_count(flat, "encoder"),
                  num_decoder_layers=_layer_count(flat, "decoder"),
                  relative_attention_num_buckets=buckets,
                  mlp_activations=("gelu",) + ("linear",) * (gated - 1) if gated else ("relu",),
                  logits_via_embedding="decoder/logits_dense/kernel" not in flat)
    fields.update(overrides)
    return ModelConfig(**fields)


def t5x_to_params(params: Mapping[str, Any], config: ModelConfig,
                  source: str = "T5X checkpoint") -> dict[str, Any]:
    """Reshapes T5X's 2D attention kernels to 3D, casts to float32 and checks every shape."""
    expected = expected_shapes(config)
    flat = {}
    for key, value in flatten_params(params).items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16":
            value = value.astype(np.float32)
        if _ATTENTION.search(key) and value.ndim == 2 and key in expected:
            want = expected[key]
            if value.size != int(np.prod(want)):
                raise ValueError(f"{source}: parameter {key!r} has shape {value.shape}, which "
                                 f"cannot hold {want} (heads={config.num_heads}, kv_heads="
                                 f"{config.num_kv_heads}, head_dim={config.head_dim}); wrong "
                                 f"config or preset?")
            value = value.reshape(want)
        flat[key] = value
    check_flat_params(flat, expected, source, hint="Wrong preset or config?")
    return unflatten_params(flat)


def load_t5x(path: str, config: ModelConfig | None = None) -> dict[str, Any]:
    """T5X checkpoint (legacy msgpack + zarr, or orbax) -> params for `config`.

    With config=None the config is inferred from the shapes (`infer_t5x_config`); use
    `load_t5x_with_config` to get it back.
    """
    return load_t5x_with_config(path, config)[1]


def load_t5x_with_config(path: str, config: ModelConfig | None = None
                         ) -> tuple[ModelConfig, dict[str, Any]]:
    raw = read_t5x(path)
    if config is None:
        config = infer_t5x_config(raw)
    return config, t5x_to_params(raw, config, f"T5X checkpoint {path}")
