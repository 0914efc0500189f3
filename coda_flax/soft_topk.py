"""Soft top-k: paper equations (12)-(13) and appendix D.

    lam = argmax_lam  s.lam + eps * H(lam)   s.t.  sum(lam) = k,  0 <= lam_i <= 1         (12)

Two solvers for (12):

* ``"coordinate_descent"`` -- the paper's: coordinate ascent on the dual (a, b) with
  epsilon scaling (equation 13, appendix D.2), ``num_iters`` steps.
* ``"exact"`` -- the optimum in closed form. At the optimum
  lam_i = min(1, exp((s_i + a) / eps)); if the m largest scores are saturated,
  a = eps * (log(k - m) - logsumexp(s_rest / eps)); the consistent m is the first one
  whose largest unsaturated token is really below the cap. O(n log n), exact budget.

Two gradients:

* ``"implicit"`` (default) -- the closed-form Jacobian of the optimum, applied through
  ``jax.custom_vjp``; O(n) memory whatever ``num_iters`` is. With F the set of tokens
  strictly inside (0, 1):  d lam_i / d s_j = [i,j in F] (lam_i d_ij - lam_i lam_j / sum_F lam) / eps.
* ``"unrolled"`` -- autodiff through the solver's iterations (the paper's choice).

Numerics. Everything is computed in float32 in log space, and the result depends only on
differences of scores, as (12) does, so that an offset of +1e6 or +1e30 gives the same lam
(up to the rounding of the scores themselves):

* coordinate descent runs on z = s - max(s) per row (the largest finite real score; one
  max-reduction), clipped to [-L, 0] with L = FLT_MAX / 8 * min(eps, 1) so that every
  z / eps stays finite (only scores ~1e37 apart, or a tiny eps, reach the clip);
* the exact solver never uses absolute values at all: the suffix sums it needs are built
  from the gaps between neighbouring sorted scores, and lam from s_i - s_boundary, so a
  single 1e30 outlier leaves the other tokens' lam as they were.

Padded positions (``mask`` False) get lam = 0 and k is clipped per row to the number of real
tokens, so sum(lam) = min(k, #real tokens); a row without real tokens is all zeros.

Non-finite scores of real tokens are ranked in three tiers, and the budget fills the tiers
from the top (ties inside a tier are shared equally, as (12) does for equal scores):

* ``+inf`` -- certainly selected: lam = 1 each; if there are more than k of them they share
  the budget, k / #(+inf) each, and every other token gets 0.
* finite scores -- soft top-k (12) on the finite tokens with the budget that is left,
  k - #(+inf); if that covers all of them they get exactly 1 (k = n gives all ones, for
  both solvers), if nothing is left they get 0.
* ``-inf`` and ``NaN`` (NaN is treated as -inf: an error is impossible under jit) -- never
  selected while the finite tokens can absorb the budget; when k exceeds the number of
  +inf and finite tokens, they share what is left equally (the limit of tied scores
  going to -inf), so the budget stays min(k, #real).

This is the continuous extension of (12): with the exact solver a score at +-1e30 gives the
same lam as +-inf (coordinate descent needs far more than 20 steps to get there). Gradients are finite everywhere (no inf / NaN reaches the arithmetic that
is differentiated) and are zero for non-finite scores, whose lam does not depend on them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp

SOLVERS = ("coordinate_descent", "exact")
GRADIENTS = ("implicit", "unrolled")

_FLT_MAX = float(jnp.finfo(jnp.float32).max)
# Smallest epsilon accepted: float32's smallest normal number (1 / eps stays finite).
EPSILON_MIN = float(jnp.finfo(jnp.float32).tiny)


class _Settings(NamedTuple):
    epsilon: float
    num_iters: int
    epsilon_init: float
    epsilon_decay: float
    solver: str


def _number(owner, name, value, valid):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be {valid}, got {value!r}.")
    return float(value)


def check_settings(owner: str, *, epsilon, num_iters, epsilon_init, epsilon_decay,
                   solver="coordinate_descent", gradient="implicit") -> None:
    """Raise ValueError naming the parameter and its valid range for bad soft top-k settings.

    epsilon and epsilon_init: finite, >= EPSILON_MIN (> 0); epsilon_decay: in (0, 1];
    num_iters: an integer >= 1; solver in SOLVERS; gradient in GRADIENTS. `owner` (soft_topk,
    SoftTopkConfig, CodaConfig) starts the message.
    """
    if solver not in SOLVERS:
        raise ValueError(f"{owner}: unknown solver {solver!r}; choose one of {SOLVERS}.")
    if gradient not in GRADIENTS:
        raise ValueError(f"{owner}: unknown gradient {gradient!r}; choose one of {GRADIENTS}.")
    for name, value in (("epsilon", epsilon), ("epsilon_init", epsilon_init)):
        valid = f"a finite number >= {EPSILON_MIN:.3g} (> 0; float32's smallest normal)"
        x = _number(owner, name, value, valid)
        if not (math.isfinite(x) and EPSILON_MIN <= x <= _FLT_MAX):
            raise ValueError(f"{owner}: {name} must be {valid}, got {value!r}.")
    valid = "a number in (0, 1] (the epsilon-scaling factor beta of appendix D.2)"
    x = _number(owner, "epsilon_decay", epsilon_decay, valid)
    if not (math.isfinite(x) and 0.0 < x <= 1.0):
        raise ValueError(f"{owner}: epsilon_decay must be {valid}, got {epsilon_decay!r}.")
    try:
        if isinstance(num_iters, bool):
            raise TypeError
        iters = operator.index(num_iters)
    except TypeError:
        raise ValueError(f"{owner}: num_iters must be an integer >= 1, got "
                         f"{num_iters!r}.") from None
    if iters < 1:
        raise ValueError(f"{owner}: num_iters must be an integer >= 1, got {num_iters!r}.")


@dataclasses.dataclass(frozen=True)
class SoftTopkConfig:
    """Soft top-k's settings (appendix D), each default declared here only.

    epsilon: eps, the entropy weight of (12); 0.03 for text and images, 1.0 for speech.
    num_iters, epsilon_init, epsilon_decay: T, eps_0 and beta of the epsilon-scaling schedule
      (coordinate descent only; validated for both solvers).
    solver: "coordinate_descent" (the paper's) or "exact" (closed form).
    gradient: "implicit" (closed-form Jacobian) or "unrolled" (autodiff through the solver).

    CodaConfig holds one (`CodaConfig.soft_topk`) and hands it whole to the Router, which hands
    it to `soft_topk(..., config=...)`.
    """

    epsilon: float = 0.03
    num_iters: int = 20
    epsilon_init: float = 4.0
    epsilon_decay: float = 0.7
    solver: str = "coordinate_descent"
    gradient: str = "implicit"

    def __post_init__(self):
        check_settings("SoftTopkConfig", **dataclasses.asdict(self))


def epsilon_schedule(epsilon: float, num_iters: int, epsilon_init: float,
                     epsilon_decay: float) -> list[float]:
    """The epsilon-scaling schedule of appendix D.2.

    Args:
        epsilon: the final eps; num_iters: T; epsilon_init: eps_0; epsilon_decay: beta.
    Returns:
        [eps_t = max(eps_0 * beta^t, eps) for t = 0 .. T-1].
    """
    return [max(epsilon_init * epsilon_decay**t, epsilon) for t in range(num_iters)]


def _clip_below(epsilon: float) -> float:
    """L: shifted scores are clipped to [-L, 0], so that |s| / eps <= FLT_MAX / 8."""
    return _FLT_MAX / 8 * min(epsilon, 1.0)


def _solve_coordinate_descent(s, fin, k_eff, st: _Settings):
    """Equation (13) with epsilon scaling; returns lam = exp(min(z + a, 0) / eps).

    b = min(-z - a, 0) is folded into the final expression: z + a + b = min(z + a, 0),
    so saturated tokens get lam = 1 exactly.

    Runs on z = s - max(s) over the finite tokens, clipped to [-L, 0]; the excluded tokens
    sit at -2L, where exp(. / eps) is exactly 0 and below every finite token.
    """
    lim = _clip_below(st.epsilon)
    top = jnp.max(jnp.where(fin, s, -_FLT_MAX), axis=-1, keepdims=True)
    z = jnp.where(fin, jnp.maximum(s - top, -lim), -2.0 * lim)
    log_k = jnp.log(k_eff)
    eps_t = jnp.asarray(epsilon_schedule(st.epsilon, st.num_iters, st.epsilon_init,
                                         st.epsilon_decay), jnp.float32)

    def step(carry, eps):
        _, b = carry
        a = eps * log_k - eps * jax.nn.logsumexp((z + b) / eps, axis=-1, keepdims=True)
        b = jnp.minimum(-z - a, 0.0)
        return (a, b), None

    a0 = jnp.zeros(z.shape[:-1] + (1,), jnp.float32)
    (a, _), _ = jax.lax.scan(step, (a0, jnp.zeros_like(z)), eps_t)
    return jnp.exp(jnp.minimum(z + a, 0.0) / st.epsilon)


def _suffix_lse_from_top(gaps):
    """R[m] = log sum_{j >= m} exp(x_j - x_m) for x sorted descending, from its gaps.

    gaps[j] = x_{j+1} - x_j <= 0 (the last one is ignored). Never touching the absolute
    values keeps full float32 precision when the scores sit far from 0 or far below the row
    max (a 1e30 outlier): the suffix sums compose as the maps R -> log(1 + exp(R + gap)),
    a segment being (alpha, beta) = (log of its sum relative to its first token, offset of
    the token after it), combined by an associative scan.
    """
    def combine(later, earlier):                   # earlier segment followed by the later one
        (a_late, b_late), (a_early, b_early) = later, earlier
        return jnp.logaddexp(a_early, b_early + a_late), b_early + b_late

    r, _ = jax.lax.associative_scan(
        combine, (jnp.zeros_like(gaps), jnp.flip(gaps, -1)), axis=gaps.ndim - 1)
    return jnp.flip(r, -1)


def _solve_exact(s, fin, k_eff, st: _Settings):
    """Closed-form optimum of (12): lam_i = min(1, exp((s_i + a) / eps)), sum(lam) = k.

    With the m largest tokens saturated, the largest unsaturated one (x_m, sorted
    descending) gets lam = exp(c_m / eps), c_m = x_m + a_m = eps * (log(k - m) - R[m]); m is
    consistent iff c_m <= 0. Everything is computed from differences of neighbouring scores
    and relative to x_m, never from absolute values, so the result keeps float32 precision
    for any offset or spread of the scores (no shift by the row max is needed).
    """
    eps = st.epsilon
    n = s.shape[-1]
    order = jnp.argsort(jnp.where(fin, -s, jnp.inf), axis=-1)        # finite first, descending
    xs = jnp.take_along_axis(s, order, axis=-1)
    next_fin = jnp.take_along_axis(fin, order, axis=-1)[..., 1:]
    gaps = jnp.maximum((xs[..., 1:] - xs[..., :-1]) / eps, -_FLT_MAX)  # -inf on overflow
    gaps = jnp.where(next_fin, gaps, -_FLT_MAX)                        # excluded tokens: exp = 0
    gaps = jnp.concatenate([gaps, jnp.full(gaps.shape[:-1] + (1,), -_FLT_MAX)], axis=-1)
    r = _suffix_lse_from_top(gaps)
    m = jnp.arange(n, dtype=jnp.float32)
    valid = m < k_eff
    c = eps * (jnp.log(jnp.where(valid, k_eff - m, 1.0)) - r)
    # c_m changes sign once, so the first m that fits is the optimum; m = k - 1 always fits
    # in exact arithmetic, and is forced to so that rounding cannot skip it.
    fits = valid & ((c <= 0.0) | (m == k_eff - 1))
    first = jnp.argmax(fits, axis=-1)[..., None]
    c_first = jnp.take_along_axis(c, first, axis=-1)
    x_first = jnp.take_along_axis(xs, first, axis=-1)
    rel = jnp.where(fin, s - x_first, -jnp.inf)                       # +-inf on overflow: fine
    return jnp.exp(jnp.minimum(rel + c_first, 0.0) / eps)


_SOLVE = {"coordinate_descent": _solve_coordinate_descent, "exact": _solve_exact}


def _forward(s, mask, k: int, st: _Settings):
    """lam for float32 scores s (any values, inf / NaN included); also the finite-token mask."""
    count = lambda b: jnp.sum(b, axis=-1, keepdims=True, dtype=jnp.float32)
    fin = mask & jnp.isfinite(s)
    pos = mask & (s == jnp.inf)
    neg = mask & ~fin & ~pos                                       # -inf and NaN
    n_pos, n_fin, n_neg = count(pos), count(fin), count(neg)
    k_row = jnp.minimum(jnp.float32(k), n_pos + n_fin + n_neg)    # k clipped to real tokens
    k_fin = k_row - n_pos                                          # budget left for finite tier
    k_neg = k_fin - n_fin                                          # ... and for the -inf tier
    s_safe = jnp.where(fin, s, 0.0)       # keeps inf / NaN out of differentiated arithmetic
    k_solve = jnp.clip(jnp.minimum(k_fin, n_fin), 1.0, None)
    lam_fin = _SOLVE[st.solver](s_safe, fin, k_solve, st)
    lam_fin = jnp.where(k_fin >= n_fin, 1.0, jnp.where(k_fin <= 0, 0.0, lam_fin))
    lam_pos = jnp.minimum(1.0, k_row / jnp.maximum(n_pos, 1.0))
    lam_neg = jnp.clip(k_neg, 0.0, None) / jnp.maximum(n_neg, 1.0)
    lam = jnp.where(fin, lam_fin, jnp.where(pos, lam_pos, jnp.where(neg, lam_neg, 0.0)))
    return lam, fin


def implicit_vjp(lam, g, epsilon):
    """g^T d lam / d s at the optimum (closed form, O(n)): see the module docstring.

    ``lam`` must be zero where the Jacobian has no row (non-finite scores): only tokens with
    0 < lam < 1 are free.
    """
    free = (lam > 0.0) & (lam < 1.0)
    lam_f = jnp.where(free, lam, 0.0)
    total = jnp.sum(lam_f, axis=-1, keepdims=True)
    mean_g = jnp.sum(g * lam_f, axis=-1, keepdims=True) / jnp.where(total > 0, total, 1.0)
    return lam_f * (g - mean_g) / epsilon


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _solve_implicit(s, mask, k: int, st: _Settings):
    return _forward(s, mask, k, st)[0]


def _solve_implicit_fwd(s, mask, k, st):
    lam, fin = _forward(s, mask, k, st)
    return lam, jnp.where(fin, lam, 0.0)         # tiers of inf / NaN scores do not move


def _solve_implicit_bwd(k, st, lam_fin, g):
    return implicit_vjp(lam_fin, g, st.epsilon), None


_solve_implicit.defvjp(_solve_implicit_fwd, _solve_implicit_bwd)


_DEFAULT = SoftTopkConfig()


def _settings(config: SoftTopkConfig | None, **keywords) -> SoftTopkConfig:
    """soft_topk's settings: `config`, or the keywords (checked, naming soft_topk)."""
    if config is None:
        check_settings("soft_topk", **keywords)
        return SoftTopkConfig(**keywords)
    if not isinstance(config, SoftTopkConfig):
        raise TypeError(f"soft_topk: config must be a SoftTopkConfig, got "
                        f"{type(config).__name__}.")
    changed = sorted(name for name, value in keywords.items()
                     if value != getattr(_DEFAULT, name))
    if changed:
        raise ValueError(f"soft_topk: give the settings either as config= or as keywords, not "
                         f"both (got config= and {changed}); put them in the SoftTopkConfig.")
    return config


def soft_topk(scores, k: int, *, mask=None, epsilon: float = _DEFAULT.epsilon,
              num_iters: int = _DEFAULT.num_iters, epsilon_init: float = _DEFAULT.epsilon_init,
              epsilon_decay: float = _DEFAULT.epsilon_decay, solver: str = _DEFAULT.solver,
              gradient: str = _DEFAULT.gradient, config: SoftTopkConfig | None = None):
    """Soft top-k mask of ``scores`` over the last axis (paper equations 12-13).

    Args:
      scores: [..., n] float scores (any float dtype; computed in float32). +inf, -inf and
        NaN are allowed (see the module docstring: +inf first, NaN counts as -inf).
      k: number of tokens to keep (a Python int, static, 1 <= k <= n); clipped per row to
        the number of real tokens.
      mask: optional [..., n] bool, True for real tokens. Padded tokens get lam = 0.
      epsilon: entropy weight (temperature) of equation 12; finite, > 0.
      num_iters, epsilon_init, epsilon_decay: coordinate-descent steps (>= 1) and epsilon
        scaling (epsilon_init finite > 0, epsilon_decay in (0, 1]); ignored by
        ``solver="exact"`` but validated all the same.
      solver: "coordinate_descent" (the paper's, default) or "exact" (closed form).
      gradient: "implicit" (closed-form Jacobian, O(n) memory) or "unrolled" (autodiff
        through the solver).
      config: all six settings as one SoftTopkConfig (what the Router passes); then the
        keywords above must keep their defaults.

    Returns:
      lam: float32 array shaped like ``scores``, in [0, 1], summing to min(k, #real) per row
      (exactly for the exact solver; approximately for coordinate descent, whose 20 default
      iterations stop short when the scores spread much wider than epsilon), invariant to
      adding a constant to a row.
    """
    config = _settings(config, epsilon=epsilon, num_iters=num_iters, epsilon_init=epsilon_init,
                       epsilon_decay=epsilon_decay, solver=solver, gradient=gradient)
    if isinstance(k, bool) or not isinstance(k, (int,)) and not hasattr(k, "__index__"):
        raise TypeError(f"soft_topk: k must be a Python int (static), got {type(k).__name__}.")
    k = operator.index(k)
    n = jnp.shape(scores)[-1] if jnp.ndim(scores) else 0
    if n < 1:
        raise ValueError(f"soft_topk: scores must have shape [..., n] with n >= 1, got "
                         f"{jnp.shape(scores)}.")
    if not 1 <= k <= n:
        raise ValueError(f"soft_topk: need 1 <= k <= n, got k={k} with n={n} tokens; "
                         f"use k = ceil(n / r) for a reduction factor r >= 1.")
    if mask is not None and jnp.shape(mask) != jnp.shape(scores):
        raise ValueError(f"soft_topk: mask shape {jnp.shape(mask)} must equal scores shape "
                         f"{jnp.shape(scores)}.")
    st = _Settings(float(config.epsilon), operator.index(config.num_iters),
                   float(config.epsilon_init), float(config.epsilon_decay), config.solver)
    s = jnp.asarray(scores, jnp.float32)
    mask = jnp.ones(s.shape, bool) if mask is None else jnp.asarray(mask, bool)
    if config.gradient == "implicit":
        return _solve_implicit(s, mask, k, st)
    return _forward(s, mask, k, st)[0]
