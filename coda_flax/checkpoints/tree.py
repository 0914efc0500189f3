"""Parameter trees as flat "/"-joined dictionaries, and the shapes a config expects.

Every importer here ends the same way: a flat {"encoder/layers_0/attention/query/kernel":
array} dictionary is checked against the shapes that `EncoderDecoder(config).init` would
create (computed abstractly with `jax.eval_shape`, so nothing is allocated), then unflattened
into the nested parameter dictionary that `EncoderDecoder.apply` takes.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util
from flax.core import meta

from coda_flax.config import ModelConfig

SEP = "/"


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}; unboxes logical-partitioning metadata first."""
    params = meta.unbox(params)
    if hasattr(params, "unfreeze"):
        params = params.unfreeze()
    return traverse_util.flatten_dict(dict(params), sep=SEP)


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b": x} -> {"a": {"b": x}}."""
    return traverse_util.unflatten_dict(dict(flat), sep=SEP)


def init_length(config: ModelConfig) -> int:
    """An encoder length at which init creates every parameter (see coda_flax.model)."""
    from coda_flax.model import init_length as _init_length    # model imports config only
    return _init_length(config)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The flat parameter shapes of `build_module(config)`, without allocating them."""
    return dict(_expected_shapes(config))


@functools.lru_cache(maxsize=64)
def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    from coda_flax.model import build_module, init_args    # late: model imports config only

    abstract = jax.eval_shape(lambda: build_module(config).init(jax.random.PRNGKey(0),
                                                                *init_args(config)))
    return {k: tuple(v.shape) for k, v in flatten_params(abstract["params"]).items()}


def count(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def check_flat_params(flat: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]],
                      source: str, hint: str = "") -> None:
    """Raises ValueError naming unknown keys, missing keys or the first shape mismatch."""
    unknown = sorted(set(flat) - set(expected))
    missing = sorted(set(expected) - set(flat))
    suffix = f" {hint}" if hint else ""
    if unknown:
        raise ValueError(f"{source}: unexpected parameter {unknown[0]!r} "
                         f"({len(unknown)} unexpected in all: {_preview(unknown)}); the "
                         f"model config does not have it.{suffix}")
    if missing:
        k = missing[0]
        raise ValueError(f"{source}: missing parameter {k!r} (expected shape {expected[k]}; "
                         f"{len(missing)} missing in all: {_preview(missing)}).{suffix}")
    for k in sorted(flat):
        found = tuple(np.shape(flat[k]))
        if found != tuple(expected[k]):
            raise ValueError(f"{source}: parameter {k!r} has shape {found}, expected "
                             f"{tuple(expected[k])} from the model config.{suffix}")


def _preview(keys, limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")
