"""`coda claims`: the paper's trade-offs at CPU scale (issue 18), one command, every stage reused.

    1 data      Shakespeare + vocabulary; "who gave it?" (pretraining); "who gave them?"
                (datasets.givers) at two lengths, its floors from the validation records;
                mostly blank pages with one small word (datasets.ink_pages)
    2 runs      experiments.runner.Run lists, run by runner.execute_all (reused / resumed;
                `jobs` of them side by side in worker processes, `coda claims --jobs N`):
                  backbones      a dense T5 per model size, pretrained on span corruption
                                 mixed with "who gave it?" (as `coda demo`)
                  sweep          the base size at both lengths: PA (r = 1) and CoDA k-to-all
                                 at every r of the sweep                            (a, g)
                  routers        soft top-k / sigmoid / first_k, k-to-k, at router_rates (b, c)
                  sizes          PA and CoDA of every size at the first length and r = 3, and
                                 at gap_point (the (n, r) where e and f are judged)       (e)
                  pretraining    CoDA pretrained N more steps, then finetuned, at the same
                                 points                                                   (f)
                  schedule       the base size's CoDA at gap_point (and probe_points) with k
                                 annealed over probe_anneal_fraction of the steps: is a fall
                                 there the routers' capacity or the k schedule's?   (a, e, f)
                  images         a dense patch model on the pages, PA and CoDA at image_rates
                                 (trained here, beside the text runs; used in stage 4)
                then more seeds, one at a time up to max_seeds, for both sides of every
                comparison still within 3 SE and for e's and f's runs at gap_point
    3 speed     every variant of a size and length timed side by side (claims_speed, through
                pipeline.speed_table; the timings kept and reused)
                over that size's PA; each backbone's "who gave it?" accuracy; where each routed
                run's layers send the needles (claims_needles)
    4 ink       per layer, the share of routed patches holding ink on every validation page
                (analysis.routing_report) against the page's share, and a Figure-7 picture
    5 report    analysis.claims: claims.{md,json} (`claim | paper | ours | holds?`), the schedule
                probe's lines, the per-run table (accuracy ± SE, floors, speedup and its rounds'
                range), tradeoff.png

SCALES (run_claims' default and `coda claims`': "reduced"): "full" (512 / 1,024 tokens, three sizes, every r and both router rates; not run: by
the reduced run's per-run times it takes well over the issue's 2 hours here), "reduced" (256 /
512 tokens, d32 and d64, r to 64, up to 3 seeds, e and f judged at n = 512, r = 32, the
schedule probe there and at r = 64: the README's run), "tiny" (the code path for tests: every
stage, 2-step runs). Nothing here reads argv or gin.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable

from coda_flax import config, variants
from coda_flax.analysis import claims as verdicts
from coda_flax.config import CodaConfig, ModelConfig
from coda_flax.experiments import pipeline
from coda_flax.experiments.claims_images import (anneal_stages, every_image_run, image_model,
                                                 image_runs, image_stage, ink_statistics,
                                                 prepare_pages, register_pages, run_images)
from coda_flax.experiments.claims_needles import needle_routing, needles_table
from coda_flax.experiments.claims_seeds import (accuracy_estimate, by_group, group, seed_rounds,
                                                variant, with_seed)
from coda_flax.experiments.claims_speed import measure_speed
from coda_flax.experiments.runner import Run, execute_all, load

Log = Callable[[str], None]
PRETRAIN_TASK = "coda_shakespeare_pretrain_mix"
GAVE_TASK = "coda_shakespeare_needle_gave"


def text_task(n: int) -> str:
    return f"coda_claims_givers_{n}"


@dataclasses.dataclass(frozen=True)
class ClaimsScale:
    """Sizes, steps and data of one `coda claims` run."""

    sizes: tuple = (("d32", 32), ("d64", 64), ("d128", 128))   # (label, d_model), small first
    base: str = "d64"                  # the size of the r sweep, routers and pretraining
    lengths: tuple = (512, 1024)
    rates: tuple = (1, 2, 3, 5, 8, 16)
    router_rates: tuple = (3, 5)
    gap_point: tuple = (512, 3)        # (n, r) where e and f are judged: the paper's r = 3 unless
                                       # CoDA sits at the ceiling there (nothing to shrink)
    num_encoder_layers: int = 4
    num_decoder_layers: int = 2
    adapter_dim: int = 32
    vocab_size: int = 2000
    num_needles: int = 3
    text_train: int = 4000
    text_validation: int = 400
    gave_train: int = 8000
    pretrain_length: int = 128
    pretrain_steps: int = 800
    pretrain_batch: int = 32
    pretrain_lr: float = 0.01
    coda_pretrain_steps: int = 200     # claim f: N steps of CoDA pretraining
    finetune_steps: int = 1000         # 300 left CoDA unsettled (seeds 100% and 67% at r = 3)
    k_anneal_stages: int = 4           # k from n to ceil(n / r) over the first 20% of the steps
                                       # in 4 stages (2, one jump, left r = 16 at 11%; 4: 99.5%)
    k_anneal_fraction: float = Run.k_anneal_fraction   # the share of the steps k anneals over
    probe_anneal_fraction: float = 0.5  # the schedule probe's (at gap_point, the base size)
    probe_points: tuple = ()           # more (n, r) of the sweep for the probe (seeded alike)
    batch_size: int = 8
    finetune_lr: float = 0.01
    max_seeds: int = 3
    eval_batch_size: int = 50
    image_train: int = 4000
    image_validation: int = 320
    image_page: int = 256              # square pages of image_page pixels
    image_words: int = 8               # the first image_words of ink_pages.WORDS
    image_font_sizes: tuple = (24, 32)  # type sizes (px), drawn uniformly per page
    image_patches: int = 256
    image_d_model: int = 64
    image_dense_steps: int = 1200
    image_finetune_steps: int = 300
    image_rates: tuple = (8, 16)
    image_attention: str = "k_to_all"  # the page models' CoDA attention
    image_seeds: int = 3               # seeds of the CoDA page runs (the ink varies by seed)
    image_lr: float = 3e-3
    image_batch: int = 16
    speed_batch: int = 8
    speed_repeats: int = 5

    def __post_init__(self):
        for name, (n, r) in [("gap_point", self.gap_point)] + [("probe_points", p)
                                                                for p in self.probe_points]:
            if n not in self.lengths or r not in self.rates:
                raise ValueError(f"{name} {(n, r)!r} is not a point of the sweep: its n must be "
                                 f"one of lengths {self.lengths} and its r one of rates "
                                 f"{self.rates}.")


SCALES = {
    "full": ClaimsScale(),
    "reduced": ClaimsScale(sizes=(("d32", 32), ("d64", 64)), base="d64", lengths=(256, 512),
                           rates=(1, 3, 5, 8, 16, 32, 64), router_rates=(3, 5), adapter_dim=16,
                           gap_point=(512, 32),  # r = 3: 99-100% at both sizes and pretrainings
                           probe_points=((512, 64), (256, 64)),
                           text_train=2000, text_validation=200,
                           pretrain_steps=1000, coda_pretrain_steps=100, finetune_steps=1000,
                           max_seeds=3, image_train=4000, image_validation=160,
                           image_d_model=32, image_dense_steps=1200, image_finetune_steps=300,
                           image_rates=(8, 16), image_seeds=3, speed_repeats=5),
    "tiny": ClaimsScale(sizes=(("d16", 16), ("d32", 32)), base="d16", lengths=(128, 160),
                        rates=(1, 3), router_rates=(3,), gap_point=(128, 3), num_encoder_layers=2,
                        num_decoder_layers=1, adapter_dim=4, vocab_size=300, num_needles=2,
                        text_train=32, text_validation=16, gave_train=32, pretrain_length=64,
                        pretrain_steps=2, pretrain_batch=4, coda_pretrain_steps=2,
                        finetune_steps=2, batch_size=4, max_seeds=1, eval_batch_size=16,
                        image_train=16, image_validation=8, image_page=128, image_patches=64,
                        image_d_model=16, image_dense_steps=2, image_finetune_steps=2,
                        image_rates=(4,), image_seeds=1, image_batch=4, speed_batch=2,
                        speed_repeats=1),
}


# ------------------------------------------------------------------------------ models
def text_model(s: ClaimsScale, vocab_size: int, d_model: int, coda: CodaConfig | None
               ) -> ModelConfig:
    """vocab_size: the tasks' (the SentencePiece pieces plus the sentinels)."""
    heads = max(2, d_model // 32)
    return config.model_config(coda=coda, vocab_size=vocab_size, d_model=d_model,
                               num_heads=heads, num_kv_heads=1, head_dim=d_model // heads,
                               d_ff=2 * d_model, num_encoder_layers=s.num_encoder_layers,
                               num_decoder_layers=s.num_decoder_layers)


def coda(s: ClaimsScale, r: float, attention: str = "k_to_all", router: str = "soft_topk"):
    """The CodaConfig of a listed variant at r with the scale's adapter (r = 1: the Parallel
    Adapter, no router)."""
    return variants.coda_at(r, attention, router, adapter_dim=s.adapter_dim)


# ------------------------------------------------------------------------------ stage 1: data
def prepare_data(s: ClaimsScale, data_dir: str | None, log: Log) -> dict:
    """Prepares and registers every task; returns vocab, text floors per length, pages' folder."""
    from coda_flax import tasks
    from coda_flax.datasets import givers, needle
    from coda_flax.datasets import shakespeare as corpus

    prepared = corpus.prepare_shakespeare(data_dir, vocab_size=s.vocab_size, log=log)
    vocab = prepared["vocab_model"]
    gave = needle.prepare_needle(data_dir, vocab, input_length=s.pretrain_length,
                                 num_train=s.gave_train, num_validation=s.text_validation,
                                 min_offset=0, question="gave", seed=1, log=log)
    texts = {n: givers.prepare_givers(data_dir, vocab, input_length=n,
                                      num_needles=s.num_needles, num_train=s.text_train,
                                      num_validation=s.text_validation, log=log)
             for n in s.lengths}
    pages = prepare_pages(s, data_dir, log, register=False)      # register_tasks does
    folders = {"gave": gave["dir"], "texts": {n: x["dir"] for n, x in texts.items()},
               "pages": pages["dir"]}
    register_tasks(s, data_dir, vocab, folders)
    floors = {n: text_floors(s, text["file"], n) for n, text in texts.items()}
    for n, f in floors.items():
        log(f"  floors at n = {n} (validation, {texts[n]['validation']} examples): majority "
            f"{100 * f['majority']:.1f}%, bag of words {100 * f['bag_of_words']:.1f}%, "
            f"truncation to ceil(n / r) tokens: " + ", ".join(
                f"r{r} {100 * v:.1f}%" for r, v in _by_rate(f["truncation"])))
    vocab_size = tasks.get_task_or_mixture(text_task(s.lengths[0])) \
        .output_features["targets"].vocabulary.vocab_size
    return {"vocab": vocab, "vocab_size": vocab_size, "floors": floors, "pages": pages["dir"],
            "page_words": pages["words"], "records": {n: x["file"] for n, x in texts.items()},
            "setup": functools.partial(register_tasks, s, data_dir, vocab, folders)}


def register_tasks(s: ClaimsScale, data_dir: str | None, vocab: str, folders: dict) -> None:
    """Registers every task of the claims over prepare_data's folders ({"gave", "texts" {n:
    folder}, "pages"}): prepare_data calls it, and so does each worker of a run with jobs > 1
    (prepare_data's "setup")."""
    from coda_flax import tasks
    from coda_flax.datasets import givers
    from coda_flax.tasks.offline import register_chain_task

    tasks.register_offline_tasks(data_dir, vocab, needles={"gave": folders["gave"]})
    for n, folder in folders["texts"].items():
        register_chain_task(text_task(n), folder, vocab, file_name=givers.GIVERS_FILE)
    register_pages(s, folders["pages"])


def text_floors(s: ClaimsScale, records_file: str, n: int) -> dict:
    """givers.floors of the validation records at every r of the sweep (the dataset's own
    statistics hold the bounds at multi_needle.FLOOR_RATES only)."""
    from coda_flax.datasets import givers
    from coda_flax.datasets.records import read_jsonl
    val = [r for r in read_jsonl(records_file) if r["split"] == "validation"]
    return givers.floors(val, n, rates=s.rates)


def _by_rate(bounds: dict) -> list:
    return sorted(bounds.items(), key=lambda kv: float(kv[0]))


# ------------------------------------------------------------------------------ stage 2: runs
def _options(data_dir, vocab=None, parameter_scale=False) -> tuple:
    """run.train's settings; parameter_scale: relative Adafactor steps (as the demo's)."""
    return (("parameter_scale", parameter_scale), ("schedule", "constant"), ("log_every", 50),
            ("checkpoint_every", 100), ("data_dir", data_dir), ("vocab_path", vocab),
            ("progress", False))


def backbone_runs(s: ClaimsScale, data: dict, data_dir) -> dict[str, Run]:
    """{size label: the dense pretraining Run}."""
    from coda_flax.tasks.span_corruption import random_spans_helper
    lengths = (("inputs", s.pretrain_length),
               ("targets", random_spans_helper(s.pretrain_length)[1]))
    return {label: Run(name=f"backbone/{label}", model=text_model(s, data["vocab_size"], d, None),
                       task=PRETRAIN_TASK, feature_lengths=lengths, steps=s.pretrain_steps,
                       batch_size=s.pretrain_batch, learning_rate=s.pretrain_lr,
                       trainable="all", k_anneal_stages=1, eval_batch_size=s.pretrain_batch,
                       eval_max_examples=s.pretrain_batch,
                       train_options=_options(data_dir, data["vocab"], parameter_scale=True))
            for label, d in s.sizes}


def finetune_runs(s: ClaimsScale, data: dict, data_dir) -> dict[str, Run]:
    """{group: the seed-0 finetuning Run} of every text variant (the module docstring's
    sweep, routers, sizes, pretraining). Group names: n<length>/<size>/<variant>."""
    backbones = backbone_runs(s, data, data_dir)
    dims = dict(s.sizes)

    def run(n, size, variant, cfg, init=None, fraction=s.k_anneal_fraction):
        return Run(name=f"n{n}/{size}/{variant}/seed0",
                   k_anneal_stages=anneal_stages(s, cfg), k_anneal_fraction=fraction,
                   model=text_model(s, data["vocab_size"], dims[size], cfg),
                   task=text_task(n),
                   feature_lengths=(("inputs", n), ("targets", s.num_needles + 2)),
                   steps=s.finetune_steps, batch_size=s.batch_size,
                   learning_rate=s.finetune_lr, init=init or backbones[size],
                   eval_batch_size=s.eval_batch_size,
                   train_options=_options(data_dir, data["vocab"]))

    runs = {}
    for n in s.lengths:                                              # sweep (a, g)
        for r in s.rates:
            runs[f"n{n}/{s.base}/{variant(r)}"] = run(n, s.base, variant(r), coda(s, r))
    n0 = s.lengths[0]
    for r in s.router_rates:                                         # routers (b, c)
        for router in ("soft_topk", "sigmoid", "first_k"):
            name = f"{router}_r{r}_k_to_k"
            runs[f"n{n0}/{s.base}/{name}"] = run(n0, s.base, name, coda(s, r, "k_to_k", router))
    base = backbones[s.base]
    for n, r in ef_points(s):                                # sizes (e) and pretraining (f)
        for size, _ in s.sizes:
            for x in (1, r):
                runs.setdefault(f"n{n}/{size}/{variant(x)}", run(n, size, variant(x), coda(s, x)))
        pre = dataclasses.replace(base, name=f"coda_pretrain/{s.base}/r{r}",
                                  model=text_model(s, data["vocab_size"], dims[s.base], coda(s, r)),
                                  steps=s.coda_pretrain_steps, init=base,
                                  k_anneal_stages=s.k_anneal_stages)
        name = f"{variant(r)}_pretrained"
        runs[f"n{n}/{s.base}/{name}"] = run(n, s.base, name, coda(s, r), init=pre)
    for n, r in probes(s):                                           # schedule (a, e, f)
        name = probe_variant(s, r)
        runs[f"n{n}/{s.base}/{name}"] = run(n, s.base, name, coda(s, r),
                                            fraction=s.probe_anneal_fraction)
    return runs


def probes(s: ClaimsScale) -> list[tuple[int, float]]:
    """The schedule probe's (n, r): gap_point, then probe_points."""
    return list(dict.fromkeys([tuple(s.gap_point), *map(tuple, s.probe_points)]))


def probe_variant(s: ClaimsScale, r: float) -> str:       # e.g. coda_r32_anneal50
    return f"{variant(r)}_anneal{round(100 * s.probe_anneal_fraction)}"


def ef_points(s: ClaimsScale) -> list[tuple[int, float]]:
    """The (n, r) points of the sizes' and pretraining runs: the paper's (the first length,
    r = 3), then the scale's gap_point, where e and f are judged."""
    return list(dict.fromkeys([(s.lengths[0], 3), tuple(s.gap_point)]))


def comparisons(s: ClaimsScale) -> list[tuple[str, str]]:
    """The pairs of groups the text claims rest on (a: PA vs r3 and vs the largest r; b, c:
    the routers; at gap_point, e: PA vs CoDA per size and the sizes' CoDA, f: 0 vs N
    pretraining steps)."""
    n0, b = s.lengths[0], s.base
    pairs = [(f"n{n}/{b}/pa", f"n{n}/{b}/coda_r{r}") for n in s.lengths
             for r in sorted({3, max(s.rates)} & set(s.rates))]
    for r in s.router_rates:
        soft, sig, first = (f"n{n0}/{b}/{x}_r{r}_k_to_k" for x in ("soft_topk", "sigmoid",
                                                                   "first_k"))
        pairs += [(soft, sig), (sig, first), (f"n{n0}/{b}/coda_r{r}", soft)]
    n, coda_r = s.gap_point[0], variant(s.gap_point[1])
    pairs += [(f"n{n}/{size}/pa", f"n{n}/{size}/{coda_r}") for size, _ in s.sizes]
    pairs.append((f"n{n}/{s.sizes[0][0]}/{coda_r}", f"n{n}/{s.sizes[-1][0]}/{coda_r}"))
    pairs.append((f"n{n}/{b}/{coda_r}_pretrained", f"n{n}/{b}/{coda_r}"))
    return [(x, y) for x, y in pairs if x != y]


def gap_groups(s: ClaimsScale) -> list[str]:
    """e's and f's groups at gap_point and the schedule probe's (both schedules and PA at each
    point), seeded up to max_seeds whatever their first seed shows: off the ceiling seeds differ
    by more than one seed's binomial error shows (and e rests on a difference of two gaps)."""
    (n, r), b = s.gap_point, s.base
    groups = [f"n{n}/{size}/{v}" for size, _ in s.sizes for v in ("pa", variant(r))] + \
        [f"n{n}/{b}/{variant(r)}_pretrained"]
    for n, r in probes(s):
        groups += [f"n{n}/{b}/{v}" for v in ("pa", variant(r), probe_variant(s, r))]
    return list(dict.fromkeys(groups))


def seeded_runs(s: ClaimsScale, text: dict[str, Run], results: dict) -> dict[str, Run]:
    """text ({group: seed-0 Run}) with, after each of gap_groups, its other seeds in results
    (as "<group>/seed<k>"): where seeds part, the needle table shows each."""
    grouped, gaps, out = by_group(results), set(gap_groups(s)), {}
    for g, run in text.items():
        out[g] = run
        if g in gaps:
            out.update({f"{g}/seed{k}": with_seed(run, k)
                        for k in range(1, len(grouped.get(g, ())))})
    return out


# ------------------------------------------------------------------------------ stages 3-5
def backbone_lookup(s: ClaimsScale, data: dict, data_dir, root: str, log: Log) -> dict:
    """{size: accuracy (%) of its dense backbone on "who gave it?" (validation)}: the lookup
    every needle of the text task needs, which only the frozen layers can do."""
    from coda_flax import tasks
    from coda_flax.train import run as train_run
    out = {}
    for size, run in backbone_runs(s, data, data_dir).items():
        e = train_run.evaluate_params(*load(root, run), tasks.get_task_or_mixture(GAVE_TASK),
                                      {"inputs": s.pretrain_length, "targets": 4},
                                      "validation", s.eval_batch_size)
        out[size] = {"accuracy": e["accuracy"], "num_examples": e["num_examples"]}
        log(f"  backbone {size}: 'who gave it?' {e['accuracy']:.1f}% of {e['num_examples']}")
    return out


# ------------------------------------------------------------------------------ the command
def stage_of(name: str) -> str:
    """Which stage of the module docstring a run belongs to (for the per-stage times)."""
    g = group(name)
    if g.startswith("images/"):
        return "images"
    if name != g and not name.endswith("/seed0"):
        return "extra seeds"
    for prefix, stage in (("backbone/", "backbones"), ("coda_pretrain/", "pretraining")):
        if g.startswith(prefix):
            return stage
    variant = g.split("/")[-1]
    for mark, stage in (("_pretrained", "pretraining"), ("_k_to_k", "routers"),
                        ("_anneal", "schedule")):
        if mark in variant:
            return stage
    return "sweep / sizes"


def run_claims(output_dir: str, scale: str = "reduced", data_dir: str | None = None,
               log: Log = print, data_only: bool = False, images_only: bool = False,
               jobs: int = 1) -> dict:
    """Every stage (module docstring); writes claims.{md,json}, tradeoff.png and the Figure-7
    picture (figure7/) into output_dir, the runs under output_dir/runs. Returns the summary.
    data_only: stage 1 only (the data and its floors, floors.json). images_only: the pages,
    their runs and the ink alone (claims_images.run_images: images.{md,json}, figure7/).
    jobs: runs trained side by side (runner.execute_all; the page runs train in stage 2, beside
    the text runs, so that the dense page reader does not run alone)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}.")
    s = SCALES[scale]
    root = os.path.join(output_dir, "runs")
    os.makedirs(root, exist_ok=True)
    if images_only:
        return run_images(s, scale, output_dir, data_dir, log, jobs)
    clock, t0 = {}, time.time()

    def lap(stage):
        clock[stage] = round(time.time() - t0 - sum(clock.values()), 1)

    log(f"[claims 1/5] data (scale {scale!r})")
    data = prepare_data(s, data_dir, log)
    lap("data")
    if data_only:
        floors = {str(n): f for n, f in data["floors"].items()}
        pipeline.save_json(os.path.join(output_dir, "floors.json"), floors)
        return {"scale": scale, "floors": floors}
    text = finetune_runs(s, data, data_dir)
    pages = every_image_run(s, image_runs(s, data, data_dir))
    log(f"[claims 2/5] {len(text)} text finetuning runs (plus their backbones), seed 0, and "
        f"the {len(pages)} page runs" + (f"; {jobs} side by side" if jobs > 1 else ""))

    def train(runs):
        return execute_all(runs, root, log=log, jobs=jobs, setup=data["setup"])
    results = train([*pages, *text.values()])          # the long dense page reader first
    results = {name: r for name, r in results.items() if not name.startswith("images/")}
    results = seed_rounds(text, results, comparisons(s), gap_groups(s), s.max_seeds, train, log)
    lap("training")
    log("[claims 3/5] speed, side by side per size and length")
    speed = measure_speed(s, text, root, log, os.path.join(output_dir, "speed"))
    lookup = backbone_lookup(s, data, data_dir, root, log)
    needles = needle_routing(seeded_runs(s, text, results), root, data["records"], None, log)
    lap("speed")
    log("[claims 4/5] the pages (their runs trained in stage 2): routed patches holding ink "
        "per layer")
    images = image_stage(s, {"dir": data["pages"], "words": data["page_words"]}, data_dir,
                         output_dir, log)                      # its runs trained in stage 2
    lap("images")
    log("[claims 5/5] claims table, per-run table, plot")
    summary = report(s, scale, data, text, images, results, speed, output_dir, lookup, needles)
    lap("report")
    summary["stage_seconds"] = clock
    summary["training_seconds_by_stage"] = training_seconds({**results, **images["results"]})
    pipeline.save_json(os.path.join(output_dir, "claims.json"), summary, default=float)
    log(summary["markdown"])
    log(f"[claims] done in {time.time() - t0:.0f} s ({scale} scale); outputs in {output_dir}; "
        f"stages (s): {clock}; training time of the runs when trained (s): "
        f"{summary['training_seconds_by_stage']}")
    return summary


def run_pilot(output_dir: str, scale: str, groups: list, data_dir=None, log: Log = print,
              jobs: int = 1) -> str:
    """A few of a scale's text runs (groups n<length>/<size>/<variant>) and their backbones, as
    run_claims executes them (it reuses them): their backbone_lookup and run_table."""
    s = SCALES[scale]
    data = prepare_data(s, data_dir, log)
    text = finetune_runs(s, data, data_dir)
    if set(groups) - set(text):
        raise ValueError(f"unknown runs {sorted(set(groups) - set(text))}; choose from "
                         f"{sorted(text)}")
    root = os.path.join(output_dir, "runs")
    results = execute_all([text[g] for g in groups], root, log=log, jobs=jobs,
                          setup=data["setup"])
    sizes = tuple(x for x in s.sizes if x[0] in {g.split("/")[1] for g in groups})
    lookup = backbone_lookup(dataclasses.replace(s, sizes=sizes), data, data_dir, root, log)
    est = {g: accuracy_estimate([results[text[g].name]]) for g in groups}
    table = run_table(data["floors"], {g: text[g] for g in groups}, est, {},
                      {g: [results[text[g].name]] for g in groups})
    table += "\nBackbones, 'who gave it?': " + ", ".join(
        f"{size} {v['accuracy']:.1f}% of {v['num_examples']}" for size, v in lookup.items())
    log(table)
    return table


def training_seconds(results: dict[str, dict]) -> dict[str, float]:
    """Sum of each run's own training + evaluation time (result.json, also when reused) per
    stage: what a fresh run of that stage takes."""
    out: dict[str, float] = {}
    for name, r in results.items():
        out[stage_of(name)] = round(out.get(stage_of(name), 0.0) + float(r.get("seconds", 0)), 1)
    return out


def report(s: ClaimsScale, scale: str, data: dict, text: dict, images: dict, results: dict,
           speed: dict, output_dir: str, lookup: dict, needles: dict) -> dict:
    """The claims rows, tables and plot (module docstring, stage 5); images: image_stage's;
    lookup: backbone_lookup's; needles: claims_needles.needle_routing's."""
    grouped = by_group(results)
    est = {g: accuracy_estimate(grouped[g]) for g in text}
    n0, b = s.lengths[0], s.base
    top = max(r for r in s.rates if r <= verdicts.PAPER_MAX_R)
    ng, rg = s.gap_point
    rows = [
        verdicts.claim_a({f"n = {n}": {r: est[f"n{n}/{b}/{variant(r)}"] for r in s.rates}
                          for n in s.lengths}),
        verdicts.claim_b({r: {x: est[f"n{n0}/{b}/{x}_r{r}_k_to_k"]
                              for x in ("soft_topk", "sigmoid", "first_k")}
                          for r in s.router_rates}),
        verdicts.claim_c({r: (est[f"n{n0}/{b}/coda_r{r}"], est[f"n{n0}/{b}/soft_topk_r{r}_k_to_k"])
                          for r in s.router_rates}),
        images["row"],
        verdicts.claim_e([(size, est[f"n{ng}/{size}/pa"], est[f"n{ng}/{size}/{variant(rg)}"])
                          for size, _ in s.sizes], where=f"n = {ng}, r = {rg}"),
        verdicts.claim_f({0: est[f"n{ng}/{b}/{variant(rg)}"],
                          s.coda_pretrain_steps: est[f"n{ng}/{b}/{variant(rg)}_pretrained"]},
                         where=f"n = {ng}, r = {rg}"),
        verdicts.claim_g({n: {r: speed[f"n{n}/{b}/{variant(r)}"]["encoder_speedup"]
                              for r in s.rates} for n in s.lengths},
                         {n: (top, est[f"n{n}/{b}/pa"], est[f"n{n}/{b}/{variant(top)}"])
                          for n in s.lengths}),
    ]
    schedule = [verdicts.schedule_probe(
        est[f"n{n}/{b}/pa"], est[f"n{n}/{b}/{variant(r)}"], est[f"n{n}/{b}/{probe_variant(s, r)}"],
        (s.k_anneal_fraction, s.probe_anneal_fraction), where=f"n = {n}, r = {r}, {b}" + (
            "; e and f are judged here" if (n, r) == tuple(s.gap_point) else ""))
        for n, r in probes(s)]
    runs_md = (run_table(data["floors"], text, est, speed, grouped) + "\n"
               + needles_table(needles) + "\n" + images["table"])
    floors_line = " ".join(
        f"Floors at n = {n}: majority {100 * f['majority']:.1f}%, bag of words "
        f"{100 * f['bag_of_words']:.1f}%, truncation bound " + ", ".join(
            f"r{r} {100 * v:.1f}%" for r, v in _by_rate(f["truncation"])) + "."
        for n, f in data["floors"].items())
    floors_line += " Backbones, 'who gave it?' (the lookup each needle needs): " + ", ".join(
        f"{size} {v['accuracy']:.1f}% of {v['num_examples']}" for size, v in lookup.items()) + "."
    markdown = (f"Claims at CPU scale ({scale} scale; ± = standard error over the seeds' "
                f"answers, the larger of binomial and seed-to-seed). {floors_line}\n\n"
                + verdicts.claims_markdown(rows) + "\n" + verdicts.schedule_markdown(schedule)
                + runs_md)
    with open(os.path.join(output_dir, "claims.md"), "w") as f:
        f.write(markdown)
    plot(s, est, speed, data["floors"][n0], os.path.join(output_dir, "tradeoff.png"))
    return {"scale": scale, "settings": dataclasses.asdict(s), "claims": rows,
            "schedule": schedule,
            "floors": {str(n): f for n, f in data["floors"].items()},
            "accuracy": {g: dataclasses.asdict(e) for g, e in
                         {**est, **images["accuracy"]}.items()},
            "speed": speed, "ink": {str(r): v for r, v in images["ink"].items()},
            "backbone_lookup": lookup, "needles": needles, "markdown": markdown}


def run_table(floors, text, est, speed, grouped) -> str:
    """Every text group: accuracy ± SE (seeds) beside its floors and measured speedup (the
    median's ratio, and the lowest and highest of the rounds' ratios)."""
    lines = ["| run | k | accuracy % ± SE (seeds) | majority % | bag of words % | truncation "
             "bound at r % | encoder speedup (rounds' range) | trainable params |",
             "|---|---|---|---|---|---|---|---|"]
    for g, run in text.items():
        n = int(g.split("/")[0][1:])
        r, f = run.model.coda.reduction, floors[n]
        trunc = f["truncation"].get(str(r))
        trunc = "-" if trunc is None else f"{100 * trunc:.1f}"
        fast = "-" if g not in speed else (f"{speed[g]['encoder_speedup']:.2f}x (%.2f-%.2f)"
                                           % tuple(speed[g]["encoder_speedup_range"]))
        lines.append(f"| {g} | {run.model.coda.k(n)} | {est[g].text()} | "
                     f"{100 * f['majority']:.1f} | {100 * f['bag_of_words']:.1f} | {trunc} | "
                     f"{fast} | {grouped[g][0].get('trainable_params', 0):,} |")
    return "\n".join(lines) + "\n"


def plot(s: ClaimsScale, est: dict, speed: dict, floors: dict, path: str) -> str:
    """Figure 5: one line per model size (the base size once per length)."""
    lines = {}
    for g, e in est.items():
        n, size, variant = g.split("/")
        if g not in speed or not (variant == "pa" or variant.startswith("coda_r")) \
                or variant.endswith("_pretrained") or "_anneal" in variant:
            continue
        label = f"{size}, n = {n[1:]}"
        lines.setdefault(label, []).append((speed[g]["encoder_speedup"], 100 * e.mean,
                                            100 * e.se, variant.replace("coda_", ""),
                                            tuple(speed[g]["encoder_speedup_range"])))
    return verdicts.plot_tradeoff(
        lines, path, floors={"majority": 100 * floors["majority"],
                             "bag of words (the best without routing)":
                                 100 * floors["bag_of_words"]})


__all__ = ["ClaimsScale", "SCALES", "run_claims", "run_pilot", "finetune_runs", "image_runs",
           "backbone_runs", "comparisons", "gap_groups", "seeded_runs", "ink_statistics",
           "stage_of", "image_model", "variant", "ef_points", "text_floors", "group",
           "with_seed"]
