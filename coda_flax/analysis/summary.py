"""Parameter counts and analytic encoder FLOPs of dense T5, the Parallel Adapter and CoDA.

Parameters are counted from the real parameter tree, without allocating it:
`jax.eval_shape(EncoderDecoder(config).init, ...)`, unboxed, then grouped by path with
coda_flax.checkpoints.peft.param_group: adapters, routers, LoRA, layer norms (trained during CoDA
finetuning, paper section 3.3) and the frozen backbone.

FLOPs are analytic and count a multiply-add as 2 FLOPs. Per encoder layer, with
d = d_model, h = num_heads, g = num_kv_heads, dh = head_dim, f = d_ff, a = adapter_dim,
w = len(mlp_activations) (2 for gated-gelu, 1 for relu), nq query tokens, nkv key/value tokens:

    q projection        2 nq d h dh
    k, v projections    2 * 2 nkv d g dh
    attention scores    2 nq nkv h dh
    probs @ V           2 nq nkv h dh
    out projection      2 nq h dh d
    MLP                 2 nq d f w + 2 nq f d
    adapter             2 n d a + 2 n a d                   (equation 2, all n tokens)
    router score        2 n d                               (equation 9, only when k < n)
    soft top-k          SOFT_TOPK_FLOPS_PER_TOKEN_ITER * T * n   (equations 12-13; negligible)

Variants (equations 4-5): dense: nq = nkv = n, no adapter or router. Parallel Adapter (CoDA
with r = 1): dense + adapter. CoDA k-to-all: nq = k, nkv = n. CoDA k-to-k: nq = nkv = k,
where k = ceil(n / r) (`CodaConfig.k`). With k = n the CoDA layer runs as the Parallel Adapter
(no router), exactly as `CodaEncoderLayer` does.

Not counted (elementwise and memory-bound, each O(n d) or O(n^2 h) with a small constant, well
under 1% of a layer at the presets' sizes): layer norms, softmax, the relative position bias
(a table lookup), activations, residual adds, the gather / scatter and the m-weighting of
equation (8), the embedding lookup and the final norm. LoRA updates are assumed merged into the
frozen kernels at inference, so they add no FLOPs. Every encoder layer has the same cost, so
encoder totals are per-layer totals times num_encoder_layers and speedups are the same for one
layer and for the whole encoder.

The FLOP-bound speedup of a variant is PA_flops / variant_flops (`flop_speedup`): the speedup
over the Parallel Adapter that a purely compute-bound implementation would reach.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import jax

from coda_flax.checkpoints.peft import FINETUNE_GROUPS, GROUPS, param_group
from coda_flax.config import ATTENTION_VARIANTS, CodaConfig, ModelConfig

__all__ = ["VARIANTS", "FLOP_TERMS", "SOFT_TOPK_FLOPS_PER_TOKEN_ITER", "abstract_params",
           "parameter_table", "encoder_flops", "flop_speedup", "flop_table",
           "summarize", "input_flops", "flop_speedup_with_input"]

# ---------------------------------------------------------------------------------------------
# Parameters.

def abstract_params(config: ModelConfig) -> dict:
    """The unboxed `params` tree of `build_module(config)` as ShapeDtypeStructs (no memory)."""
    from coda_flax.model import build_module, init_args   # keep this module light

    variables = jax.eval_shape(build_module(config).init, jax.random.key(0),
                               *init_args(config, decoder_length=1, abstract=True))
    return flax.core.meta.unbox(variables)["params"]


def parameter_table(config: ModelConfig) -> dict[str, Any]:
    """Parameter counts of `EncoderDecoder(config)`, from the real (abstract) parameter tree.

    Returns {"groups": {group: count for group in GROUPS}, "total": int,
    "trainable": int (adapters + routers + layer norms + LoRA), "trainable_fraction": float}.
    """
    groups = dict.fromkeys(GROUPS, 0)
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]
    for path, leaf in leaves:
        groups[param_group(path)] += math.prod(leaf.shape)
    total = sum(groups.values())
    trainable = sum(groups[g] for g in FINETUNE_GROUPS)
    return {"groups": groups, "total": total, "trainable": trainable,
            "trainable_fraction": trainable / total if total else 0.0}


# ---------------------------------------------------------------------------------------------
# FLOPs.

VARIANTS = ("dense", "parallel_adapter") + ATTENTION_VARIANTS     # ..., "k_to_all", "k_to_k"
FLOP_TERMS = ("q_projection", "kv_projection", "attention_scores", "attention_values",
              "out_projection", "mlp", "adapter", "router_score", "soft_topk")
# Elementwise FLOPs per token per coordinate-descent iteration of soft top-k (docs/design.md
# section 1): (s + b) / eps_t: 2; logsumexp: max, subtract, exp, sum: 4; b = min(-s - a, 0): 3;
# plus ~1 for the final lam = exp((s + a + b) / eps) spread over the iterations. Exponentials
# count as 1.
SOFT_TOPK_FLOPS_PER_TOKEN_ITER = 10
# Other normalisers: sigmoid (exp, add, divide, mask) ~4 per token; the exact solver is one
# ~10-FLOP pass over the sorted scores (a sort's comparisons are not arithmetic); first_k: 0.
SIGMOID_FLOPS_PER_TOKEN = 4


def _check_length(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"sequence length n must be an integer >= 1, got {n!r}.")


def _coda(config: ModelConfig, reduction: float | None = None,
          attention: str | None = None) -> CodaConfig:
    """config.coda (CodaConfig() defaults when None) with reduction / attention overridden."""
    coda = config.coda if config.coda is not None else CodaConfig()
    changes = {}
    if reduction is not None:
        changes["reduction"] = reduction
        changes["num_routed"] = None       # an explicit reduction means k = ceil(n / r)
    if attention is not None:
        changes["attention"] = attention
    return dataclasses.replace(coda, **changes) if changes else coda


def _router_flops(coda: CodaConfig, n: int, d: int) -> tuple[int, int]:
    """(router score, normaliser) FLOPs of one layer's router over n tokens of width d."""
    if coda.router == "first_k":                       # truncation: nothing is scored
        return 0, 0
    score = 2 * n * d                                  # s = Xn . w  (9)
    if coda.router == "sigmoid":
        return score, SIGMOID_FLOPS_PER_TOKEN * n
    iters = 1 if coda.solver == "exact" else coda.num_iters
    return score, SOFT_TOPK_FLOPS_PER_TOKEN_ITER * iters * n


def encoder_flops(config: ModelConfig, n: int, variant: str, *,
                  reduction: float | None = None) -> dict[str, Any]:
    """Analytic FLOPs of one encoder layer and of the whole encoder for n input tokens.

    variant: "dense" | "parallel_adapter" | "k_to_all" | "k_to_k" (CoDA with that attention).
    reduction: r for the CoDA variants (default config.coda.reduction; k = ceil(n / r), or
    config.coda.num_routed when set and no reduction is given). The adapter width, router kind
    and soft top-k iterations come from config.coda (CodaConfig() defaults when it is None).

    Returns {"variant", "n", "k", "num_layers", "terms": {term: per-layer FLOPs for term in
    FLOP_TERMS}, "layer": per-layer total, "encoder": layer * num_encoder_layers}.
    """
    _check_length(n)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}.")
    c = config
    d, h, g, dh, f = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.d_ff
    num_wi = len(c.mlp_activations)
    coda = _coda(config, reduction, variant if variant in ATTENTION_VARIANTS else None)
    k = coda.k(n) if variant in ATTENTION_VARIANTS else n
    nq = k
    nkv = k if variant == "k_to_k" else n
    terms = {
        "q_projection": 2 * nq * d * h * dh,
        "kv_projection": 2 * 2 * nkv * d * g * dh,
        "attention_scores": 2 * nq * nkv * h * dh,
        "attention_values": 2 * nq * nkv * h * dh,
        "out_projection": 2 * nq * h * dh * d,
        "mlp": 2 * nq * d * f * num_wi + 2 * nq * f * d,
        "adapter": 0,
        "router_score": 0,
        "soft_topk": 0,
    }
    if variant != "dense":
        a = coda.adapter_dim
        terms["adapter"] = 2 * n * d * a + 2 * n * a * d
    if variant in ATTENTION_VARIANTS and k < n:        # k = n runs as the Parallel Adapter
        terms["router_score"], terms["soft_topk"] = _router_flops(coda, n, d)
    layer = sum(terms.values())
    return {"variant": variant, "n": n, "k": k, "num_layers": c.num_encoder_layers,
            "terms": terms, "layer": layer, "encoder": layer * c.num_encoder_layers}


def flop_speedup(config: ModelConfig, n: int, reduction: float,
                 attention: str = "k_to_all") -> float:
    """FLOP-bound speedup of the CoDA encoder over the Parallel Adapter: PA / CoDA FLOPs.

    1.0 at reduction = 1 (CoDA is then the Parallel Adapter). `attention` may also be
    "dense" or "parallel_adapter" to compare those with the Parallel Adapter.
    """
    pa = encoder_flops(config, n, "parallel_adapter")["encoder"]
    variant = encoder_flops(config, n, attention, reduction=reduction)["encoder"]
    return pa / variant


def flop_table(config: ModelConfig, n: int, reduction: float | None = None) -> dict[str, Any]:
    """encoder_flops of every variant, and each one's FLOP-bound speedup over the PA.

    Returns {"n", "k", "reduction", "variants": {variant: encoder_flops(...)},
    "speedup_vs_parallel_adapter": {variant: float}}.
    """
    _check_length(n)
    coda = _coda(config, reduction)
    r = coda.reduction if reduction is None else reduction
    variants = {v: encoder_flops(config, n, v, reduction=reduction) for v in VARIANTS}
    pa = variants["parallel_adapter"]["encoder"]
    return {"n": n, "k": coda.k(n), "reduction": r, "variants": variants,
            "speedup_vs_parallel_adapter": {v: pa / t["encoder"] for v, t in variants.items()}}


def input_flops(config: ModelConfig, length: int) -> int:
    """FLOPs of the input front end for one sequence of `length` rows (multiply-add = 2), the
    same for the Parallel Adapter and CoDA and not counted by encoder_flops:

      tokens   0 (an embedding lookup)
      patches  2 n (p*p*C) d                      the patch projection (position tables: lookups)
      frames   2 * 9 * C * T1 * F1                conv_0, 3x3, 1 -> C channels, stride 2
               + 2 * 9 * C * C * T2 * F2          conv_1, 3x3, C -> C, stride 2
               + 2 * T2 * (F2 * C) * d            the projection to d_model
               with T1 = ceil(T / 2), T2 = ceil(T1 / 2), F1 = ceil(mel / 2), F2 = ceil(F1 / 2).
    """
    c = config
    if c.encoder_input == "patches":
        return 2 * length * c.patch_size ** 2 * c.num_channels * c.d_model
    if c.encoder_input == "frames":
        t1, f1 = -(-length // 2), -(-c.num_mel_bins // 2)
        t2, f2 = -(-t1 // 2), -(-f1 // 2)
        ch = c.conv_channels
        return (2 * 9 * ch * t1 * f1 + 2 * 9 * ch * ch * t2 * f2 + 2 * t2 * f2 * ch * c.d_model)
    return 0


def flop_speedup_with_input(config: ModelConfig, length: int, n: int, r: float,
                             attention: str) -> float:
    """(PA encoder + front end) / (CoDA encoder + front end) FLOPs at config's depth, for an
    input of `length` rows whose encoder length is n (the front end both models share)."""
    front = input_flops(config, length)
    pa = encoder_flops(config, n, "parallel_adapter")["encoder"]
    coda = encoder_flops(config, n, attention, reduction=r)["encoder"]
    return (pa + front) / (coda + front)


def summarize(config: ModelConfig, n: int = 512) -> dict[str, Any]:
    """Everything `coda summary` prints: config, parameter table and FLOP table."""
    _check_length(n)
    return {"config": dataclasses.asdict(config), "parameters": parameter_table(config),
            "flops": flop_table(config, n)}
