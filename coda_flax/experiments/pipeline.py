"""The steps the experiments share besides running them (experiments/runner.py does that):

    parameter_counts   trainable / total parameters of a variant
    speed_batch        one batch of validation examples, repeated up to the batch size
    speed_table        encoder and end-to-end time per model, speedups over a baseline
    load_json, save_json    JSON files written atomically (results, run records); read_json:
                            None where missing or unreadable

`coda compare` and the demo measure speed here, side by side in one process, after the runner
has trained or reused their runs. Plain keyword arguments; nothing here reads argv or gin.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

ENCODER, END_TO_END = "encoder", "end_to_end"


def load_json(path: str):
    with open(path) as f:
        return json.load(f)


def read_json(path: str):
    """The JSON in path, or None where it is missing or unreadable (a cache to rebuild)."""
    try:
        return load_json(path)
    except (OSError, ValueError):
        return None


def save_json(path: str, obj, **dump_kwargs) -> str:
    """Writes JSON atomically (datasets.cache.atomic_path: a temporary file, then a rename)."""
    from coda_flax.datasets.cache import atomic_path
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, **dump_kwargs)
    return path


def parameter_counts(params, trainable: str = "finetune") -> dict[str, int]:
    """{"trainable", "total"} parameters under the trainable set ("finetune" or "all")."""
    from coda_flax.checkpoints.peft import parameter_summary, trainable_mask
    counts = parameter_summary(params, trainable_mask(params, trainable))
    return {"trainable": counts["trainable"], "total": counts["total"]}


def speed_batch(examples: Sequence[Mapping[str, Any]], size: int,
                feature_lengths: Mapping[str, int]) -> dict:
    """A batch of `size` rows from `examples` (repeated when there are fewer)."""
    from coda_flax.train import run
    return run.to_batch((list(examples) * size)[:size], feature_lengths)


def speed_table(models: Mapping[str, Any], params: Mapping[str, Any], batch: dict,
                repeats: int, baseline: str | None = "parallel_adapter") -> dict[str, dict]:
    """Times every model's encoder and encode + greedy decoding on the same batch
    (analysis.timing.measure_models: interleaved rounds) and divides the baseline's time by
    each: {name: {"encoder_seconds", "end_to_end_seconds" (medians over rounds),
    "encoder_speedup", "end_to_end_speedup" (ratios of the medians), "encoder_speedup_range",
    "end_to_end_speedup_range" (the lowest and highest ratio within one round: the load a
    round saw is shared by every model)}}. The baseline is the first model when `baseline` is
    not among them."""
    from coda_flax.analysis.timing import measure_models, sample_statistic

    rounds = measure_models(dict(models), dict(params), batch, repeats)
    base = rounds[baseline] if baseline in rounds else next(iter(rounds.values()))
    out = {}
    for name, times in rounds.items():
        row = {}
        for what, ts in times.items():
            ratios = [b / t for b, t in zip(base[what], ts)]
            row[f"{what}_seconds"] = sample_statistic(ts, "median")
            row[f"{what}_speedup"] = sample_statistic(base[what], "median") / row[f"{what}_seconds"]
            row[f"{what}_speedup_range"] = (min(ratios), max(ratios))
        out[name] = row
    return out
