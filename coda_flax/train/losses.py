"""Token-level cross-entropy with T5X's semantics (label smoothing, z-loss, loss normalisation).

Per token, with vocabulary size V, smoothing s, confidence c = 1 - s and low = s / (V - 1):

    q        = c at the target, low elsewhere                  (soft targets)
    log Z    = logsumexp(logits)
    loss_tok = -sum_v q_v log softmax(logits)_v - H(q) + z_loss * (log Z)^2

H(q) = -(c log c + (V - 1) low log low) is T5X's "normalizing constant": subtracting it makes
the smoothed loss a KL divergence, 0 for a perfect prediction. Token losses are multiplied by
the loss weights (decoder_loss_weights), summed, and divided by loss_normalizing_factor when one
is given: a number, or one of T5X's special factors (see `normalizing_factor_and_weights`).
"""

from __future__ import annotations

import enum
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cross_entropy_with_logits", "compute_weighted_cross_entropy", "token_cross_entropy",
           "smoothed_targets", "SpecialLossNormalizingFactor",
           "normalizing_factor_and_weights"]


def smoothed_targets(targets, vocab_size: int, label_smoothing: float = 0.0):
    """Soft targets [..., V] from ids [...] (or one-hot / soft targets [..., V]), and H(q).

    One-hot rows become (c at the target, low elsewhere); returns (soft_targets, entropy) with
    entropy the constant T5X subtracts so that the smoothed loss is 0 at the optimum.
    """
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab_size - 1)
    entropy = -(confidence * np.log(confidence) if confidence > 0 else 0.0) - (
        (vocab_size - 1) * low * np.log(low + 1e-20))
    targets = jnp.asarray(targets)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        soft = jax.nn.one_hot(targets, vocab_size, dtype=jnp.float32)
    else:
        soft = targets.astype(jnp.float32)
    if label_smoothing:
        soft = soft * confidence + (1.0 - soft) * low
    return soft, float(entropy)


def token_cross_entropy(logits, soft_targets, z_loss: float = 0.0):
    """Per-token (loss, z_loss_part), both [...]: -sum q log p + z_loss log(Z)^2, and the latter.

    Computed in float32 whatever the logits' dtype.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    nll = -jnp.sum(soft_targets * (logits - log_z[..., None]), axis=-1)
    z_part = z_loss * jnp.square(log_z)
    return nll + z_part, z_part


def cross_entropy_with_logits(logits, targets_onehot_or_ids, weights=None, z_loss: float = 1e-4,
                              label_smoothing: float = 0.0, loss_normalizing_factor=None):
    """Weighted, summed cross-entropy: (total_loss, z_loss_part, weight_sum), all scalars.

    logits [..., V]; targets ids [...] or one-hot / soft [..., V]; weights [...] or None (every
    token weight 1). total_loss includes the z-loss term; z_loss_part is that term alone (for
    logging). loss_normalizing_factor: None (plain sum) or a number to divide both sums by.
    Same semantics as T5X's `losses.compute_weighted_cross_entropy`.
    """
    vocab_size = logits.shape[-1]
    targets = jnp.asarray(targets_onehot_or_ids)
    is_ids = jnp.issubdtype(targets.dtype, jnp.integer)
    expected = logits.shape[:-1] if is_ids else logits.shape
    if targets.shape != expected:
        raise ValueError(f"targets must be ids of shape {logits.shape[:-1]} or one-hot of shape "
                         f"{logits.shape}; got {targets.shape} ({targets.dtype}).")
    soft, entropy = smoothed_targets(targets, vocab_size, label_smoothing)
    loss, z_part = token_cross_entropy(logits, soft, z_loss)
    loss = loss - entropy
    if weights is None:
        weight_sum = jnp.asarray(float(np.prod(logits.shape[:-1])), jnp.float32)
    else:
        weights = jnp.asarray(weights, jnp.float32)
        loss, z_part = loss * weights, z_part * weights
        weight_sum = jnp.sum(weights)
    if loss_normalizing_factor is not None:
        loss, z_part = loss / loss_normalizing_factor, z_part / loss_normalizing_factor
    return jnp.sum(loss), jnp.sum(z_part), weight_sum


def compute_weighted_cross_entropy(logits, targets, weights=None, label_smoothing: float = 0.0,
                                   z_loss: float = 0.0, loss_normalizing_factor=None):
    """T5X's argument order and defaults (z_loss = 0) for `cross_entropy_with_logits`."""
    return cross_entropy_with_logits(logits, targets, weights, z_loss=z_loss,
                                     label_smoothing=label_smoothing,
                                     loss_normalizing_factor=loss_normalizing_factor)


@enum.unique
class SpecialLossNormalizingFactor(enum.Enum):
    """Batch-dependent loss normalizing factors (T5X's names).

    NUM_REAL_TARGET_TOKENS: divide by the sum of the loss weights.
    NUM_TOTAL_TARGET_TOKENS: divide by batch * target_length (padding included).
    AVERAGE_PER_SEQUENCE: average each sequence's (or packed segment's) loss over its tokens,
      then average over sequences: every example weighs the same whatever its length.
    """

    NUM_REAL_TARGET_TOKENS = 1
    NUM_TOTAL_TARGET_TOKENS = 2
    AVERAGE_PER_SEQUENCE = 3


def _as_special(factor) -> SpecialLossNormalizingFactor:
    if isinstance(factor, SpecialLossNormalizingFactor):
        return factor
    try:
        return SpecialLossNormalizingFactor[factor.upper()]
    except KeyError:
        raise ValueError(f"unknown loss_normalizing_factor {factor!r}; use None, a number, or "
                         f"one of {[f.name for f in SpecialLossNormalizingFactor]}.") from None


def normalizing_factor_and_weights(factor, batch: Mapping[str, jnp.ndarray]):
    """(loss_normalizing_factor as None or a number / scalar array, loss weights [b, len]).

    Weights are batch["decoder_loss_weights"], or decoder_target_tokens > 0 when absent.
    AVERAGE_PER_SEQUENCE divides each weight by its sequence's (packed: segment's) weight sum.
    """
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    weights = jnp.asarray(weights, jnp.float32)
    if factor is None or not isinstance(factor, (str, SpecialLossNormalizingFactor)):
        return factor, weights
    factor = _as_special(factor)
    if factor is SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS:
        return jnp.sum(weights), weights
    if factor is SpecialLossNormalizingFactor.NUM_TOTAL_TARGET_TOKENS:
        return float(np.prod(targets.shape)), weights
    segments = batch.get("decoder_segment_ids")
    if segments is None:
        per_token_total = jnp.sum(weights, axis=-1, keepdims=True)
    else:                               # weight sum of the segment each token belongs to
        same = segments[:, :, None] == segments[:, None, :]
        per_token_total = jnp.einsum("bij,bj->bi", same.astype(jnp.float32), weights)
    weights = jnp.where(per_token_total > 0, weights / jnp.maximum(per_token_total, 1e-30), 0.0)
    return jnp.sum(weights), weights
