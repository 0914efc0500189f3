"""The k plan: how many tokens the CoDA encoder layers route, at each step of a run.

    routes(coda)        do the encoder layers route at all? (CoDA with r > 1, or an explicit k)
    coda.k(n)           the target k: ceil(n / r), or CodaConfig.num_routed when set
    KPlan.for_run(coda, n, total_steps, anneal_fraction, num_stages)
        .stages         k falls linearly from n to the target in a few discrete stages over the
                        first anneal_fraction of training (paper appendix B); static shapes, so
                        each stage is one compilation
        .k_at(step)     the k in force at a step (a resumed run continues with its step's k)

Both trainers (coda_flax.train.trainer and coda_flax.t5x.trainer) take their stages from here,
and the model takes the stage's k as an argument (`EncoderDecoder(config, k=k)`, checked by
`layer_k`), so no trainer rewrites the config. A plan with one stage (r = 1, one stage, no
annealing steps, or a dense model) routes its target k from step 0.
"""

from __future__ import annotations

import dataclasses
import math

from coda_flax.config import CodaConfig


@dataclasses.dataclass(frozen=True)
class KStage:
    """From `start_step` on (until the next stage), each encoder layer routes k tokens."""

    start_step: int
    k: int


def routes(coda: CodaConfig | None) -> bool:
    """Whether the encoder layers of `coda` route tokens (and so have a router): CoDA with
    r > 1, or with an explicit num_routed. Dense models (None) and the Parallel Adapter (r = 1)
    send every token through every layer."""
    return coda is not None and (coda.reduction > 1 or coda.num_routed is not None)


def layer_k(coda: CodaConfig, n: int, k: int | None = None) -> int:
    """The k a CoDA encoder layer routes for n tokens: `k` when given (a k plan's stage: it must
    be in [1, n], and below n only where the config routes), otherwise coda.k(n)."""
    if k is None:
        return coda.k(n)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} routed tokens is outside [1, n={n}]; pass a k plan stage's k "
                         f"for this sequence length (KPlan.for_run(coda, n, ...)).")
    if k < n and not routes(coda):
        raise ValueError(f"k={k} < n={n}, but this CodaConfig (reduction={coda.reduction}, "
                         f"num_routed=None) has no router; use reduction > 1 or num_routed.")
    return k


def anneal(n: int, target: int, total_steps: int, anneal_fraction: float = 0.1,
           num_stages: int = 4) -> tuple[KStage, ...]:
    """Discrete linear annealing of k from n to `target` (appendix B).

    `num_stages` distinct k values (the last is the target) starting at evenly spaced steps over
    the first `anneal_fraction` of `total_steps`; one stage, target = n or no annealing steps
    give the target from step 0. Later stages win when there are more stages than steps.
    """
    if not 1 <= target <= n:
        raise ValueError(f"k plan: target k={target} must be in [1, n={n}].")
    if num_stages < 1 or not 0.0 <= anneal_fraction <= 1.0:
        raise ValueError(f"k plan: need num_stages >= 1 and 0 <= anneal_fraction <= 1, got "
                         f"{num_stages}, {anneal_fraction}.")
    anneal_steps = int(round(anneal_fraction * total_steps))
    if num_stages == 1 or target == n or anneal_steps == 0:
        return (KStage(0, target),)
    stages: list[KStage] = []
    for i in range(num_stages):
        frac = i / (num_stages - 1)
        stage = KStage(int(round(anneal_steps * frac)), int(math.ceil(n + (target - n) * frac)))
        if stages and stages[-1].start_step == stage.start_step:
            stages.pop()                          # more stages than steps: the later k wins
        if not stages or stages[-1].k != stage.k:
            stages.append(stage)
    return tuple(stages)


@dataclasses.dataclass(frozen=True)
class KPlan:
    """The k of every step of a run over encoder inputs of n tokens.

    n: the encoder length. stages: (start step, k), ascending, the first at step 0.
    routes: whether the encoder layers route (`routes(coda)`); False: one stage, k = n.
    """

    n: int
    stages: tuple[KStage, ...]
    routes: bool

    @classmethod
    def for_run(cls, coda: CodaConfig | None, n: int, total_steps: int,
                anneal_fraction: float = 0.1, num_stages: int = 4) -> "KPlan":
        """The plan of a run: annealing from n to coda.k(n) when the config routes, else k = n.

        Args:
            coda: the model's CodaConfig (None: dense).
            n: the encoder input length (after any subsampling: coda_flax.inputs.encoder_length).
            total_steps: the steps the plan spans (the run's total).
            anneal_fraction, num_stages: as `anneal`.
        """
        if not routes(coda):
            return cls(n, (KStage(0, n),), False)
        return cls(n, anneal(n, coda.k(n), total_steps, anneal_fraction, num_stages), True)

    def k_at(self, step: int) -> int:
        """The k in force at `step` (the last stage that has started)."""
        k = self.stages[0].k
        for stage in self.stages:
            if step >= stage.start_step:
                k = stage.k
        return k

    def next_start(self, step: int) -> int | None:
        """The first step after `step` at which k changes (None: it never does)."""
        return next((s.start_step for s in self.stages if s.start_step > step), None)


__all__ = ["KStage", "KPlan", "routes", "layer_k", "anneal"]
