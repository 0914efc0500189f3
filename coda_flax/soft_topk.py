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

Everything is computed in float32 in log space. Padded positions (``mask`` False) get
lam = 0 and k is clipped to the number of real tokens in each row.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

SOLVERS = ("coordinate_descent", "exact")
GRADIENTS = ("implicit", "unrolled")

# Finite stand-in for -inf on padded scores: keeps logsumexp and autodiff NaN-free while
# exp(_NEG / eps) is exactly 0 in float32 for any epsilon >= 1e-6.
_NEG = -1e30


class _Settings(NamedTuple):
    k: int
    epsilon: float
    num_iters: int
    epsilon_init: float
    epsilon_decay: float
    solver: str


def epsilon_schedule(epsilon: float, num_iters: int, epsilon_init: float,
                     epsilon_decay: float) -> list[float]:
    """eps_t = max(eps_0 * beta^t, eps) for t = 0 .. T-1 (appendix D.2)."""
    return [max(epsilon_init * epsilon_decay**t, epsilon) for t in range(num_iters)]


def _prepare(scores, mask, k):
    """float32 scores with padding pushed to _NEG, and log of the clipped per-row k."""
    s = jnp.asarray(scores, jnp.float32)
    if mask is None:
        mask = jnp.ones(s.shape, bool)
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), s.shape)
    s = jnp.where(mask, s, _NEG)
    num_real = jnp.sum(mask, axis=-1, keepdims=True)
    k_eff = jnp.clip(jnp.minimum(k, num_real), 1, None).astype(jnp.float32)
    return s, mask, k_eff


def _solve_coordinate_descent(s, k_eff, st: _Settings):
    """Equation (13) with epsilon scaling; returns lam = exp(min(s + a, 0) / eps).

    b = min(-s - a, 0) is folded into the final expression: s + a + b = min(s + a, 0),
    so saturated tokens get lam = 1 exactly.
    """
    log_k = jnp.log(k_eff)
    eps_t = jnp.asarray(epsilon_schedule(st.epsilon, st.num_iters, st.epsilon_init,
                                         st.epsilon_decay), jnp.float32)

    def step(carry, eps):
        _, b = carry
        a = eps * log_k - eps * jax.nn.logsumexp((s + b) / eps, axis=-1, keepdims=True)
        b = jnp.minimum(-s - a, 0.0)
        return (a, b), None

    a0 = jnp.zeros(s.shape[:-1] + (1,), jnp.float32)
    (a, _), _ = jax.lax.scan(step, (a0, jnp.zeros_like(s)), eps_t)
    return jnp.exp(jnp.minimum(s + a, 0.0) / st.epsilon)


def _solve_exact(s, k_eff, st: _Settings):
    """Closed-form optimum of (12): lam_i = min(1, exp((s_i + a) / eps)), sum(lam) = k."""
    eps = st.epsilon
    n = s.shape[-1]
    s_sorted = -jnp.sort(-s, axis=-1)                                   # descending
    # lse_rest[m] = logsumexp(s_sorted[m:] / eps): tokens left once m are saturated.
    lse_rest = jnp.flip(jax.lax.cumlogsumexp(jnp.flip(s_sorted / eps, -1), axis=s.ndim - 1), -1)
    m = jnp.arange(n, dtype=jnp.float32)
    valid = m < k_eff
    a_m = eps * (jnp.log(jnp.where(valid, k_eff - m, 1.0)) - lse_rest)
    # m saturated tokens is consistent iff the largest unsaturated one is not above the cap.
    # s_sorted[m] + a_m changes sign once, so the first m that fits is the optimum; m = k - 1
    # always fits in exact arithmetic, and is forced to so that rounding cannot skip it.
    fits = valid & ((s_sorted + a_m <= 0.0) | (m == k_eff - 1))
    first = jnp.argmax(fits, axis=-1)[..., None]
    a = jnp.take_along_axis(a_m, first, axis=-1)
    return jnp.exp(jnp.minimum(s + a, 0.0) / eps)


_SOLVE = {"coordinate_descent": _solve_coordinate_descent, "exact": _solve_exact}


def _solve(s, mask, k_eff, st: _Settings):
    lam = _SOLVE[st.solver](s, k_eff, st)
    return jnp.where(mask, lam, 0.0)


def implicit_vjp(lam, g, epsilon):
    """g^T d lam / d s at the optimum (closed form, O(n)): see the module docstring."""
    free = (lam > 0.0) & (lam < 1.0)
    lam_f = jnp.where(free, lam, 0.0)
    total = jnp.sum(lam_f, axis=-1, keepdims=True)
    mean_g = jnp.sum(g * lam_f, axis=-1, keepdims=True) / jnp.where(total > 0, total, 1.0)
    return lam_f * (g - mean_g) / epsilon


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _solve_implicit(s, mask, k_eff, st: _Settings):
    return _solve(s, mask, k_eff, st)


def _solve_implicit_fwd(s, mask, k_eff, st):
    lam = _solve(s, mask, k_eff, st)
    return lam, lam


def _solve_implicit_bwd(st, lam, g):
    return implicit_vjp(lam, g, st.epsilon), None, None


_solve_implicit.defvjp(_solve_implicit_fwd, _solve_implicit_bwd)


def soft_topk(scores, k: int, *, mask=None, epsilon: float = 0.03, num_iters: int = 20,
              epsilon_init: float = 4.0, epsilon_decay: float = 0.7,
              solver: str = "coordinate_descent", gradient: str = "implicit"):
    """Soft top-k mask of ``scores`` over the last axis (paper equations 12-13).

    Args:
      scores: [..., n] float scores (any float dtype; computed in float32).
      k: number of tokens to keep (a Python int, static); clipped per row to the number of
        real tokens.
      mask: optional [..., n] bool, True for real tokens. Padded tokens get lam = 0.
      epsilon: entropy weight (temperature) of equation 12.
      num_iters, epsilon_init, epsilon_decay: coordinate-descent steps and epsilon scaling
        (ignored by ``solver="exact"``).
      solver: "coordinate_descent" (the paper's, default) or "exact" (closed form).
      gradient: "implicit" (closed-form Jacobian, O(n) memory) or "unrolled" (autodiff
        through the solver).

    Returns:
      lam: float32 array shaped like ``scores``, in [0, 1], summing to k per row (exactly
      for the exact solver; approximately for coordinate descent).
    """
    if solver not in SOLVERS:
        raise ValueError(f"soft_topk: unknown solver {solver!r}; choose one of {SOLVERS}.")
    if gradient not in GRADIENTS:
        raise ValueError(f"soft_topk: unknown gradient {gradient!r}; choose one of {GRADIENTS}.")
    if isinstance(k, bool) or not isinstance(k, (int,)) and not hasattr(k, "__index__"):
        raise TypeError(f"soft_topk: k must be a Python int (static), got {type(k).__name__}.")
    k = int(k)
    n = jnp.shape(scores)[-1] if jnp.ndim(scores) else 0
    if n < 1:
        raise ValueError(f"soft_topk: scores must have shape [..., n] with n >= 1, got "
                         f"{jnp.shape(scores)}.")
    if not 1 <= k <= n:
        raise ValueError(f"soft_topk: need 1 <= k <= n, got k={k} with n={n} tokens; "
                         f"use k = ceil(n / r) for a reduction factor r >= 1.")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"soft_topk: epsilon must be a positive number, got {epsilon}.")
    if solver == "coordinate_descent" and num_iters < 1:
        raise ValueError(f"soft_topk: num_iters must be >= 1, got {num_iters}.")
    if mask is not None and jnp.shape(mask) != jnp.shape(scores):
        raise ValueError(f"soft_topk: mask shape {jnp.shape(mask)} must equal scores shape "
                         f"{jnp.shape(scores)}.")
    st = _Settings(k, float(epsilon), int(num_iters), float(epsilon_init),
                   float(epsilon_decay), solver)
    s, mask, k_eff = _prepare(scores, mask, k)
    if gradient == "implicit":
        return _solve_implicit(s, mask, k_eff, st)
    return _solve(s, mask, k_eff, st)
