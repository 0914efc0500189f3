"""Parallel Adapter vs CoDA on the offline image and speech tasks (`coda compare`, paper section 6).

The paper's protocol (section 3.3) at CPU scale, on real offline data:

    1. a dense model trained on the task stands in for the pretrained backbone (Pix2Struct /
       BEST-RQ cannot be downloaded here);
    2. it is converted to the Parallel Adapter and to CoDA at several r (dense_to_coda: the
       backbone copied, adapters at zero, routers new);
    3. each variant finetunes adapters + routers + layer norms only, with k annealed from n
       to n / r (appendix B);
    4. quality on the validation split (rendered words / documents: exact match and ANLS;
       easy-VQA:
       exact match; speech: WER, CER), measured encoder and end-to-end inference speedups over
       the Parallel Adapter on the same batch (interleaved timing, coda_flax.analysis.timing),
       and for rendered words / documents the share of routed patches that contain ink beside the share of ink
       patches on the page (does the router skip whitespace, as the paper's Figure 7 shows?).

Outputs in the output folder: results.json, results.md, speed_quality.png, routing plots and
(rendered words / documents) ink_share.png. The table also gives the score of always answering
the most frequent validation target. The dense backbone and the variants are Run specs
(`runs`) executed by experiments/runner.py: a second run reuses every finished one, unless its
settings or the data it was trained on changed (the folder is set aside, named, and the run
trained again); delete the folder to start over. results.json records the hashes of the
datasets used.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np

from coda_flax.config import CodaConfig, ModelConfig
from coda_flax.datasets import provenance
from coda_flax.experiments import pipeline, runner
from coda_flax.experiments.runner import Run
from coda_flax.soft_topk import SoftTopkConfig

Log = Callable[[str], None]

_VISION_MODEL = dict(vocab_size=259, d_model=128, num_heads=4, num_kv_heads=1, head_dim=32,
                     d_ff=256, num_encoder_layers=4, num_decoder_layers=2,
                     encoder_input="patches", encoder_relative_attention=False, patch_size=16,
                     num_channels=3, max_patch_positions=64)
_SPEECH_MODEL = dict(vocab_size=29, d_model=144, num_heads=4, num_kv_heads=4, head_dim=36,
                     d_ff=576, num_encoder_layers=4, num_decoder_layers=0,
                     mlp_activations=("swish",), encoder_input="frames", num_mel_bins=80,
                     conv_channels=32, head="ctc")


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """One comparison: task, model, steps, and the variants (name, reduction r)."""

    task: str
    domain: str                        # "vision" | "speech"
    input_length: int                  # patches / audio frames
    target_length: int
    model: dict
    variants: tuple = (("parallel_adapter", 1), ("coda_r4", 4), ("coda_r8", 8),
                       ("coda_r16", 16))
    adapter_dim: int = 32
    epsilon: float = SoftTopkConfig.epsilon   # appendix D: 0.03 text / vision, 1.0 speech
    batch_size: int = 16
    pretrain_steps: int = 600
    pretrain_lr: float = 3e-3
    pretrain_warmup: int = 0
    finetune_steps: int = 200
    finetune_lr: float = 3e-3
    eval_examples: int = 128
    speed_batch: int = 8
    speed_repeats: int = 5
    headline: str = "anls"             # the metric of the table's quality column
    lower_is_better: bool = False
    extra_metrics: tuple = ()          # more columns of the table


SETTINGS = {
    "rendered_words": CompareSettings("coda_rendered_words", "vision", 256, 8, _VISION_MODEL,
                                      pretrain_steps=1500, pretrain_warmup=100,
                                      finetune_steps=300, headline="exact_match",
                                      extra_metrics=("anls",)),
    "rendered_docs": CompareSettings("coda_rendered_docs", "vision", 256, 32, _VISION_MODEL,
                                     pretrain_steps=1500, pretrain_warmup=100, headline="anls",
                                     extra_metrics=("exact_match",)),
    "easy_vqa": CompareSettings("coda_easy_vqa", "vision", 256, 16, _VISION_MODEL,
                                headline="exact_match"),
    "speech": CompareSettings("coda_speech_offline", "speech", 512, 96, _SPEECH_MODEL,
                              variants=(("parallel_adapter", 1), ("coda_r2", 2), ("coda_r4", 4)),
                              epsilon=1.0, headline="wer", lower_is_better=True,
                              extra_metrics=("cer",)),
}


def quick(s: CompareSettings) -> CompareSettings:
    """Tiny sizes and a few steps: the code path of the full run, for tests."""
    small = dict(s.model, d_model=16, num_heads=2, num_kv_heads=1, head_dim=8, d_ff=32,
                 num_encoder_layers=2, num_decoder_layers=min(1, s.model["num_decoder_layers"]))
    if s.domain == "speech":
        small.update(num_kv_heads=2, conv_channels=2)
    return dataclasses.replace(
        s, model=small, input_length=min(s.input_length, 64 if s.domain == "vision" else 128),
        target_length=min(s.target_length, 24), variants=s.variants[:2], adapter_dim=4,
        batch_size=2, pretrain_steps=2, pretrain_warmup=0, finetune_steps=2, eval_examples=2,
        speed_batch=2, speed_repeats=1)


def model_config(s: CompareSettings, reduction: float | None) -> ModelConfig:
    coda = None if reduction is None else CodaConfig(reduction=reduction, epsilon=s.epsilon,
                                                     adapter_dim=s.adapter_dim)
    return ModelConfig(**s.model, coda=coda)


def register(s: CompareSettings, data_dir: str | None, prepare: bool, log: Log):
    """Prepares (downloads once, verified) and registers the task; returns the seqio task."""
    from coda_flax import tasks
    if s.domain == "vision":
        if prepare:
            from coda_flax.datasets.vision import prepare_vision_data
            prepare_vision_data(data_dir, log=log)
        tasks.register_vision_tasks(data_dir, max_patches=s.input_length,
                                    patch_size=s.model["patch_size"], tasks=(s.task,))
    else:
        if prepare:
            from coda_flax.datasets.speech import prepare_offline_speech
            prepare_offline_speech(data_dir, log=log)
        tasks.register_speech_tasks(data_dir)
    return tasks.get_task_or_mixture(s.task)


def runs(s: CompareSettings, data_dir: str | None) -> list[Run]:
    """The dense backbone ("dense": every parameter trained) and one finetuning run per variant
    ("finetune/<variant>": converted from the backbone, adapters + routers + layer norms
    trained, k annealed from n to n / r in two stages)."""
    options = dict(log_every=25, checkpoint_every=10**9, data_dir=data_dir, progress=True,
                   parameter_scale=False)
    dense = Run(name="dense", model=model_config(s, None), task=s.task,
                feature_lengths={"inputs": s.input_length, "targets": s.target_length},
                steps=s.pretrain_steps, batch_size=s.batch_size, learning_rate=s.pretrain_lr,
                trainable="all", k_anneal_stages=1, eval_batch_size=s.batch_size,
                eval_max_examples=s.eval_examples,
                train_options={**options, "warmup_steps": s.pretrain_warmup})
    return [dense] + [dataclasses.replace(
        dense, name=f"finetune/{variant}", model=model_config(s, r), steps=s.finetune_steps,
        learning_rate=s.finetune_lr, trainable="finetune", init=dense, k_anneal_fraction=0.2,
        k_anneal_stages=2, train_options=options) for variant, r in s.variants]


def majority_baseline(task, lengths, max_examples: int, models: dict) -> dict:
    """The task's metrics when every answer is the most frequent validation target (over the
    evaluated examples): the floor a model that ignores its input reaches."""
    from coda_flax.tasks.metrics import majority_floor
    from coda_flax.train import run
    eos_id = next(iter(models.values())).eos_id
    examples = run.eval_examples(task, lengths, "validation", max_examples)
    texts = [run.target_text(task, ex, eos_id) for ex in examples]
    answer, _ = majority_floor(texts)
    targets = [run.postprocess(task, t, ex, is_target=True) for t, ex in zip(texts, examples)]
    predictions = [run.postprocess(task, answer, ex, is_target=False) for ex in examples]
    return {"answer": answer, **run.task_metrics(task, targets, predictions)}


def run_compare(name: str, output_dir: str, *, quick_run: bool = False,
                data_dir: str | None = None, prepare: bool = True, log: Log = print) -> dict:
    """Runs the comparison `name` (a key of SETTINGS); writes and returns the results.

    The steps: the Run specs of `runs` executed by experiments/runner.py (the dense backbone,
    then per variant: convert, finetune, evaluate) -> pipeline.speed_table -> table and
    plots."""
    from coda_flax.train import run

    if name not in SETTINGS:
        raise ValueError(f"unknown comparison {name!r}; choose one of {sorted(SETTINGS)}.")
    s = quick(SETTINGS[name]) if quick_run else SETTINGS[name]
    os.makedirs(output_dir, exist_ok=True)
    t_start = time.time()
    log(f"[compare 1/5] data for {s.task}")
    task = register(s, data_dir, prepare, log)
    lengths = {"inputs": s.input_length, "targets": s.target_length}
    specs = runs(s, data_dir)

    log(f"[compare 2/5] the dense backbone: {s.pretrain_steps} steps, every parameter trained")
    runner.execute(specs[0], output_dir, log)

    log(f"[compare 3/5] finetune {len(s.variants)} variants ({s.finetune_steps} steps each; "
        f"adapters + routers + layer norms)")
    done = runner.execute_all(specs[1:], output_dir, log, load_params=True)
    results, models, params = {}, {}, {}
    for (variant, r), spec in zip(s.variants, specs[1:]):
        out, cfg = done[spec.name], spec.model
        ev = out["eval"]
        n = _encoder_length(cfg, s.input_length)
        results[variant] = {"reduction": r, "n": n, "k": cfg.coda.k(n), "eval": ev,
                            "quality": ev[s.headline],
                            "trainable_params": out["trainable_params"],
                            "total_params": out["total_params"]}
        models[variant], params[variant] = out["model"], out["params"]
        log(f"  {variant}: {s.headline} {ev[s.headline]:.1f}")

    log("[compare 4/5] inference speed on one validation batch (interleaved timing)")
    examples = run.eval_examples(task, lengths, "validation", s.speed_batch)
    examples = (examples * s.speed_batch)[:s.speed_batch]
    batch = pipeline.speed_batch(examples, s.speed_batch, lengths)
    speed = pipeline.speed_table(models, params, batch, s.speed_repeats)
    for variant, row in results.items():
        row.update(speed[variant])

    log("[compare 5/5] table, plots")
    summary = {"name": name, "task": s.task, "settings": dataclasses.asdict(s),
               "quick": quick_run, "variants": results,
               "majority": majority_baseline(task, lengths, s.eval_examples, models),
               "data": provenance.fingerprint(s.task),   # hashes of the datasets it used
               "device": jax.devices()[0].device_kind, "seconds": None}
    _plots(summary, models, params, examples, batch, output_dir)
    summary["seconds"] = time.time() - t_start
    pipeline.save_json(os.path.join(output_dir, "results.json"), summary, default=float)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(results_table(summary))
    log(results_table(summary))
    log(f"[compare] done in {summary['seconds']:.0f} s; outputs in {output_dir}")
    return summary


def _encoder_length(cfg: ModelConfig, length: int) -> int:
    from coda_flax.inputs import encoder_length
    return encoder_length(cfg, length)


def _plots(summary, models, params, examples, batch, output_dir):
    from coda_flax import viz
    from coda_flax.analysis import routing_stats
    from coda_flax.analysis.routing_report import batch_report
    st = summary["settings"]
    viz.plot_speed_quality(
        {name: (r["end_to_end_speedup"], r["quality"], 0.0)
         for name, r in summary["variants"].items()},
        os.path.join(output_dir, "speed_quality.png"),
        floor=summary["majority"][st["headline"]], floor_label="the most frequent answer",
        xlabel="measured end-to-end speedup over the Parallel Adapter",
        ylabel=f"{st['headline']} ({'lower' if st['lower_is_better'] else 'higher'} is better)",
        title=f"{summary['task']}: speed vs quality")
    routed = [v for v in models if routing_stats.is_routed(models[v].config)]
    pages = summary["task"] in ("coda_rendered_docs", "coda_rendered_words")
    ink = np.stack([np.asarray(e["ink"], bool) for e in examples]) if pages and routed else None
    shares = {}
    for v in routed:
        cfg = models[v].config
        x = batch["encoder_input_tokens"]
        report = batch_report(cfg, params[v], x, ink=ink)
        if ink is not None:
            shares[v] = report["ink"]
        lam = np.asarray(report["decisions"]["lam"])[:, 0]
        path = os.path.join(output_dir, f"routing_{v}.png")
        title = f"{v}: router preference (lam) per layer"
        if cfg.encoder_input == "patches":
            viz.plot_image_routing(lam, x[0], path, patch_size=cfg.patch_size, title=title)
        else:
            viz.plot_audio_routing(lam, x[0], path, title=title)
    if shares:
        summary["ink_share"] = shares
        viz.plot_ink_share(shares, os.path.join(output_dir, "ink_share.png"),
                           title="Does the router pick ink? (dashed: share of ink patches on "
                                 "the page)")


def results_table(summary: dict) -> str:
    s = summary["settings"]
    metric = s["headline"] + (" (lower is better)" if s["lower_is_better"] else "")
    lines = [f"{summary['task']}: Parallel Adapter vs CoDA ({s['input_length']} "
             f"{'patches' if s['domain'] == 'vision' else 'frames'} in, dense backbone "
             f"{s['pretrain_steps']} steps, {s['finetune_steps']} finetuning steps)", "",
             f"| variant | r | n | k | {metric} | "
             + "".join(f"{m} | " for m in s["extra_metrics"])
             + "encoder speedup | end-to-end speedup | trainable params |",
             "|---|---|---|---|---|" + "---|" * len(s["extra_metrics"]) + "---|---|---|"]
    for name, r in summary["variants"].items():
        extra = "".join(f"{r['eval'][m]:.1f} | " for m in s["extra_metrics"])
        lines.append(f"| {name} | {r['reduction']} | {r['n']} | {r['k']} | {r['quality']:.1f} "
                     f"| {extra}{r['encoder_speedup']:.2f}x | {r['end_to_end_speedup']:.2f}x "
                     f"| {r['trainable_params']:,} |")
    if "majority" in summary:
        m = summary["majority"]
        lines += ["", f"Always answering the most frequent validation target ({m['answer']!r}): "
                  f"{s['headline']} {m[s['headline']]:.1f}."]
    if "ink_share" in summary:
        lines += ["", "Share of routed patches that contain ink, per layer (the page's share of "
                  "ink patches in brackets: what random routing would give):", ""]
        for name, sh in summary["ink_share"].items():
            per_layer = ", ".join(f"{100 * x:.0f}%" for x in sh["routed_ink_share"])
            lines.append(f"- {name}: {per_layer} [{100 * sh['page_ink_share']:.0f}%]")
    return "\n".join(lines) + "\n"
