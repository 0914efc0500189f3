"""Dense T5 parameters -> a CoDA model that starts exactly at the dense function.

The frozen backbone is reused as is; what CoDA adds (parallel adapters, routers, LoRA factors)
is initialised by the model's own initialisers, taken from `EncoderDecoder(coda_config).init`.
The adapter's up-projection (and LoRA's B) start at zero, so with reduction r = 1 the
converted model computes the dense model's logits bit for bit (docs/design.md section 1); with
r > 1 only the routing differs.

The init is jitted and returns only the new parameters, so XLA drops the backbone's random
initialisation: converting a large model allocates the new parameters only.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from flax.core import meta

from coda_flax.checkpoints.tree import (expected_shapes, flatten_params,
                                        unflatten_params)
from coda_flax.config import CodaConfig, ModelConfig


def _init_new_params(config: ModelConfig, keys: list[str], rng) -> dict[str, Any]:
    from coda_flax.model import build_module, init_args

    @jax.jit
    def init(rng):
        params = build_module(config).init(rng, *init_args(config))["params"]
        flat = flatten_params(meta.unbox(params))
        return {k: flat[k] for k in keys}

    return init(rng)


def dense_to_coda(params: Mapping[str, Any], coda_config: CodaConfig, rng,
                  model_config: ModelConfig | None = None) -> dict[str, Any]:
    """Adds adapters / routers (/ LoRA) to dense T5 params; the backbone is copied unchanged.

    params: the dense parameters (e.g. from load_hf_t5 / load_t5x); parameters CoDA also has
      (an already converted model) are kept when their shapes agree.
    coda_config: the CodaConfig of the target model.
    rng: a jax PRNGKey (or an int seed) for the new parameters.
    model_config: the dense ModelConfig; inferred from the shapes when None (only shapes
      matter here). Use `model_config.replace(coda=coda_config)` to run the result.
    """
    if not isinstance(coda_config, CodaConfig):
        raise TypeError(f"dense_to_coda: coda_config must be a CodaConfig, got "
                        f"{type(coda_config).__name__}.")
    if model_config is None:
        from coda_flax.checkpoints.t5x import infer_t5x_config
        model_config = infer_t5x_config(_backbone_only(params))
    config = model_config.replace(coda=coda_config)
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    flat = flatten_params(params)
    expected = expected_shapes(config)
    unknown = sorted(set(flat) - set(expected))
    if unknown:
        raise ValueError(f"dense_to_coda: parameter {unknown[0]!r} does not exist in the CoDA "
                         f"model ({len(unknown)} such); the params do not match the "
                         f"ModelConfig (pass model_config=).")
    for k, v in flat.items():
        if tuple(np.shape(v)) != expected[k]:
            raise ValueError(f"dense_to_coda: parameter {k!r} has shape {tuple(np.shape(v))}, "
                             f"the CoDA model expects {expected[k]} (adapter_dim="
                             f"{coda_config.adapter_dim}, lora_rank={coda_config.lora_rank}).")
    new_keys = sorted(set(expected) - set(flat))
    flat.update(_init_new_params(config, new_keys, rng) if new_keys else {})
    return unflatten_params(flat)


def _backbone_only(params: Mapping[str, Any]) -> dict[str, Any]:
    from coda_flax.checkpoints.peft import param_group

    flat = flatten_params(params)
    return unflatten_params({k: v for k, v in flat.items()
                             if param_group(k) in ("backbone", "layer_norms")})
