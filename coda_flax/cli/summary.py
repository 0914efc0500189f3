"""`coda summary`: parameter counts and analytic encoder FLOPs of a preset
(coda_flax.analysis.summary).

    coda summary --preset NAME --reduction R [--attention k_to_all|k_to_k] [--length N]
                 [--adapter-dim D] [--json]
"""

from __future__ import annotations

import argparse
import json

from coda_flax.cli import argtypes
from coda_flax.config import ATTENTION_VARIANTS, PRESETS, CodaConfig, ModelConfig


def _positive_int(what: str):
    return argtypes.positive_int(f"{what} must be an integer >= 1")


_REDUCTION = argtypes.reduction(
    "reduction must be >= 1 (1 = Parallel Adapter, r routes k = ceil(n / r) tokens)")


def add_summary_parser(sub) -> argparse.ArgumentParser:
    """Adds the `summary` subcommand to an argparse subparsers object."""
    summary = sub.add_parser(
        "summary", help="parameter counts and analytic encoder FLOPs of a preset",
        description="Parameter table (total, trainable under CoDA finetuning, per group) and "
                    "analytic encoder FLOPs of the dense layer, the Parallel Adapter and CoDA "
                    "k-to-k / k-to-all, with FLOP-bound speedups over the Parallel Adapter.")
    summary.add_argument("--preset", required=True, choices=sorted(PRESETS), metavar="NAME",
                         help=f"model preset, one of: {', '.join(sorted(PRESETS))}")
    summary.add_argument("--reduction", required=True, type=_REDUCTION, metavar="R",
                         help="CoDA reduction r >= 1; k = ceil(n / r) tokens are routed "
                              "(1 = Parallel Adapter)")
    summary.add_argument("--attention", default="k_to_all", choices=ATTENTION_VARIANTS,
                         help="the CoDA attention variant to headline (default k_to_all); "
                              "the FLOP table shows both")
    summary.add_argument("--length", default=512, type=_positive_int("length"), metavar="N",
                         help="encoder sequence length n for the FLOP table (default 512)")
    summary.add_argument("--adapter-dim", default=None, type=_positive_int("adapter-dim"),
                         metavar="D", help="adapter width (default: the preset's, else 64)")
    summary.add_argument("--json", action="store_true", help="print the numbers as JSON")
    summary.set_defaults(func=summary_main)
    return summary


_GROUP_LABELS = {"backbone": "backbone (frozen)", "adapters": "adapters", "routers": "routers",
                 "layer_norms": "layer norms", "lora": "lora"}
_TERM_LABELS = {"q_projection": "q projection", "kv_projection": "k,v projections",
                "attention_scores": "attention scores", "attention_values": "probs @ V",
                "out_projection": "out projection", "mlp": "MLP", "adapter": "adapter",
                "router_score": "router score", "soft_topk": "soft top-k"}
_VARIANT_LABELS = {"dense": "dense", "parallel_adapter": "Parallel Adapter",
                   "k_to_k": "CoDA k-to-k", "k_to_all": "CoDA k-to-all"}
_VARIANT_ORDER = ("dense", "parallel_adapter", "k_to_k", "k_to_all")


def summary_main(args: argparse.Namespace) -> int:
    from coda_flax.analysis import summary as lib     # jax / flax load only for this command

    coda_fields = dict(reduction=args.reduction, attention=args.attention)
    if args.adapter_dim is not None:
        coda_fields["adapter_dim"] = args.adapter_dim
    config = ModelConfig.from_preset(args.preset, coda=CodaConfig(**coda_fields))
    result = lib.summarize(config, args.length)
    result = {"preset": args.preset, "attention": args.attention,
              "speedup": result["flops"]["speedup_vs_parallel_adapter"][args.attention],
              **result}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_summary(result))
    return 0


def _num(x) -> str:
    return f"{x:,}"


def format_summary(result: dict) -> str:
    """The text of `coda summary` for a `summarize` result (plus preset / attention)."""
    c, p, fl = result["config"], result["parameters"], result["flops"]
    coda = c["coda"]
    mlp = "gated-" + c["mlp_activations"][0] if len(c["mlp_activations"]) > 1 else (
        c["mlp_activations"][0])
    n, k, r = fl["n"], fl["k"], fl["reduction"]
    lines = [
        f"{result['preset']}: d_model {c['d_model']}, {c['num_heads']} heads "
        f"({c['num_kv_heads']} kv), head_dim {c['head_dim']}, d_ff {c['d_ff']} ({mlp}), "
        f"{c['num_encoder_layers']} encoder / {c['num_decoder_layers']} decoder layers, "
        f"vocab {c['vocab_size']}",
        f"CoDA: reduction r = {r}, attention {result['attention']}, router {coda['router']}, "
        f"adapter_dim {coda['adapter_dim']}",
        "",
        "Parameters (trainable under CoDA finetuning: adapters, routers, layer norms, LoRA)",
    ]
    total = p["total"]
    rows = [(_GROUP_LABELS[g], v, "yes" if g != "backbone" else "no")
            for g, v in p["groups"].items() if g != "lora" or v]
    width = max(len(_num(total)), 10)
    lines.append(f"  {'group':<20} {'parameters':>{width}} {'share':>8}  trainable")
    for label, v, tr in rows:
        lines.append(f"  {label:<20} {_num(v):>{width}} {100 * v / total:>7.3f}%  {tr}")
    lines.append(f"  {'total':<20} {_num(total):>{width}} {100.0:>7.3f}%")
    lines.append(f"  {'trainable':<20} {_num(p['trainable']):>{width}} "
                 f"{100 * p['trainable_fraction']:>7.3f}%")
    lines.append("")

    variants = fl["variants"]
    cols = _VARIANT_ORDER
    w = max(18, len(_num(max(variants[v]["encoder"] for v in cols))) + 2)
    lines.append(f"Encoder FLOPs at n = {n} (k = ceil(n / r) = {k}; multiply-add = 2 FLOPs)")
    lines.append(f"  {'per layer':<18}" + "".join(f"{_VARIANT_LABELS[v]:>{w}}" for v in cols))
    for term, label in _TERM_LABELS.items():
        lines.append(f"  {label:<18}" + "".join(
            f"{_num(variants[v]['terms'][term]):>{w}}" for v in cols))
    lines.append(f"  {'layer total':<18}" + "".join(
        f"{_num(variants[v]['layer']):>{w}}" for v in cols))
    layers = variants["dense"]["num_layers"]
    lines.append(f"  {f'encoder (x{layers})':<18}" + "".join(
        f"{_num(variants[v]['encoder']):>{w}}" for v in cols))
    lines.append(f"  {'encoder GFLOPs':<18}" + "".join(
        f"{variants[v]['encoder'] / 1e9:>{w}.2f}" for v in cols))
    speed = fl["speedup_vs_parallel_adapter"]
    lines.append(f"  {'speedup vs PA':<18}" + "".join(
        f"{speed[v]:>{w - 1}.3f}x" for v in cols))
    lines.append("")
    lines.append(f"FLOP-bound speedup of CoDA {result['attention'].replace('_', '-')} "
                 f"(r = {r}) over the Parallel Adapter: {result['speedup']:.3f}x")
    lines.append("Not counted: layer norms, softmax, relative position bias, activations, "
                 "residual adds, gather/scatter (elementwise, O(n d) or O(n^2 h)). "
                 f"Soft top-k: {_soft_topk_note(coda)}.")
    return "\n".join(lines)


def _soft_topk_note(coda: dict) -> str:
    from coda_flax.analysis.summary import SOFT_TOPK_FLOPS_PER_TOKEN_ITER
    return (f"~{SOFT_TOPK_FLOPS_PER_TOKEN_ITER} FLOPs per token per iteration x "
            f"{coda['num_iters']} iterations")
