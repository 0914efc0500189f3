"""The image claim of `coda claims` (issue 18's d, the paper's Figure 7): on a mostly blank page
the router picks the patches that hold ink.

    pages        datasets.ink_pages: one of a few words at a random place on a white page,
                 registered as the task INK_TASK
    runs         a dense patch model trained to read the word (every parameter), then the
                 Parallel Adapter and CoDA at each image rate finetuned from it (frozen backbone)
    ink          per layer, the share of the routed patches that hold ink on every validation
                 page against the page's own share (chance), mean ± SE over pages (and over
                 image_seeds seeds of the CoDA runs: combine_seeds); how much of
                 the router scores' variance the position explains against the ink
                 (analysis.router_scores); the Figure-7 picture of the first page
    image_stage  the runs (with every seed), the ink and claim d's row, as `coda claims` runs
                 them; run_images: the stage alone (`--images-only`): images.{md,json}

`s` is an experiments.claims.ClaimsScale (its image_* fields); nothing here reads argv or gin.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Callable

import numpy as np

from coda_flax import variants
from coda_flax.config import CodaConfig, ModelConfig
from coda_flax.experiments import pipeline
from coda_flax.experiments.claims_seeds import variant
from coda_flax.experiments.runner import Run, execute, execute_all

Log = Callable[[str], None]
INK_TASK = "coda_claims_ink_pages"


def image_model(s, coda: CodaConfig | None) -> ModelConfig:
    d = s.image_d_model
    heads = max(2, d // 32)
    return ModelConfig(vocab_size=259, d_model=d, num_heads=heads, num_kv_heads=1,
                       head_dim=d // heads, d_ff=2 * d, num_encoder_layers=s.num_encoder_layers,
                       num_decoder_layers=s.num_decoder_layers, encoder_input="patches",
                       encoder_relative_attention=False, patch_size=16, num_channels=3,
                       max_patch_positions=64, coda=coda)


def prepare_pages(s, data_dir: str | None, log: Log, register: bool = True) -> dict:
    """The pages of s (datasets.ink_pages, built once), registered as INK_TASK unless not
    `register` (the caller registers them with its other tasks); returns their meta.json plus
    "dir"."""
    from coda_flax.datasets import ink_pages

    pages = ink_pages.prepare_ink_pages(data_dir, words=ink_pages.WORDS[:s.image_words],
                                        num_train=s.image_train,
                                        num_validation=s.image_validation,
                                        page_size=(s.image_page, s.image_page),
                                        font_sizes=s.image_font_sizes, log=log)
    if register:
        register_pages(s, pages["dir"])
    return pages


def register_pages(s, pages_dir: str) -> None:
    """Registers INK_TASK over the prepared pages (also each worker's setup with jobs > 1)."""
    from coda_flax.tasks.vision import register_page_task
    register_page_task(INK_TASK, pages_dir, max_patches=s.image_patches)


def _options(data_dir) -> tuple:
    return (("parameter_scale", False), ("schedule", "constant"), ("log_every", 50),
            ("checkpoint_every", 100), ("data_dir", data_dir), ("vocab_path", None),
            ("progress", False))


def anneal_stages(s, cfg: CodaConfig) -> int:
    """A finetuning Run's k_anneal_stages: s.k_anneal_stages for a config that routes. A
    Parallel Adapter's plan is k = n whatever the stages, so its runs keep the runner's default
    (and with it the runs an earlier version trained)."""
    return s.k_anneal_stages if cfg.reduction > 1 else Run.k_anneal_stages


def image_runs(s, data: dict, data_dir) -> dict[str, Run]:
    """{group: Run} of the page task: PA and CoDA (soft top-k, s.image_attention) at
    image_rates from a dense patch model. data: {"pages": the pages' folder, ...}."""
    lengths = (("inputs", s.image_patches), ("targets", 8))
    dense = Run(name="images/dense", model=image_model(s, None), task=INK_TASK,
                feature_lengths=lengths, steps=s.image_dense_steps, batch_size=s.image_batch,
                learning_rate=s.image_lr, trainable="all",
                k_anneal_stages=1, eval_batch_size=s.eval_batch_size,
                train_options=_options(data_dir))
    out = {}
    for r in (1, *s.image_rates):
        name = variant(r)
        cfg = variants.coda_at(r, s.image_attention, adapter_dim=s.adapter_dim)
        out[f"images/{name}"] = dataclasses.replace(
            dense, name=f"images/{name}/seed0", model=image_model(s, cfg),
            steps=s.image_finetune_steps, trainable="finetune", init=dense,
            k_anneal_stages=anneal_stages(s, cfg))
    return out


# ------------------------------------------------------------------------------ ink
def ink_statistics(selected_pages, ink_pages_, valid_pages) -> dict:
    """Per layer, the mean over pages of routing_stats.ink_share's routed_ink_share and its
    standard error over pages, the same of the page's ink share (chance), and the mean share
    of a page's ink patches that each layer routes (ink_coverage).
    selected_pages: [pages] of [L, n] bool; ink_pages_, valid_pages: [pages] of [n] bool."""
    from coda_flax.analysis.routing_stats import ink_share
    per = [ink_share(sel, ink, val) for sel, ink, val in
           zip(selected_pages, ink_pages_, valid_pages)]
    shares = np.stack([p["routed_ink_share"] for p in per])              # [pages, L]
    page = np.array([p["page_ink_share"] for p in per])
    sqrt = math.sqrt(len(per))
    se = (lambda x: float(np.std(x, ddof=1) / sqrt) if len(per) > 1 else 0.0)
    return {"routed_ink_share": shares.mean(0).tolist(),
            "routed_ink_share_se": [se(shares[:, i]) for i in range(shares.shape[1])],
            "page_ink_share": float(page.mean()), "page_ink_share_se": se(page),
            "ink_coverage": np.stack([p["ink_coverage"] for p in per]).mean(0).tolist(),
            "pages": len(per)}


def routed_ink(run: Run, root: str, pages_dir: str, out_dir: str, log: Log) -> dict:
    """ink_statistics of a finetuned page model over every validation page (each through
    analysis.routing_report, as `coda visualize` reads an image), plus per layer the mean
    weight m of the routed patches (routed_weight: near 0, the layer barely changes them) and
    the router scores' variance shares (score_position_share, score_ink_share, score_ink_gap:
    analysis.router_scores); writes the Figure-7 picture of the first page
    (routing_image.png, ink_share.png in out_dir)."""
    from PIL import Image

    from coda_flax.analysis import routing_report as rr
    from coda_flax.analysis.router_scores import router_scores, score_variance
    from coda_flax.datasets.records import read_jsonl

    loaded = execute(run, root, log=log, load_params=True)
    cfg, params = loaded["model"].config, loaded["params"]
    reports = []
    for rec in read_jsonl(os.path.join(pages_dir, "validation.jsonl")):
        with Image.open(os.path.join(pages_dir, rec["image"])) as img:
            image = np.asarray(img.convert("RGB"), np.uint8)
        inp = rr.image_input(cfg, image, description=rec["id"],
                             max_patches=dict(run.feature_lengths)["inputs"])
        reports.append(rr.routing_report(cfg, params, inp))
    rr.write_report(reports[0], out_dir, run.name.rsplit("/seed", 1)[0])
    out = ink_statistics([r.selected for r in reports], [r.input.ink for r in reports],
                         [r.valid for r in reports])
    out["routed_weight"] = np.mean([[lam[sel].mean() for lam, sel in zip(r.lam, r.selected)]
                                    for r in reports], axis=0).tolist()
    values = np.stack([r.input.values for r in reports])
    scores = np.concatenate([router_scores(cfg, params, values[i:i + 32])["scores"]
                             for i in range(0, len(values), 32)], axis=1)
    shares = score_variance(scores, np.stack([r.input.ink for r in reports]),
                            np.stack([r.valid for r in reports]))
    return dict(out, score_position_share=shares["position"], score_ink_share=shares["ink"],
                score_ink_gap=shares["ink_gap"])


def seeded(run: Run, seed: int) -> Run:
    return dataclasses.replace(run, name=f"{run.name.rsplit('/seed', 1)[0]}/seed{seed}",
                               seed=seed)


def combine_seeds(inks: list[dict]) -> dict:
    """One routed_ink dict from several seeds': every per-layer list and number averaged over
    the seeds; routed_ink_share_se the larger of the pages' (sqrt(mean SE^2 / seeds)) and the
    seeds' (std / sqrt(seeds)); each seed's routed_ink_share kept under per_seed."""
    if len(inks) == 1:
        return dict(inks[0], per_seed=[inks[0]["routed_ink_share"]])
    num = len(inks)
    out = {k: (np.mean([v[k] for v in inks], axis=0).tolist() if isinstance(inks[0][k], list)
               else float(np.mean([v[k] for v in inks]))) for k in inks[0]}
    shares = np.array([v["routed_ink_share"] for v in inks])
    pages_se = np.sqrt(np.mean(np.square([v["routed_ink_share_se"] for v in inks]), 0) / num)
    out["routed_ink_share_se"] = np.maximum(pages_se, shares.std(0, ddof=1) / math.sqrt(num)
                                            ).tolist()
    out["pages"] = inks[0]["pages"]
    return dict(out, per_seed=shares.tolist())


def seeded_ink(s, run: Run, root: str, pages_dir: str, out_dir: str, log: Log) -> dict:
    """combine_seeds of routed_ink over seeds 0 .. s.image_seeds - 1 of a CoDA page run (each
    trained here unless finished); the picture of seed 0 in out_dir, the others' beside it."""
    return combine_seeds([routed_ink(seeded(run, k), root, pages_dir,
                                     out_dir if k == 0 else f"{out_dir}_seed{k}", log)
                          for k in range(s.image_seeds)])


def image_table(images, img, words, ink, top) -> str:
    """The page runs' exact match and the ink lines (markdown)."""
    lines = ["", f"Pages (one of {len(words)} words, answers stratified: majority floor "
                 f"{100 / len(words):.1f}%): exact match % ± SE.", "",
             "| run | exact match % ± SE |", "|---|---|"]
    lines += [f"| {g} | {img[g].text()} |" for g in images]
    rates = ink if "pages" not in ink else {top: ink}
    for r, v in sorted(rates.items()):
        lines += ["", f"images/coda_r{r}: share of routed patches holding ink per layer "
                      f"(mean over {v['pages']} validation pages ± SE): " + ", ".join(
                          f"layer {i} {100 * m:.1f} ± {100 * e:.1f}%" for i, (m, e) in
                          enumerate(zip(v["routed_ink_share"], v["routed_ink_share_se"])))
                  + f"; the page's share (chance) {100 * v['page_ink_share']:.1f}%."]
        if len(v.get("per_seed", ())) > 1:
            lines.append("Per seed: " + "; ".join(
                f"seed {k}: " + ", ".join(f"{100 * m:.1f}%" for m in shares)
                for k, shares in enumerate(v["per_seed"])) + ".")
        lines.append("Share of the page's ink patches routed per layer: " + ", ".join(
            f"{100 * c:.0f}%" for c in v["ink_coverage"]) + ".")
        if "routed_weight" in v:
            lines.append("Mean weight m of the routed patches per layer: " + ", ".join(
                f"{m:.2f}" for m in v["routed_weight"]) + ".")
        if "score_position_share" in v:
            lines.append(f"Its router scores per layer: variance explained by the position / by "
                         f"the ink, and the ink's mean score minus the rest's in SDs: " + ", ".join(
                             f"{100 * p:.0f}% / {100 * k:.0f}% ({g:+.2f})" for p, k, g in
                             zip(v["score_position_share"], v["score_ink_share"],
                                 v["score_ink_gap"])) + ".")
    return "\n".join(lines) + "\n"


def every_image_run(s, runs: dict[str, Run]) -> list[Run]:
    """image_runs' runs and the CoDA runs' other seeds (s.image_seeds each): what image_stage
    trains (`coda claims` trains them beside the text runs, and image_stage reuses them)."""
    return [*runs.values(), *[seeded(runs[f"images/coda_r{r}"], k) for r in s.image_rates
                              for k in range(1, s.image_seeds)]]


def image_stage(s, pages: dict, data_dir: str | None, output_dir: str, log: Log,
                jobs: int = 1, setup=None) -> dict:
    """The page runs (every CoDA rate with s.image_seeds seeds; reused when finished, resumed
    when stopped), the ink at every image rate (figure7/ for the largest, figure7_r<r>/ for the
    others) and claim d's row (every image rate). pages: prepare_pages' dict. Returns {"row",
    "table" (markdown), "ink" {rate: combine_seeds dict}, "accuracy" {group: Estimate},
    "results" {run name: result}, "run_seconds" {group: seconds}}. jobs, setup: execute_all's."""
    from coda_flax.analysis import claims as verdicts
    from coda_flax.analysis.estimates import estimate

    root = os.path.join(output_dir, "runs")
    runs = image_runs(s, {"pages": pages["dir"]}, data_dir)
    results = execute_all(every_image_run(s, runs), root, log=log, jobs=jobs, setup=setup)
    shown = {"images/dense": runs["images/pa"].init, **runs}       # the dense reader too
    names = {g: [r.name] + [seeded(r, k).name for k in range(1, s.image_seeds)
                            if g.startswith("images/coda")] for g, r in shown.items()}
    img = {g: estimate([results[n]["eval"]["exact_match"] / 100.0 for n in names[g]],
                       results[names[g][0]]["eval"]["num_examples"]) for g in shown}
    top = max(s.image_rates)
    ink = {r: seeded_ink(s, runs[f"images/coda_r{r}"], root, pages["dir"], os.path.join(
        output_dir, "figure7" if r == top else f"figure7_r{r}"), log) for r in s.image_rates}
    row = verdicts.claim_d({r: (list(zip(v["routed_ink_share"], v["routed_ink_share_se"])),
                                (v["page_ink_share"], v["page_ink_share_se"]))
                            for r, v in ink.items()})
    return {"row": row, "table": image_table(shown, img, pages["words"], ink, top), "ink": ink,
            "accuracy": img, "results": results,
            "run_seconds": {g: results[r.name].get("seconds") for g, r in shown.items()}}


def run_images(s, scale: str, output_dir: str, data_dir: str | None, log: Log,
               jobs: int = 1) -> dict:
    """The image stage alone (`coda claims --images-only`): the pages, then image_stage (its
    runs in `jobs` processes); writes images.{md,json} into output_dir."""
    from coda_flax.analysis import claims as verdicts

    t0 = time.time()
    log(f"[claims --images-only] pages (scale {scale!r})")
    pages = prepare_pages(s, data_dir, log)
    setup = functools.partial(register_pages, s, pages["dir"])
    stage = image_stage(s, pages, data_dir, output_dir, log, jobs, setup)
    markdown = (f"Claim d at the {scale} scale (images/coda_r<r>, r in {list(s.image_rates)}).\n\n"
                + verdicts.claims_markdown([stage["row"]]) + stage["table"])
    with open(os.path.join(output_dir, "images.md"), "w") as f:
        f.write(markdown)
    summary = {"scale": scale, "claim": stage["row"],
               "ink": {str(r): v for r, v in stage["ink"].items()},
               "accuracy": {g: dataclasses.asdict(e) for g, e in stage["accuracy"].items()},
               "seconds": round(time.time() - t0, 1), "run_seconds": stage["run_seconds"],
               "markdown": markdown}
    pipeline.save_json(os.path.join(output_dir, "images.json"), summary, default=float)
    log(markdown)
    return summary


__all__ = ["INK_TASK", "anneal_stages", "image_model", "prepare_pages", "register_pages",
           "image_runs", "every_image_run",
           "ink_statistics", "routed_ink", "combine_seeds", "seeded_ink", "image_table",
           "image_stage", "run_images"]
