"""Optimisation for CoDA (paper section 3.3, appendix B, Table 8).

* Adafactor with T5X's defaults. The trainer differentiates and updates only the trainable
  parameters (finetuning: adapters, routers, layer norms [, LoRA]; CoDA pretraining:
  configurable), so frozen ones get no gradient, no update and no optimizer state.
* Learning-rate schedules: constant (text finetuning), inverse square root with warmup
  (pretraining, speech), cosine decay (vision).

k annealing (k falling from n to ceil(n / r) in a few compiled stages) is the k plan,
coda_flax/kplan.py, which both trainers share.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt", "cosine")


def learning_rate_schedule(name: str, base: float = 1e-3, warmup_steps: int = 0,
                           total_steps: int = 1, final_fraction: float = 0.0) -> Callable:
    """constant: base. rsqrt: base * sqrt(warmup) / sqrt(max(step, warmup)) (T5's
    1/sqrt(max(step, 10^4)) when base = 0.01, warmup = 10^4). cosine: linear warmup, then
    cosine decay from base to base * final_fraction at total_steps."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of {SCHEDULES}.")
    if name == "constant":
        return optax.constant_schedule(base)
    if name == "rsqrt":
        w = max(warmup_steps, 1)
        return lambda step: base * jnp.sqrt(w) / jnp.sqrt(jnp.maximum(step, w).astype(jnp.float32))
    return optax.warmup_cosine_decay_schedule(0.0 if warmup_steps else base, base,
                                              warmup_steps, max(total_steps, warmup_steps + 1),
                                              base * final_fraction)


def adafactor(learning_rate, parameter_scale: bool = True) -> optax.GradientTransformation:
    """T5X's Adafactor defaults: factored second moments, decay 0.8, update clipping 1.0,
    parameter-scale multiplication, no momentum.

    With parameter_scale, steps are relative to max(rms(param), 1e-3): a parameter that starts
    at zero (the adapters' W_up) moves ~1000x slower than lr at first. That is fine over the
    paper's 300K steps; short runs (the demo) turn it off so that steps are ~lr."""
    return optax.adafactor(learning_rate, min_dim_size_to_factor=128, decay_rate=0.8,
                           multiply_by_parameter_scale=parameter_scale, clipping_threshold=1.0,
                           momentum=None, eps=1e-30, factored=True)
