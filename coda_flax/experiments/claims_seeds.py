"""The seeds rule of `coda claims` (issue 18: "3 seeds where a difference is within 3 SE"):
a run's group is its name without "/seed<k>" (its variant part: `variant`); both sides of every
comparison whose difference is within 3 standard errors get one more seed a round at a time, up
to max_seeds.

Nothing here reads argv or gin.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from coda_flax.analysis.estimates import difference, estimate, separated
from coda_flax.experiments.runner import Run

Log = Callable[[str], None]


def variant(r: float) -> str:
    """The group-name part of the variant at r: "pa" (r = 1, the Parallel Adapter) or
    "coda_r<r>" (the text sweep's and the pages' names)."""
    return "pa" if r == 1 else f"coda_r{r}"


def group(name: str) -> str:
    """A run's group: its name without the seed."""
    return name.rsplit("/seed", 1)[0]


def with_seed(run: Run, seed: int) -> Run:
    return dataclasses.replace(run, name=f"{group(run.name)}/seed{seed}", seed=seed)


def accuracy_estimate(results: list[dict]):
    """The Estimate of a group's results (eval accuracy in %, num_examples)."""
    n = results[0]["eval"]["num_examples"]
    return estimate([r["eval"]["accuracy"] / 100.0 for r in results], n)


def by_group(results: dict[str, dict]) -> dict[str, list[dict]]:
    """{group: its results, in seed order} of {run name: result}."""
    out: dict[str, list[dict]] = {}
    for name in sorted(results):
        out.setdefault(group(name), []).append(results[name])
    return out


def seeds_needed(pairs, grouped: dict[str, list[dict]], max_seeds: int) -> set[str]:
    """The groups to run with max_seeds seeds: both sides of every pair whose difference is
    within 3 standard errors and that has fewer seeds than max_seeds on a side. grouped:
    by_group's."""
    need = set()
    for x, y in pairs:
        ex, ey = accuracy_estimate(grouped[x]), accuracy_estimate(grouped[y])
        if not separated(*difference(ex, ey)):
            need |= {g for g in (x, y) if len(grouped[g]) < max_seeds}
    return need


def next_seeds(pairs, grouped: dict[str, list[dict]], count: int, always=()
               ) -> list[tuple[str, int]]:
    """The (group, seed) runs that bring seeds_needed(pairs, grouped, count) and the groups
    `always` to count seeds (seeds are numbered from 0 in the order they ran)."""
    need = seeds_needed(pairs, grouped, count) | set(always)
    return [(g, seed) for g in sorted(need) for seed in range(len(grouped[g]), count)]


def seed_rounds(text: dict[str, Run], results: dict, pairs, always, max_seeds: int,
                execute_runs, log: Log) -> dict:
    """More seeds (next_seeds), a round per count up to max_seeds, each round again while it
    adds runs (a seed added to one side can bring a pair within 3 SE whose other side has
    fewer). text: {group: seed-0 Run}; execute_runs(list of Runs) -> {name: result}. Returns
    every result."""
    results = dict(results)
    for count in range(2, max_seeds + 1):
        while extra := [with_seed(text[g], seed) for g, seed in next_seeds(
                pairs, by_group(results), count, always)]:
            log(f"  {len(extra)} more seeded runs: both sides of every comparison within 3 SE "
                f"and the runs always seeded, to {count} seeds")
            results.update(execute_runs(extra))
    return results


__all__ = ["variant", "group", "with_seed", "accuracy_estimate", "by_group", "seeds_needed",
           "next_seeds", "seed_rounds"]
