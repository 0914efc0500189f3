"""Accuracies with error bars, and when two of them differ (the demo's and `coda claims`').

    binomial_se(p, n)            Agresti-Coull standard error of an accuracy on n examples
    summarize_seeds(accs, n)     mean, binomial SE over n x seeds answers, spread over seeds
    Estimate / estimate(accs, n) an accuracy over seeds: mean and SE = the larger of the
                                 binomial SE and the seeds' standard error (std / sqrt(seeds))
    difference(a, b)             a - b and its SE (independent runs: the SEs add in quadrature)
    greater(d, se)               "yes" when d > 3 SE, "no" when d < -3 SE, else "not separated"
    at_least(d, se)              "yes" unless d < -3 SE ("no")
    at_most(d, se, bound)        "yes" when d <= bound, "no" when d - 3 SE > bound, else
                                 "not separated"
    combine(verdicts)            "no" if any is "no", else "not separated" if any is, else "yes"

SEPARATION = 3: a difference counts only beyond three standard errors of the difference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

SEPARATION = 3.0
YES, NO, NOT_SEPARATED = "yes", "no", "not separated"


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p (a fraction) measured on n independent examples, with
    the Agresti-Coull adjustment: sqrt(q (1 - q) / (n + 4)) at q = (p n + 2) / (n + 4), so that
    0% and 100% still get an error bar (the plain sqrt(p (1 - p) / n) says 0 there)."""
    if n <= 0:
        raise ValueError(f"binomial_se needs n > 0 examples, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"binomial_se needs a fraction p in [0, 1], got {p}")
    q = (p * n + 2.0) / (n + 4.0)
    return math.sqrt(q * (1.0 - q) / (n + 4.0))


def summarize_seeds(accuracies, n: int) -> dict:
    """accuracies: per-seed fractions on the same n validation examples -> mean, the binomial
    SE of the mean (binomial_se over n * seeds answers), and the spread (min, max) over seeds."""
    acc = np.asarray(accuracies, np.float64)
    mean = float(acc.mean())
    return {"mean": mean, "se": binomial_se(mean, n * len(acc)),
            "min": float(acc.min()), "max": float(acc.max()), "seeds": [float(a) for a in acc]}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An accuracy (fractions) over seeds: mean, standard error, per-seed values, and the
    number of validation examples each seed was scored on."""

    mean: float
    se: float
    seeds: tuple[float, ...]
    n: int

    def text(self) -> str:
        """'61.2 ± 1.3 (3 seeds)' in percent."""
        count = len(self.seeds)
        return f"{100 * self.mean:.1f} ± {100 * self.se:.1f} ({count} seed{'s' * (count > 1)})"


def estimate(accuracies: Sequence[float], n: int) -> Estimate:
    """The Estimate of per-seed accuracies (fractions) on n examples each: SE = the larger of
    the binomial SE over n x seeds answers and the seeds' std (ddof 1) / sqrt(seeds), so that
    seeds which disagree more than sampling explains widen the bar."""
    acc = np.asarray(accuracies, np.float64)
    if acc.size == 0:
        raise ValueError("estimate needs at least one seed's accuracy")
    spread = float(acc.std(ddof=1) / math.sqrt(acc.size)) if acc.size > 1 else 0.0
    return Estimate(float(acc.mean()), max(binomial_se(float(acc.mean()), n * acc.size), spread),
                    tuple(float(a) for a in acc), n)


def difference(a: Estimate, b: Estimate) -> tuple[float, float]:
    """(a - b, its standard error) for independent runs."""
    return a.mean - b.mean, math.hypot(a.se, b.se)


def separated(d: float, se: float) -> bool:
    """Is d further than SEPARATION standard errors from 0?"""
    return abs(d) > SEPARATION * se


def greater(d: float, se: float) -> str:
    """The claim d > 0: YES beyond 3 SE, NO below -3 SE, else NOT_SEPARATED."""
    if d > SEPARATION * se:
        return YES
    return NO if d < -SEPARATION * se else NOT_SEPARATED


def at_least(d: float, se: float) -> str:
    """The claim d >= 0: YES unless d is below -3 SE."""
    return NO if d < -SEPARATION * se else YES


def at_most(d: float, se: float, bound: float) -> str:
    """The claim d <= bound: YES when the point estimate is, NO when d - 3 SE exceeds it, else
    NOT_SEPARATED."""
    if d <= bound + 1e-12:          # a difference of exactly `bound` (floating point)
        return YES
    return NO if d - SEPARATION * se > bound else NOT_SEPARATED


def combine(verdicts: Iterable[str]) -> str:
    """All parts of a claim together: NO if any part is NO, else NOT_SEPARATED if any is."""
    verdicts = list(verdicts)
    if NO in verdicts:
        return NO
    return NOT_SEPARATED if NOT_SEPARATED in verdicts else YES
