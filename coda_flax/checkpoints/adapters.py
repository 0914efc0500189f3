"""Adapter-only files: save what finetuning trained, merge it back onto a frozen base.

    DIR/model-adapters.safetensors   the trainable parameters (trainable_mask "finetune":
                                     adapters, routers, layer norms, LoRA), "/"-joined keys
    DIR/adapter_config.json          the ModelConfig (with its CodaConfig), the file's sha256,
                                     and a fingerprint of the base: the shapes of the frozen
                                     parameters, a checksum of the token embedding, and every
                                     config field that changes the function (with its sha256)

A few kilobytes to megabytes instead of the whole model. `load_adapters` refuses files that
do not fit the base (naming the parameter, expected vs found shape), truncated or corrupt
files (the sha256 is always written and always checked: a config without one is refused),
non-finite values (refused on save too), and configs whose backbone differs from the one
given or from the one recorded (an edited adapter_config.json).

The config fingerprint is derived from the dataclass fields, so a field added to ModelConfig
or CodaConfig is covered without a hand list. Excluded, because they do not change the
function the adapters compute: ModelConfig.dtype (the computation precision: the same function
rounded differently; adapters trained in float32 are meant to run in bfloat16) and
ModelConfig.dropout_rate (active only while training; evaluation is deterministic).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Mapping

import numpy as np

from coda_flax.checksums import sha256_file, sha256_text
from coda_flax.checkpoints.io import (config_from_dict, config_to_dict, read_format_json,
                                      write_json)
from coda_flax.checkpoints.peft import FINETUNE_GROUPS, param_group
from coda_flax.checkpoints.tree import (check_flat_params, expected_shapes, flatten_params,
                                        unflatten_params)
from coda_flax.config import CodaConfig, ModelConfig

WEIGHTS_FILE = "model-adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "coda_flax.adapters"
FORMAT_VERSION = 2          # 2: config fingerprint in "base", sha256 required
EMBEDDING = "token_embedder/embedding"
# CodaConfig fields that change parameter shapes (checked through the shapes themselves).
_SHAPE_FIELDS = ("adapter_dim", "lora_rank", "lora_targets")
# ModelConfig fields that do not change the function (see the module doc); "coda" is the
# adapters' own config, fingerprinted separately.
_NON_FUNCTION_FIELDS = ("dropout_rate", "dtype")
_NON_BACKBONE_FIELDS = ("coda", *_NON_FUNCTION_FIELDS)


def config_fingerprint(config: ModelConfig) -> dict[str, Any]:
    """Every config field that changes the function, as JSON (the CodaConfig under "coda"),
    and the sha256 of that JSON."""
    fields = {k: v for k, v in config_to_dict(config).items() if k not in _NON_FUNCTION_FIELDS}
    text = json.dumps(fields, sort_keys=True)
    return {"config": fields, "config_sha256": sha256_text(text)}


def _config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix="") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            out += _config_differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}={x!r} vs {y!r}")
    return out


def _trainable(key: str) -> bool:
    return param_group(key) in FINETUNE_GROUPS


def _embedding_checksum(flat: Mapping[str, Any]) -> float | None:
    if EMBEDDING not in flat:
        return None
    return float(np.sum(np.abs(np.asarray(flat[EMBEDDING], np.float64))))


# ---------------------------------------------------------------------------------- save

def save_adapters(path: str, params: Mapping[str, Any], config: ModelConfig) -> dict[str, Any]:
    """Writes the trainable parameters and adapter_config.json into directory `path`.

    Returns {"weights": file, "config": file, "num_params": n, "bytes": size}.
    """
    from safetensors.numpy import save_file

    if not isinstance(config, ModelConfig) or config.coda is None:
        raise ValueError("save_adapters: config must be a ModelConfig with a CodaConfig; a "
                         "dense model has no adapters (convert it with dense_to_coda first).")
    flat = flatten_params(params)
    check_flat_params(flat, expected_shapes(config), "save_adapters")
    trained = {k: np.ascontiguousarray(np.asarray(v, np.float32))
               for k, v in flat.items() if _trainable(k)}
    _check_finite(trained, "save_adapters: refusing to save", "the training diverged; save "
                  "the adapters of the last good checkpoint instead")
    frozen = {k: list(np.shape(v)) for k, v in flat.items() if not _trainable(k)}
    os.makedirs(path, exist_ok=True)
    weights = os.path.join(path, WEIGHTS_FILE)
    save_file(trained, weights, metadata={"format": FORMAT})
    write_json(os.path.join(path, CONFIG_FILE), {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model_config": config_to_dict(config), "weights_file": WEIGHTS_FILE,
        "sha256": sha256_file(weights), "num_params": int(sum(v.size for v in trained.values())),
        "base": {"frozen_shapes": frozen,
                 "num_frozen_params": int(sum(np.prod(s, dtype=np.int64) for s in
                                              frozen.values())),
                 "embedding_checksum": _embedding_checksum(flat),
                 **config_fingerprint(config)}})
    return {"weights": weights, "config": os.path.join(path, CONFIG_FILE),
            "num_params": int(sum(v.size for v in trained.values())),
            "bytes": os.path.getsize(weights)}


# ---------------------------------------------------------------------------------- load

def _read_meta(path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"adapter directory {path} not found; expected {WEIGHTS_FILE} "
                                f"and {CONFIG_FILE} written by save_adapters.")
    return read_format_json(os.path.join(path, CONFIG_FILE), "coda_flax adapter config",
                            FORMAT, FORMAT_VERSION, fix="write it with save_adapters")


def _check_finite(tensors: Mapping[str, np.ndarray], what: str, fix: str) -> None:
    for k in sorted(tensors):
        v = np.asarray(tensors[k])
        if v.size and not np.all(np.isfinite(v)):
            bad = int(np.size(v) - np.sum(np.isfinite(v)))
            raise ValueError(f"{what}: parameter {k!r} has {bad} non-finite value(s) (NaN / "
                             f"inf); {fix}.")


def _check_recorded_config(meta: Mapping[str, Any], path: str) -> None:
    """The recorded model_config must match the fingerprint written with it (an edit of
    adapter_config.json that changes the function is refused, naming the field)."""
    base = meta.get("base", {})
    if "config_sha256" not in base or "config" not in base:
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)} has no config fingerprint "
                         f"(base.config / base.config_sha256; written by an older coda_flax); "
                         f"re-save the adapters with save_adapters.")
    recorded = json.dumps(base["config"], sort_keys=True)
    if sha256_text(recorded) != base["config_sha256"]:
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)}: base.config does not match its "
                         f"sha256 (the file was edited or damaged); re-save the adapters.")
    now = {k: v for k, v in meta["model_config"].items() if k not in _NON_FUNCTION_FIELDS}
    diffs = _config_differences(base["config"], json.loads(json.dumps(now)))
    if diffs:
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)}: model_config differs from the "
                         f"config the adapters were trained with ({'; '.join(diffs[:5])}, "
                         f"trained vs now); it was edited. Restore the trained values (or "
                         f"re-save the adapters).")


def _read_weights(path: str, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    file = os.path.join(path, meta.get("weights_file", WEIGHTS_FILE))
    if not os.path.isfile(file):
        raise FileNotFoundError(f"adapter weights {file} not found (next to {CONFIG_FILE}); "
                                f"copy both files written by save_adapters.")
    fix = "re-save the adapters with save_adapters (or copy the file again)"
    try:
        tensors = load_file(file)
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"adapter weights {file} are corrupt or truncated ({e}); {fix}.") \
            from None
    if not meta.get("sha256"):
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)} records no sha256 of {file}, so "
                         f"the weights cannot be checked; {fix}.")
    if sha256_file(file) != meta["sha256"]:
        raise ValueError(f"adapter weights {file} are corrupt or truncated: their sha256 does "
                         f"not match the one recorded in {CONFIG_FILE}; {fix}.")
    _check_finite(tensors, f"adapter weights {file}", "they come from a diverged run; "
                  "save the adapters of the last good checkpoint instead")
    return tensors


def _check_backbone_config(saved: ModelConfig, given: ModelConfig) -> None:
    for f in dataclasses.fields(ModelConfig):
        if f.name in _NON_BACKBONE_FIELDS:
            continue
        a, b = getattr(saved, f.name), getattr(given, f.name)
        if a != b:
            raise ValueError(f"load_adapters: the adapters were saved for {f.name}={a!r}, the "
                             f"config passed has {f.name}={b!r}; they belong to a different "
                             f"base model.")
    if given.coda is None:
        raise ValueError("load_adapters: the config passed has no CodaConfig (coda=None); "
                         "pass the CoDA config, or config=None to use the saved one.")
    diffs = [f.name for f in dataclasses.fields(CodaConfig) if f.name not in _SHAPE_FIELDS
             and getattr(saved.coda, f.name) != getattr(given.coda, f.name)]
    if diffs:
        warnings.warn(f"load_adapters: the adapters were trained with CodaConfig "
                      f"{ {d: getattr(saved.coda, d) for d in diffs} }; running them with "
                      f"{ {d: getattr(given.coda, d) for d in diffs} }.", stacklevel=3)


def _check_trained(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
                   config: ModelConfig, file: str) -> None:
    c = config.coda
    where = f"(adapter_dim={c.adapter_dim}, lora_rank={c.lora_rank}, d_model={config.d_model})"
    for k in sorted(tensors):
        if k not in expected or not _trainable(k):
            raise ValueError(f"{file}: parameter {k!r} is not a trainable parameter of the "
                             f"model config {where}; wrong file or config?")
        if tuple(tensors[k].shape) != expected[k]:
            raise ValueError(f"{file}: parameter {k!r} has shape {tuple(tensors[k].shape)}, the "
                             f"model expects {expected[k]} {where}.")
    missing = sorted(k for k in expected if _trainable(k) and k not in tensors)
    if missing:
        raise ValueError(f"{file}: missing trainable parameter {missing[0]!r} (expected shape "
                         f"{expected[missing[0]]}; {len(missing)} missing); wrong config?")


def _check_base(base: Mapping[str, Any], fingerprint: Mapping[str, Any], path: str) -> None:
    want = {k: tuple(v) for k, v in fingerprint.get("frozen_shapes", {}).items()}
    have = {k: tuple(np.shape(v)) for k, v in base.items() if not _trainable(k)}
    for k in sorted(want):
        if k not in have:
            raise ValueError(f"load_adapters: the base has no parameter {k!r} (shape {want[k]}) "
                             f"that the adapters in {path} were trained with.")
        if have[k] != want[k]:
            raise ValueError(f"load_adapters: base parameter {k!r} has shape {have[k]}, the "
                             f"adapters in {path} expect {want[k]}; they were trained on a "
                             f"different base model.")
    extra = sorted(set(have) - set(want))
    if extra:
        raise ValueError(f"load_adapters: base parameter {extra[0]!r} ({len(extra)} such) did "
                         f"not exist in the base the adapters in {path} were trained with.")
    saved_sum, sum_now = fingerprint.get("embedding_checksum"), _embedding_checksum(base)
    if saved_sum is not None and sum_now is not None and not np.isclose(saved_sum, sum_now,
                                                                         rtol=1e-6):
        warnings.warn(f"load_adapters: the base's token embedding differs from the one the "
                      f"adapters in {path} were trained on (same shapes, other weights).",
                      stacklevel=3)


def load_adapters(path: str, base_params: Mapping[str, Any],
                  config: ModelConfig | None = None) -> dict[str, Any]:
    """Merges adapters saved by `save_adapters` onto base params (dense or CoDA).

    config: the model to build (default: the saved one). Raises FileNotFoundError for missing
    files and ValueError for corrupt / truncated files and for any mismatch with the base or
    the config.
    """
    meta = _read_meta(path)
    _check_recorded_config(meta, path)
    saved = config_from_dict(meta["model_config"])
    if config is not None:
        _check_backbone_config(saved, config)
    config = config or saved
    tensors = _read_weights(path, meta)
    expected = expected_shapes(config)
    _check_trained(tensors, expected, config, os.path.join(path, WEIGHTS_FILE))
    base = flatten_params(base_params)
    _check_base(base, meta.get("base", {}), path)
    merged = {k: v for k, v in base.items() if not _trainable(k)}
    merged.update(tensors)
    check_flat_params(merged, expected, f"load_adapters({path})")
    return unflatten_params(merged)
