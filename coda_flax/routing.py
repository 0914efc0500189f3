"""The learned router: paper equations (3), (9)-(11), and the gather / scatter of (4), (7).

    s   = X_norm . w                      (9)   one score per token
    lam = f(s)                            (10)  f = soft top-k | sigmoid | (none: first_k)
    m   = lam * Top(lam, k)               (11)  weights of the k selected tokens

The selection matrix P of equation (3) is never materialised: the router returns the k
selected indices (sorted ascending, so routed tokens keep their source order) and
`gather` / `scatter_add` apply P and P^T with `take_along_axis` and an indexed add.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from coda_flax.soft_topk import SoftTopkConfig, soft_topk

ROUTERS = ("soft_topk", "sigmoid", "first_k")


class RoutingDecision(NamedTuple):
    """What the router decided for one layer: which k tokens run through the frozen layer and
    with which weights."""

    indices: jax.Array   # [batch, k] int32, ascending: idx (the selection P of equation 3)
    weights: jax.Array   # [batch, k] float32, m of equation (11) at the selected tokens
    lam: jax.Array       # [batch, n] float32, lam of equation (10) for every token


def num_routed(n: int, reduction: float) -> int:
    """k = ceil(n / r), at least 1 and at most n.

    Args:
        n: the number of tokens.
        reduction: r >= 1 (r = 1 routes every token).
    Returns:
        the number of routed tokens k.
    """
    if reduction < 1:
        raise ValueError(f"reduction r must be >= 1 (r = 1 routes every token), got {reduction}.")
    return max(1, min(n, math.ceil(n / reduction)))


def gather(x, indices):
    """P x of equation (4).

    Args:
        x: [b, n, ...].
        indices: [b, k] int rows to take.
    Returns:
        [b, k, ...], the rows `indices` of x.
    """
    idx = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def scatter_add(x, indices, updates):
    """x + P^T updates (equation 7).

    Args:
        x: [b, n, ...].
        indices: [b, k] int rows (distinct per example).
        updates: [b, k, ...], cast to x's dtype.
    Returns:
        x with updates added into rows `indices`, [b, n, ...].
    """
    return jax.vmap(lambda xb, ib, ub: xb.at[ib].add(ub.astype(xb.dtype)))(x, indices, updates)


def select_top_k(key, mask, k: int):
    """Indices of the k largest `key` values per row, real tokens first, sorted ascending.

    Follows soft_topk's ranking of non-finite scores: NaN counts as -inf (top_k alone would
    rank NaN first), and real tokens at -inf / NaN still come before padding (they sit at
    the lowest finite float32, tied with a real score of exactly -FLT_MAX).
    """
    key = key.astype(jnp.float32)
    low = jnp.isnan(key) | (key == -jnp.inf)
    key = jnp.where(mask, jnp.where(low, jnp.finfo(jnp.float32).min, key), -jnp.inf)
    _, idx = jax.lax.top_k(key, k)
    return jnp.sort(idx, axis=-1).astype(jnp.int32)


class Router(nn.Module):
    """Scores tokens with w (9), normalises them (10) and keeps the top k (11).

    kind: "soft_topk" (default; the budget-aware operator of equation 12), "sigmoid"
    (lam = sigmoid(s), no budget) or "first_k" (the first k real tokens, m = 1: truncation,
    nothing learned). soft_topk: the operator's settings (CodaConfig.soft_topk).
    """

    kind: str = "soft_topk"
    soft_topk: SoftTopkConfig = SoftTopkConfig()
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x_norm, k: int, mask=None) -> RoutingDecision:
        """Routes k of the n tokens.

        Args:
            x_norm: [batch, n, d] the normalised layer input Xn.
            k: how many tokens to route (1 <= k <= n; the layer's k, coda_flax.kplan.layer_k).
            mask: [batch, n] bool, True = real token (None: all real).
        Returns:
            RoutingDecision(indices [batch, k], weights [batch, k], lam [batch, n]).
        """
        if self.kind not in ROUTERS:
            raise ValueError(f"Router: unknown kind {self.kind!r}; choose one of {ROUTERS}.")
        b, n, d = x_norm.shape
        if not 1 <= k <= n:
            raise ValueError(f"Router: cannot route k={k} of n={n} tokens; need 1 <= k <= n.")
        mask = jnp.ones((b, n), bool) if mask is None else mask.astype(bool)
        if self.kind == "first_k":
            position = jnp.arange(n, dtype=jnp.float32)
            idx = select_top_k(jnp.broadcast_to(-position, (b, n)), mask, k)
            lam = mask.astype(jnp.float32)
            return RoutingDecision(idx, gather(lam, idx), lam)
        w = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(self.init_std), ("embed",)), (d,), jnp.float32)
        s = jnp.einsum("bnd,d->bn", x_norm.astype(jnp.float32), w)              # (9)
        if self.kind == "sigmoid":
            lam = jnp.where(mask, jax.nn.sigmoid(s), 0.0)
        else:
            lam = soft_topk(s, k, mask=mask, config=self.soft_topk)                # (10), (12)
        # lam is monotone in s, so ranking by s is Top(lam, k) with underflow ties broken by s.
        idx = select_top_k(jax.lax.stop_gradient(s), mask, k)                  # (11)
        return RoutingDecision(idx, gather(lam, idx), lam)
