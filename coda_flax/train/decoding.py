"""Autoregressive decoding with a key/value cache: greedy search and beam search.

Both search over a callback

    tokens_to_logits(tokens [B, 1] int32, cache) -> (logits [B, V] or [B, 1, V], new_cache)

that runs one decoder step. Shapes are static (a `jax.lax.while_loop` over at most
`max_decode_len` steps), so each search compiles once per batch shape.

Conventions (T5's): the first decoder input is the start token 0; `eos_id` (1) ends a sequence;
positions after it hold 0 (padding). Returned sequences are the *targets* (no start token),
[batch, num_decodes, length], with scores [batch, num_decodes] in increasing order, so the
best decode is the last one, as in T5X's decoding functions.

`inputs` [batch, length] fixes the batch size and the length, and may carry a decoder prompt
in decoder-input alignment (T5X's): wherever inputs[:, i + 1] != 0, output i is forced to that
token and adds nothing to the score.

Cache layout: leaves whose leading axis is the batch are per-sequence state (cached keys and
values); beam search repeats them per beam (`flat_batch_beam_expand`, batch * beams flattened
with each element's beams adjacent) and reorders them when beams are reselected. Scalar leaves
(the shared cache index) are left as they are.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["greedy_decode", "beam_search", "brevity_penalty", "flat_batch_beam_expand",
           "TokensToLogits"]

TokensToLogits = Callable[[jnp.ndarray, Any], tuple[jnp.ndarray, Any]]
NEG_INF = -jnp.inf


def brevity_penalty(alpha, length):
    """T5X / GNMT length normalisation: scores are log p / ((5 + length) / 6) ** alpha."""
    return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def flat_batch_beam_expand(x, beam_size: int):
    """[B, ...] -> [B * beam_size, ...], each element repeated beam_size times in place."""
    return jnp.repeat(x, beam_size, axis=0)


def _expand_cache(cache, batch_size: int, beam_size: int):
    def expand(x):
        if x.ndim == 0:
            return x
        if x.shape[0] != batch_size:
            raise ValueError(f"cache leaf of shape {x.shape} does not start with the batch size "
                             f"{batch_size}; create the cache at the batch size of `inputs`.")
        return flat_batch_beam_expand(x, beam_size)
    return jax.tree_util.tree_map(expand, cache)


def _gather_beams(x, beam_indices):
    """x [B, K_src, ...] gathered along the beam axis with beam_indices [B, K] -> [B, K, ...]."""
    idx = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _gather_cache(cache, beam_indices):
    """Reorders the per-sequence cache leaves [B * K, ...] to follow the selected beams."""
    batch, beams = beam_indices.shape
    def gather(x):
        if x.ndim == 0:
            return x
        return _gather_beams(x.reshape((batch, -1) + x.shape[1:]), beam_indices).reshape(
            (batch * beams,) + x.shape[1:])
    return jax.tree_util.tree_map(gather, cache)


def _step_log_probs(tokens_to_logits, tokens, cache):
    logits, cache = tokens_to_logits(tokens, cache)
    logits = logits.reshape(tokens.shape[0], logits.shape[-1]).astype(jnp.float32)
    return jax.nn.log_softmax(logits, axis=-1), cache


def _forced_tokens(inputs, i):
    """The prompt token forced at output position i (0: none), [B]."""
    length = inputs.shape[1]
    nxt = jax.lax.dynamic_index_in_dim(inputs, jnp.minimum(i + 1, length - 1), axis=1,
                                       keepdims=False)
    return jnp.where(i + 1 < length, nxt, 0)


def _decode_len(inputs, max_decode_len):
    length = inputs.shape[1]
    if max_decode_len is None:
        return length
    if not 1 <= max_decode_len <= length:
        raise ValueError(f"max_decode_len={max_decode_len} must be in [1, {length}] (the "
                         f"length of `inputs`).")
    return max_decode_len


def greedy_decode(inputs, cache, tokens_to_logits: TokensToLogits, eos_id: int = 1,
                  num_decodes: int = 1, max_decode_len: int | None = None, start_id: int = 0,
                  **unused):
    """Argmax decoding: (sequences [B, 1, L] int32, scores [B, 1] = summed log-probabilities).

    Stops early once every sequence has emitted `eos_id` (the EOS token is kept and scored;
    positions after it are 0). `unused` absorbs decoder parameters meant for other searches
    (alpha, decode_rng), so either search can be a model's decode_fn.
    """
    del unused
    if num_decodes != 1:
        raise ValueError(f"greedy_decode returns one decode per example, got "
                         f"num_decodes={num_decodes}; use beam_search for more.")
    inputs = jnp.asarray(inputs, jnp.int32)
    batch, length = inputs.shape
    steps = _decode_len(inputs, max_decode_len)

    def cond(state):
        i, _, _, _, finished, _ = state
        return (i < steps) & ~jnp.all(finished)

    def body(state):
        i, token, sequences, scores, finished, cache = state
        log_probs, cache = _step_log_probs(tokens_to_logits, token[:, None], cache)
        forced = _forced_tokens(inputs, i)
        nxt = jnp.where(forced != 0, forced, jnp.argmax(log_probs, axis=-1).astype(jnp.int32))
        nxt = jnp.where(finished, 0, nxt)
        gained = jnp.take_along_axis(log_probs, nxt[:, None], axis=-1)[:, 0]
        scores = scores + jnp.where(finished | (forced != 0), 0.0, gained)
        sequences = jax.lax.dynamic_update_slice_in_dim(sequences, nxt[:, None], i, axis=1)
        finished = finished | (nxt == eos_id)
        return i + 1, nxt, sequences, scores, finished, cache

    state = (jnp.array(0, jnp.int32), jnp.full((batch,), start_id, jnp.int32),
             jnp.zeros((batch, length), jnp.int32), jnp.zeros((batch,), jnp.float32),
             jnp.zeros((batch,), bool), cache)
    _, _, sequences, scores, _, _ = jax.lax.while_loop(cond, body, state)
    return sequences[:, None], scores[:, None]


def beam_search(inputs, cache, tokens_to_logits: TokensToLogits, eos_id: int = 1,
                num_decodes: int = 4, alpha: float = 0.6, max_decode_len: int | None = None,
                start_id: int = 0, **unused):
    """Beam search: (sequences [B, K, L] int32, scores [B, K]), K = num_decodes beams.

    Scores are log p(sequence) / brevity_penalty(alpha, length), length counting the EOS token;
    sorted increasing (best last). Each step expands the K alive beams by every token, keeps the
    2K best candidates (at most K of them end with EOS, so K can stay alive), moves the ones
    that ended into the finished set (the K best so far) and continues with the K best that did
    not. A sequence that reaches `max_decode_len` without EOS is finished there. The loop stops
    early once no alive beam can still enter the finished set. Slots left without a finished
    sequence (only when fewer than K sequences exist, e.g. under a long forced prompt) hold
    zeros and score -inf.
    `cache` is at batch size B; it is expanded per beam here.
    """
    del unused
    inputs = jnp.asarray(inputs, jnp.int32)
    batch, length = inputs.shape
    k = num_decodes
    steps = _decode_len(inputs, max_decode_len)
    cache = _expand_cache(cache, batch, k)
    positions = jnp.arange(length)

    def best_possible(alive_log_probs, i):
        # log p only decreases as a beam grows; the most lenient penalty is at either end.
        penalty = jnp.maximum(brevity_penalty(alpha, i + 1), brevity_penalty(alpha, steps))
        return jnp.max(alive_log_probs, axis=1) / penalty

    def cond(state):
        i, alive_log_probs, _, finished_scores, _, _ = state
        hopeless = jnp.min(finished_scores, axis=1) >= best_possible(alive_log_probs, i)
        return (i < steps) & ~jnp.all(hopeless)

    def body(state):
        i, alive_log_probs, alive_seqs, finished_scores, finished_seqs, cache = state
        last = jax.lax.dynamic_index_in_dim(alive_seqs, jnp.maximum(i - 1, 0), axis=2,
                                            keepdims=False)
        last = jnp.where(i == 0, start_id, last)                                  # [B, K]
        log_probs, cache = _step_log_probs(tokens_to_logits, last.reshape(batch * k, 1), cache)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.reshape(batch, k, vocab)
        forced = _forced_tokens(inputs, i)[:, None, None]                        # [B, 1, 1]
        is_forced = jnp.arange(vocab) == forced
        log_probs = jnp.where(forced != 0, jnp.where(is_forced, 0.0, NEG_INF), log_probs)

        # The 2K best one-token extensions of the alive beams.
        candidates = (alive_log_probs[:, :, None] + log_probs).reshape(batch, k * vocab)
        cand_log_probs, flat = jax.lax.top_k(candidates, 2 * k)                  # [B, 2K]
        cand_beams, cand_tokens = flat // vocab, (flat % vocab).astype(jnp.int32)
        cand_seqs = _gather_beams(alive_seqs, cand_beams)                        # [B, 2K, L]
        cand_seqs = jnp.where(positions == i, cand_tokens[:, :, None], cand_seqs)
        ended = (cand_tokens == eos_id) | (i + 1 >= steps)

        # Alive: the K best candidates that did not end; the cache follows their parents.
        alive_log_probs, pick = jax.lax.top_k(jnp.where(ended, NEG_INF, cand_log_probs), k)
        alive_seqs = _gather_beams(cand_seqs, pick)
        cache = _gather_cache(cache, _gather_beams(cand_beams, pick))

        # Finished: the K best of the previous finished set and the candidates that ended.
        cand_scores = jnp.where(ended, cand_log_probs / brevity_penalty(alpha, i + 1), NEG_INF)
        finished_scores, pick = jax.lax.top_k(
            jnp.concatenate([finished_scores, cand_scores], axis=1), k)
        finished_seqs = _gather_beams(jnp.concatenate([finished_seqs, cand_seqs], axis=1), pick)
        return i + 1, alive_log_probs, alive_seqs, finished_scores, finished_seqs, cache

    alive_log_probs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    state = (jnp.array(0, jnp.int32), alive_log_probs, jnp.zeros((batch, k, length), jnp.int32),
             jnp.full((batch, k), NEG_INF, jnp.float32), jnp.zeros((batch, k, length), jnp.int32),
             cache)
    _, _, _, finished_scores, finished_seqs, _ = jax.lax.while_loop(cond, body, state)
    return finished_seqs[:, ::-1], finished_scores[:, ::-1]
