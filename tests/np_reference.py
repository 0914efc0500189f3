"""Independent numpy (float64) references for the tests. Nothing here imports coda_flax."""

from __future__ import annotations

import math

import numpy as np


def logsumexp(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def soft_topk_cd(s, k, eps, num_iters, eps0=4.0, beta=0.7):
    """Paper equation (13) with epsilon scaling, transcribed literally (one row)."""
    s = np.asarray(s, np.float64)
    a, b = 0.0, np.zeros_like(s)
    eps_t = eps0
    for t in range(num_iters):
        eps_t = max(eps0 * beta**t, eps)
        a = eps_t * math.log(k) - eps_t * logsumexp((s + b) / eps_t)
        b = np.minimum(-s - a, 0.0)
    return np.exp((s + b + a) / eps)


def soft_topk_bisect(s, k, eps, iters=200):
    """Optimum of (12) by bisection on a: sum_i min(1, exp((s_i + a) / eps)) = k (one row)."""
    s = np.asarray(s, np.float64)
    total = lambda a: np.sum(np.exp(np.minimum(s + a, 0.0) / eps))
    lo, hi = -np.max(s) - 50 * eps - 1.0, -np.min(s) + 1.0      # total(lo) < k <= total(hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if total(mid) < k else (lo, mid)
    a = 0.5 * (lo + hi)
    return np.exp(np.minimum(s + a, 0.0) / eps)


def t5_bucket(rel, bidirectional, num_buckets, max_distance):
    """T5's relative position bucket (Mesh TensorFlow formula), elementwise in numpy."""
    rel = np.asarray(rel)
    out = np.zeros(rel.shape, np.int64)
    n = -rel
    if bidirectional:
        num_buckets //= 2
        out += (n < 0) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    large = max_exact + (np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
                         / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return out + np.where(n < max_exact, n, large)


def attention(xq, xkv, wq, wk, wv, wo, q_pos, kv_pos, rel_table, kv_valid, bidirectional=True,
              max_distance=128):
    """Multi-head / grouped / multi-query attention with T5 relative bias (one example).

    wq [d, h, dh], wk / wv [d, g, dh], wo [h, dh, d]; head i uses key / value head i // (h/g).
    """
    h, g = wq.shape[1], wk.shape[1]
    q = np.einsum("qd,dhk->hqk", xq, wq)
    k = np.einsum("sd,dgk->gsk", xkv, wk)
    v = np.einsum("sd,dgk->gsk", xkv, wv)
    k, v = np.repeat(k, h // g, axis=0), np.repeat(v, h // g, axis=0)
    logits = np.einsum("hqk,hsk->hqs", q, k)
    if rel_table is not None:
        buckets = t5_bucket(kv_pos[None, :] - q_pos[:, None], bidirectional,
                            rel_table.shape[1], max_distance)
        logits = logits + rel_table[:, buckets]
    logits = np.where(kv_valid[None, None, :], logits, -1e10)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqs,hsk,hkd->qd", p, v, wo)


def rms_norm(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gated_mlp(x, wi_0, wi_1, wo):
    return (gelu_tanh(x @ wi_0) * (x @ wi_1)) @ wo
