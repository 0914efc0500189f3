"""The speed stage of `coda claims` (issue 18, stage 3): every variant of one model size and
input length timed side by side in one process over that size's Parallel Adapter
(pipeline.speed_table: interleaved rounds, medians and the rounds' range), the timings kept
and reused while nothing they depend on changed. Nothing here reads argv or gin."""

from __future__ import annotations

import os
from typing import Callable, Sequence

from coda_flax.analysis.timing import machine
from coda_flax.experiments import pipeline
from coda_flax.experiments.runner import Run, digest, execute, fingerprint

Log = Callable[[str], None]


def timings_hash(runs: Sequence[Run], batch: int, repeats: int) -> str:
    """sha256 of what a timing depends on: the timed runs' names and fingerprints, the batch
    size, the rounds and the machine (timing.machine: platform, devices, cores)."""
    return digest([[[r.name, fingerprint(r)] for r in runs], batch, repeats, machine()])


def measure_speed(s, runs: dict[str, Run], root: str, log: Log, cache_dir: str | None = None
                  ) -> dict:
    """{group: pipeline.speed_table row}: per (length, size), every seed-0 variant timed side
    by side in one process over that size's PA. cache_dir: each (length, size)'s rows are kept
    in <cache_dir>/<length>_<size>.json with a hash of what was timed (the runs' fingerprints,
    the batch, the rounds and the machine: timing.machine), and reused while it matches (delete
    the folder to time again). s: a claims.ClaimsScale."""
    from coda_flax import tasks
    from coda_flax.train import run as train_run

    out = {}
    by_key: dict[str, list[str]] = {}
    for g in runs:
        if g.startswith("n"):
            n, size, _ = g.split("/")
            by_key.setdefault(f"{n}/{size}", []).append(g)
    for key, groups in sorted(by_key.items()):
        if len(groups) < 2:
            continue
        key_hash = timings_hash([runs[g] for g in groups], s.speed_batch, s.speed_repeats)
        cache = cache_dir and os.path.join(cache_dir, key.replace("/", "_") + ".json")
        kept = cache and pipeline.read_json(cache)
        if kept and kept.get("hash") == key_hash:
            log(f"  {key}: reusing the timings in {cache}")
            out.update(kept["rows"])
            continue
        loaded = {g: execute(runs[g], root, log=log, load_params=True) for g in groups}
        task = tasks.get_task_or_mixture(runs[groups[0]].task)
        lengths = dict(runs[groups[0]].feature_lengths)
        examples = train_run.eval_examples(task, lengths, "validation", s.speed_batch)
        batch = pipeline.speed_batch(examples, s.speed_batch, lengths)
        speed = pipeline.speed_table({g: v["model"] for g, v in loaded.items()},
                                     {g: v["params"] for g, v in loaded.items()}, batch,
                                     s.speed_repeats, baseline=f"{key}/pa")
        out.update(speed)
        if cache:
            os.makedirs(cache_dir, exist_ok=True)
            pipeline.save_json(cache, {"hash": key_hash, "rows": speed})
        log(f"  {key}: " + ", ".join(f"{g.split('/')[-1]} {v['encoder_speedup']:.2f}x"
                                     for g, v in speed.items()))
    return out
