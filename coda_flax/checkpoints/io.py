"""ModelConfig / CodaConfig as plain JSON-ready dictionaries, and back.

    config_to_dict(ModelConfig(..., coda=CodaConfig(...)))
        -> {"vocab_size": ..., ..., "coda": {"reduction": 3, ...}}
    config_from_dict(d)                      -> ModelConfig (nested "coda" -> CodaConfig)
    config_from_dict(d, CodaConfig)          -> CodaConfig

Unknown fields raise ValueError naming them (a typo in a hand-edited config.json must not be
silently dropped); missing fields fall back to the dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from coda_flax.config import CodaConfig, ModelConfig


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def config_to_dict(config: ModelConfig | CodaConfig) -> dict[str, Any]:
    """A ModelConfig or CodaConfig as a JSON-ready dict (the nested CodaConfig too)."""
    if not isinstance(config, (ModelConfig, CodaConfig)):
        raise TypeError(f"config_to_dict takes a ModelConfig or CodaConfig, got "
                        f"{type(config).__name__}.")
    return _jsonable(dataclasses.asdict(config))


def config_from_dict(data: Mapping[str, Any], cls: type = ModelConfig):
    """The inverse of `config_to_dict`; `cls` is ModelConfig (default) or CodaConfig."""
    if cls not in (ModelConfig, CodaConfig):
        raise TypeError(f"config_from_dict builds a ModelConfig or CodaConfig, not {cls!r}.")
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} JSON must be an object, got {type(data).__name__}.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown} in the config; known "
                         f"fields are {sorted(known)}. Fix or remove them.")
    fields = dict(data)
    if cls is ModelConfig and fields.get("coda") is not None:
        fields["coda"] = config_from_dict(fields["coda"], CodaConfig)
    try:
        return cls(**fields)
    except TypeError as e:        # a required field is missing
        raise ValueError(f"{cls.__name__}: cannot build the config from {sorted(data)}: {e}") \
            from None


def write_json(path: str, data: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def read_format_json(path: str, what: str, fmt: str, version: int, *, fix: str) -> dict[str, Any]:
    """Reads the JSON a coda_flax checkpoint writer put beside its files and checks its header.

    Args:
        path: the JSON file (config.json, adapter_config.json).
        what: what the file is, for messages ("coda_flax checkpoint config").
        fmt: the "format" the file must record; it must also hold a "model_config".
        version: the newest "format_version" this coda_flax reads.
        fix: what to do when the file is not of this format (ends the error message).
    Returns:
        the JSON object.
    Raises:
        FileNotFoundError: no file. ValueError: invalid JSON, another format, no model_config,
            or a format_version newer than `version`.
    """
    meta = read_json(path, what)
    if meta.get("format") != fmt or "model_config" not in meta:
        raise ValueError(f"{path} is not a {what} (needs format={fmt!r} and model_config, found "
                         f"format {meta.get('format')!r}); {fix}.")
    if meta.get("format_version", 0) > version:
        raise ValueError(f"{path} was written by a newer coda_flax (format_version "
                         f"{meta['format_version']} > {version}); upgrade coda_flax.")
    return meta


def read_json(path: str, what: str) -> dict[str, Any]:
    """Reads a JSON object; FileNotFoundError / ValueError say which file and what it is."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path} not found.")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {path} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object, got {type(data).__name__}.")
    return data
