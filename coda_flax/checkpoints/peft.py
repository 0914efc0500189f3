"""Which parameters train: PEFT-style masks and parameter counts (paper section 3.3).

Finetuning CoDA trains only the adapters, the routers and the layer norms (plus LoRA factors
when LoRA is on); CoDA pretraining may train everything. Every parameter belongs to one group:

    backbone     the frozen pretrained Transformer (attention, MLP, embeddings, relpos bias)
    adapters     .../adapter/... (the parallel adapters of equation 2)
    routers      .../router/...  (the router vector w of equation 9)
    layer_norms  the "scale" of any *_norm / *layer_norm module
    lora         lora_a / lora_b factors on frozen projections

`param_group` is the single source of that grouping (the `coda summary` command uses it too);
this module needs only numpy and jax's tree utilities.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

GROUPS = ("backbone", "adapters", "routers", "layer_norms", "lora")
FINETUNE_GROUPS = ("adapters", "routers", "layer_norms", "lora")
MODES = ("finetune", "all")


def path_names(path) -> tuple[str, ...]:
    """The module / parameter names of a "/"-joined path, a tuple of names or a jax key path
    (only dict keys count: the .value of a metadata box is skipped)."""
    if isinstance(path, str):
        return tuple(p for p in path.split("/") if p)
    parts = []
    for p in path:        # strings or jax key-path entries; only dict keys are names
        name = p if isinstance(p, str) else getattr(p, "key", None)   # (skips the .value
        if isinstance(name, str):                                     #  of metadata boxes)
            parts.append(name)
    return tuple(parts)


def param_group(path: str | Sequence[Any]) -> str:
    """The group of one parameter: "backbone" | "adapters" | "routers" | "layer_norms" | "lora".

    path: "encoder/layers_0/adapter/up/kernel", a tuple of names, or a jax key path (a
    leading "params" is ignored). lora_a / lora_b -> "lora"; under a module whose name
    contains "adapter" -> "adapters", "router" -> "routers"; the "scale" of a module whose
    name contains "norm" -> "layer_norms"; everything else -> "backbone".
    """
    parts = path_names(path)
    if not parts:
        raise ValueError("param_group: empty parameter path.")
    if parts[0] == "params":                     # a path from the variables dict
        parts = parts[1:]
    modules = parts[:-1]
    if parts[-1] in ("lora_a", "lora_b"):
        return "lora"
    if any("adapter" in m for m in modules):
        return "adapters"
    if any("router" in m for m in modules):
        return "routers"
    if parts[-1] == "scale" and modules and "norm" in modules[-1]:
        return "layer_norms"
    return "backbone"


def trainable_mask(params: Mapping[str, Any], mode: str = "finetune") -> Any:
    """A pytree of bools shaped like params: True = trained.

    mode "finetune": adapters, routers, layer norms, LoRA (the paper's CoDA finetuning);
    mode "all": every parameter (CoDA pretraining). Use with optax.masked / optax.partition.
    """
    if mode not in MODES:
        raise ValueError(f"trainable_mask: unknown mode {mode!r}; choose one of {MODES}.")
    if mode == "all":
        return jax.tree_util.tree_map(lambda _: True, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: param_group(path) in FINETUNE_GROUPS, params)


def _size(x) -> int:
    return int(np.prod(np.shape(x), dtype=np.int64))


def parameter_summary(params: Mapping[str, Any], mask: Any = None) -> dict[str, Any]:
    """Counts per group and in total, trainable and not (mask: default "finetune").

    Returns {"groups": {group: {"params": n, "trainable": t}}, "total": N,
    "trainable": T, "trainable_percent": 100 T / N}. Works on arrays or ShapeDtypeStructs.
    """
    if mask is None:
        mask = trainable_mask(params, "finetune")
    groups = {g: {"params": 0, "trainable": 0} for g in GROUPS}
    leaves = jax.tree_util.tree_leaves_with_path(params)
    flags = jax.tree_util.tree_leaves(mask)
    if len(leaves) != len(flags):
        raise ValueError(f"parameter_summary: the mask has {len(flags)} leaves but params have "
                         f"{len(leaves)}; build it with trainable_mask(params).")
    for (path, x), trained in zip(leaves, flags):
        g = groups[param_group(path)]
        g["params"] += _size(x)
        g["trainable"] += _size(x) if bool(trained) else 0
    total = sum(g["params"] for g in groups.values())
    trainable = sum(g["trainable"] for g in groups.values())
    return {"groups": groups, "total": total, "trainable": trainable,
            "trainable_percent": 100.0 * trainable / total if total else 0.0}


def format_parameter_summary(summary: Mapping[str, Any]) -> str:
    """A small table (AdapterHub adapter_summary style) and PEFT's one-line total."""
    lines = [f"{'group':<12} {'params':>14} {'trainable':>14} {'% of all':>9}"]
    total = summary["total"] or 1
    for name, g in summary["groups"].items():
        if g["params"]:
            lines.append(f"{name:<12} {g['params']:>14,} {g['trainable']:>14,} "
                         f"{100.0 * g['params'] / total:>8.3f}%")
    lines.append(f"{'total':<12} {summary['total']:>14,} {summary['trainable']:>14,} "
                 f"{100.0:>8.3f}%")
    lines.append(f"trainable params: {summary['trainable']:,} || all params: "
                 f"{summary['total']:,} || trainable%: {summary['trainable_percent']:.4f}")
    return "\n".join(lines)


def print_trainable_parameters(params: Mapping[str, Any], mask: Any = None) -> dict[str, Any]:
    """Prints `format_parameter_summary` (like PEFT's print_trainable_parameters); returns it."""
    summary = parameter_summary(params, mask)
    print(format_parameter_summary(summary))
    return summary
