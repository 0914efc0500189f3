"""Transformer building blocks of T5 v1.1, shaped for routing.

* RMSNorm -- T5's layer norm (scale only, no mean, no bias): the LN of equations (2), (6).
* Dense -- a kernel with logical axis names and optional LoRA (B A, B at zero), so CoDA can be
  combined with LoRA on the frozen projections.
* RelativePositionBias -- T5's bucketed relative bias, evaluated at explicit query / key
  positions so routed tokens keep their original positions.
* Attention -- F_att of equation (5): num_heads query heads, num_kv_heads key/value heads
  (MHA, GQA, MQA); keys and values are whatever the caller passes (k-to-k or k-to-all);
  an autoregressive cache for the decoder.
* GatedMlp -- F_ffn of equation (6): gated-gelu (wi_0, wi_1, wo) or relu (wi, wo).
* ParallelAdapter -- equation (2): W_up act(W_down x), W_up starting at zero.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


Axes = tuple[str | None, ...]


class LoraConfig(NamedTuple):
    """Low-rank updates on frozen projections: W + (alpha / rank) A B, B = 0 at init."""

    rank: int
    alpha: float
    targets: tuple[str, ...]          # projection names, e.g. ("query", "value"); "all"

    def applies_to(self, name: str | None) -> bool:
        return self.rank > 0 and ("all" in self.targets or name in self.targets)
_BIG_NEG = -1e10          # T5X's masking value: finite, so fully masked rows stay NaN-free.

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),    # T5's "gelu_new" (tanh form)
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def _fan_in_init(scale: float, fan_in_axes: int):
    """Variance-scaling normal init with fan_in = prod of the first `fan_in_axes` dims."""
    def init(key, shape, dtype=jnp.float32):
        fan_in = int(np.prod(shape[:fan_in_axes]))
        return jax.random.normal(key, shape, dtype) * jnp.asarray(math.sqrt(scale / fan_in), dtype)
    return init


class RMSNorm(nn.Module):
    """T5 layer norm: x / rms(x) * scale, computed in float32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        """Args: x [..., d]. Returns: x / rms(x) * scale, [..., d] in self.dtype."""
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (y * scale).astype(self.dtype)


class Dense(nn.Module):
    """y = x . kernel over the last `len(in_axes)` input dims, kernel [*in, *features].

    With `lora.rank > 0` (and this module's name in `lora.targets`), adds the low-rank update
    (alpha / rank) x . lora_a . lora_b with lora_b at zero, so the output is unchanged at init.
    """

    features: Sequence[int]
    axes: Axes                    # logical names of the kernel's dims (inputs then features)
    num_in: int = 1               # how many trailing input dims the kernel contracts
    init_scale: float = 1.0
    lora: LoraConfig | None = None
    dtype: jnp.dtype = jnp.float32
    use_bias: bool = False        # a "bias" [*features] (zero at init); T5 has none

    @nn.compact
    def __call__(self, x):
        """Args: x [..., *in] (the last num_in dims are contracted).
        Returns: [..., *features] in self.dtype."""
        in_shape = x.shape[x.ndim - self.num_in:]
        features = tuple(self.features)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            _fan_in_init(self.init_scale, self.num_in), self.axes),
            in_shape + features, jnp.float32)
        x = x.astype(self.dtype)
        spec = _einsum_spec(self.num_in, len(features))
        y = jnp.einsum(spec, x, kernel.astype(self.dtype))
        if self.lora is not None and self.lora.applies_to(self.name):
            y = y + self._lora(x, in_shape, features, spec)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros, self.axes[self.num_in:]), features, jnp.float32)
            y = y + bias.astype(self.dtype)
        return y

    def _lora(self, x, in_shape, features, spec):
        r = self.lora.rank
        a = self.param("lora_a", nn.with_logical_partitioning(
            _fan_in_init(1.0, self.num_in), self.axes[:self.num_in] + ("lora_rank",)),
            in_shape + (r,), jnp.float32)
        b = self.param("lora_b", nn.with_logical_partitioning(
            nn.initializers.zeros, ("lora_rank",) + self.axes[self.num_in:]),
            (r,) + features, jnp.float32)
        h = jnp.einsum(_einsum_spec(self.num_in, 1), x, a.astype(self.dtype))
        return jnp.einsum(_einsum_spec(1, len(features)), h, b.astype(self.dtype)) * (
            self.lora.alpha / r)


def _einsum_spec(num_in: int, num_out: int) -> str:
    ins, outs = "abcd"[:num_in], "wxyz"[:num_out]
    return f"...{ins},{ins}{outs}->...{outs}"


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int):
    """T5's bucketing of key_position - query_position (mesh-tensorflow / HF T5 formula).

    Args:
        relative_position: int array of key_position - query_position.
        bidirectional: True (encoder): half the buckets for each sign; False (decoder): only
            keys at or before the query are told apart.
        num_buckets, max_distance: exact buckets for small distances, log-spaced up to
            max_distance, then the last bucket.
    Returns:
        int32 bucket ids, shaped like relative_position.
    """
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret = (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
        / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
    """T5 relative attention bias rel_embedding[head, bucket(k_pos - q_pos)] -> [b, h, q, k]."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, q_positions, k_positions):
        """Args: q_positions [b, q], k_positions [b, k] (original token positions, also for
        routed tokens). Returns: the bias [b, num_heads, q, k], float32."""
        table = self.param("rel_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets), jnp.float32)
        rel = k_positions[:, None, :] - q_positions[:, :, None]                 # [b, q, k]
        buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets,
                                           self.max_distance)
        return jnp.moveaxis(jnp.take(table, buckets, axis=1), 0, 1)            # [b, h, q, k]


class Attention(nn.Module):
    """F_att (equation 5): queries from `x_q`, keys / values from `x_kv`.

    k-to-all routing passes the routed tokens as `x_q` and all tokens as `x_kv`; k-to-k
    passes the routed tokens as both. Positions are explicit ([b or 1, len] ints) so that
    routed tokens keep their original relative positions; `mask` is [b or 1, q, k] bool.
    With `decode=True` (one query per call), keys / values go into a cache and the query
    position is the cache index.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    lora: LoraConfig | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_q, x_kv, q_pos, kv_pos, mask=None, relpos=None, *,
                 decode: bool = False, deterministic: bool = True):
        """Multi-head / grouped / multi-query attention of x_q over x_kv.

        Args:
            x_q: [b, q, d] queries (k-to-all and k-to-k: the routed tokens).
            x_kv: [b, s, d] keys and values (k-to-all: every token; k-to-k: the routed ones).
            q_pos, kv_pos: [b or 1, q] / [b or 1, s] positions for the relative bias.
            mask: [b or 1, q, s] bool, True = may attend (None: everything).
            relpos: a RelativePositionBias (None: no bias, e.g. cross-attention).
            decode: one decoding step with the key / value cache.
            deterministic: no dropout.
        Returns:
            [b, q, d] in self.dtype.
        """
        h, g, d = self.num_heads, self.num_kv_heads, self.head_dim
        if h % g:
            raise ValueError(f"num_heads={h} must be a multiple of num_kv_heads={g}.")
        dense = lambda feats, axes, name, scale=1.0, num_in=1: Dense(
            feats, axes, num_in=num_in, init_scale=scale, lora=self.lora, dtype=self.dtype,
            name=name)
        # T5 folds 1/sqrt(head_dim) into the query init instead of scaling the logits.
        q = dense((h, d), ("embed", "heads", "kv"), "query", 1.0 / d)(x_q)     # [b, q, h, d]
        k = dense((g, d), ("embed", "kv_heads", "kv"), "key")(x_kv)             # [b, s, g, d]
        v = dense((g, d), ("embed", "kv_heads", "kv"), "value")(x_kv)
        if decode:
            k, v, q_pos, kv_pos, mask = self._update_cache(k, v, q_pos, kv_pos, mask)
        bias = 0.0 if relpos is None else relpos(q_pos, kv_pos)                 # [b, h, q, k]
        if mask is not None:
            bias = bias + jnp.where(mask, 0.0, _BIG_NEG)[:, None]
        b, lq = q.shape[:2]
        # Heads lead, tokens follow: q [b, g, r, q, d], k / v [b, g, s, d], so both products are
        # plain batched matmuls over (b, g[, r]) whose [b, g, r, q, s] results need no transpose
        # (XLA:CPU then fuses dot-softmax-dot without materialising transposed copies of the
        # [h, q, s] logits and probabilities; only the small q, k, v, y tensors are transposed).
        q = q.reshape(b, lq, g, h // g, d).transpose(0, 2, 3, 1, 4)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        logits = jnp.einsum("bgrqd,bgkd->bgrqk", q, k).astype(jnp.float32)
        if not isinstance(bias, float):            # [B, h or 1, q, k] -> [B, g, r or 1, q, k]
            bias = (bias.reshape(bias.shape[0], g, h // g, *bias.shape[2:])
                    if bias.shape[1] == h else bias[:, :, None])
            logits = logits + bias
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        probs = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
        y = jnp.einsum("bgrqk,bgkd->bgrqd", probs, v)
        y = y.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d)
        return dense((x_q.shape[-1],), ("heads", "kv", "embed"), "out", num_in=2)(y)

    def _update_cache(self, k, v, q_pos, kv_pos, mask):
        """Writes this step's key / value at cache_index; attends to the filled prefix."""
        is_init = not self.has_variable("cache", "cached_key")
        ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        ci = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if is_init:        # the init call only creates the cache, at full length
            return k, v, q_pos, kv_pos, mask
        if k.shape[1] != 1:
            raise ValueError(f"decode=True takes one token per step, got {k.shape[1]}; "
                             f"initialise the cache with the full target length first.")
        i = ci.value
        ck.value = jax.lax.dynamic_update_slice_in_dim(ck.value, k, i, axis=1)
        cv.value = jax.lax.dynamic_update_slice_in_dim(cv.value, v, i, axis=1)
        ci.value = i + 1
        max_len = ck.value.shape[1]
        kv_pos = jnp.arange(max_len)[None]
        q_pos = jnp.full((1, 1), i)
        step_mask = (kv_pos <= i)[:, None, :]                                   # [1, 1, L]
        return ck.value, cv.value, q_pos, kv_pos, step_mask


class GatedMlp(nn.Module):
    """F_ffn (equation 6): wo(act_0(wi_0 x) * act_1(wi_1 x)); one activation means wi, wo."""

    d_ff: int
    activations: Sequence[str] = ("gelu", "linear")
    dropout_rate: float = 0.0
    lora: LoraConfig | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        """Args: x [..., d]; deterministic: no dropout. Returns: [..., d]."""
        dense = lambda feats, axes, name: Dense(feats, axes, lora=self.lora, dtype=self.dtype,
                                                name=name)
        if len(self.activations) == 1:
            h = activation(self.activations[0])(dense((self.d_ff,), ("embed", "mlp"), "wi")(x))
        else:
            h = 1.0
            for i, act in enumerate(self.activations):
                h = h * activation(act)(dense((self.d_ff,), ("embed", "mlp"), f"wi_{i}")(x))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return dense((x.shape[-1],), ("mlp", "embed"), "wo")(h)


class ParallelAdapter(nn.Module):
    """Equation (2): Z_adapter = W_up act(W_down x); W_up starts at zero (output 0 at init)."""

    adapter_dim: int
    activation: str = "relu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        """Args: x [..., d] (the normalised layer input Xn). Returns: Z_adapter [..., d]."""
        h = Dense((self.adapter_dim,), ("embed", "adapter"), dtype=self.dtype, name="down")(x)
        return Dense((x.shape[-1],), ("adapter", "embed"), init_scale=0.0, dtype=self.dtype,
                     name="up")(activation(self.activation)(h))
