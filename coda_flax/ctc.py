"""Connectionist temporal classification (CTC; Graves et al. 2006), the output layer of the
speech models: the encoder emits one distribution over {blank} + characters per frame, and a
labelling's probability is the sum over all frame alignments that collapse to it (merge repeats,
then drop blanks).

    ctc_loss(logits, logit_mask, labels, label_mask)    -> [b] negative log-likelihoods
                                                           (a wrapper over optax.ctc_loss)
    ctc_greedy_decode(logits, logit_mask)                -> (ids [b, T] left-aligned, lengths [b])
                                                           (best path; jax, static shapes)
    ctc_prefix_beam_search(log_probs, beam_width)        -> [(labels, log_prob)] best first
                                                           (numpy; prefix beam search over the
                                                           summed probability of each labelling)

Conventions of coda_flax's speech tasks: masks are True for valid frames / labels, label id 0 is
both padding and the CTC blank (coda_flax.tasks.speech.CharVocabulary), labels carry no EOS.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _right_align_labels(labels, label_mask):
    """Moves the valid labels of each row to the front (stable), as optax.ctc_loss requires."""
    order = jnp.argsort(jnp.logical_not(label_mask), axis=-1, stable=True)
    return (jnp.take_along_axis(labels, order, axis=-1),
            jnp.take_along_axis(label_mask, order, axis=-1))


def ctc_loss(logits, logit_mask, labels, label_mask=None, *, blank_id: int = 0,
             log_epsilon: float = -1e5):
    """Per-example CTC loss -log p(labels | logits), float32 [b].

    logits: [b, T, V] unnormalised scores (log-softmax is taken inside); logit_mask: [b, T] bool
    (True = real frame) or None (all frames real); labels: [b, L] int ids without blanks;
    label_mask: [b, L] bool (True = real label), or None: labels != blank_id (id 0 is padding).
    Valid labels need not be right-padded (they are compacted first).

    An impossible alignment (fewer frames than labels plus repeated neighbours) does not give inf
    as torch does: optax floors log(0) at log_epsilon, so the loss is very large (~1e5 per
    missing frame) but finite; filter such examples or compare with the frame budget.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels, jnp.int32)
    if logits.ndim != 3 or labels.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"ctc_loss expects logits [b, T, V] and labels [b, L]; got "
                         f"{logits.shape} and {labels.shape}")
    if logit_mask is None:
        logit_mask = jnp.ones(logits.shape[:2], bool)
    if label_mask is None:
        label_mask = labels != blank_id
    labels, label_mask = _right_align_labels(labels, jnp.asarray(label_mask, bool))
    logit_paddings = 1.0 - jnp.asarray(logit_mask, jnp.float32)
    label_paddings = 1.0 - label_mask.astype(jnp.float32)
    return optax.ctc_loss(logits.astype(jnp.float32), logit_paddings, labels, label_paddings,
                          blank_id=blank_id, log_epsilon=log_epsilon)


def ctc_greedy_decode(logits, logit_mask=None, *, blank_id: int = 0):
    """Best-path decoding: per-frame argmax, merge repeats, drop blanks.

    logits: [b, T, V] (or log-probs); logit_mask: [b, T] bool, True = real frame (masked frames
    are skipped: repeats are merged across them). Returns (ids int32 [b, T], lengths int32 [b]):
    the decoded labels left-aligned and zero-padded. Static shapes, jit-able.
    """
    logits = jnp.asarray(logits)
    b, t = logits.shape[:2]
    if logit_mask is None:
        logit_mask = jnp.ones((b, t), bool)
    logit_mask = jnp.asarray(logit_mask, bool)
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # The previous *valid* frame of every frame: running max of valid positions, shifted by one.
    positions = jnp.where(logit_mask, jnp.arange(t)[None, :], -1)
    last_valid = jax.lax.cummax(positions, axis=1)
    prev_index = jnp.concatenate([jnp.full((b, 1), -1), last_valid[:, :-1]], axis=1)
    prev = jnp.where(prev_index >= 0,
                     jnp.take_along_axis(best, jnp.maximum(prev_index, 0), axis=1), -1)
    keep = logit_mask & (best != blank_id) & (best != prev)
    target = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, t)  # t: out of range, dropped
    ids = jnp.zeros((b, t), jnp.int32).at[jnp.arange(b)[:, None], target].set(best, mode="drop")
    return ids, keep.sum(axis=1).astype(jnp.int32)


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def ctc_prefix_beam_search(log_probs, beam_width: int = 8, *, blank_id: int = 0,
                           length: Optional[int] = None) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search (Graves 2012 / Hannun et al. 2014) for one utterance, in numpy.

    log_probs: [T, V] per-frame log-probabilities (log-softmax of the logits); only the first
    `length` frames are read. Keeps the beam_width most probable label prefixes; each prefix
    carries log p(prefix, last frame blank) and log p(prefix, last frame non-blank), summed over
    all alignments, so with a beam at least as large as the number of prefixes the result is the
    exact probability of every labelling. Returns [(labels, log_prob)], best first.
    """
    log_probs = np.asarray(log_probs, np.float64)
    if log_probs.ndim != 2:
        raise ValueError(f"ctc_prefix_beam_search expects [T, V] log-probs, got {log_probs.shape}")
    steps = log_probs.shape[0] if length is None else int(length)
    beams = {(): (0.0, -math.inf)}  # prefix -> (log p ending in blank, log p ending in non-blank)
    for t in range(steps):
        frame = log_probs[t]
        nxt: dict = {}

        def add(prefix, blank=-math.inf, non_blank=-math.inf):
            pb, pnb = nxt.get(prefix, (-math.inf, -math.inf))
            nxt[prefix] = (_logaddexp(pb, blank), _logaddexp(pnb, non_blank))

        for prefix, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            add(prefix, blank=total + frame[blank_id])
            for c in range(frame.shape[0]):
                if c == blank_id:
                    continue
                p = frame[c]
                if prefix and prefix[-1] == c:
                    add(prefix, non_blank=pnb + p)                   # repeat merges
                    add(prefix + (c,), non_blank=pb + p)             # blank-separated repeat
                else:
                    add(prefix + (c,), non_blank=total + p)
        alive = [kv for kv in nxt.items() if _logaddexp(*kv[1]) > -math.inf]
        beams = dict(sorted(alive, key=lambda kv: -_logaddexp(*kv[1]))[:beam_width])
    ranked = sorted(((p, _logaddexp(*s)) for p, s in beams.items()), key=lambda x: -x[1])
    return [(tuple(int(i) for i in p), float(s)) for p, s in ranked]


__all__ = ["ctc_loss", "ctc_greedy_decode", "ctc_prefix_beam_search"]
