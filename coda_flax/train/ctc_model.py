"""CodaCtcModel: the CoDA speech encoder with a CTC head behind the trainer's model interface.

    model = CodaCtcModel(ModelConfig.from_preset("speech_base", coda=CodaConfig(reduction=2)))
    variables = model.get_initial_variables(rng, {"encoder_input_tokens": (8, 1600, 81)})
    loss, metrics = model.loss_fn(params, batch, dropout_rng)
    ids = model.predict_batch(params, batch)             # greedy CTC labels, 0-padded

Batches are ContinuousEncDecFeatureConverter batches: encoder_input_tokens [b, T, 1 + mel]
(frame index, log-mel), decoder_target_tokens [b, L] CTC labels (0 = padding = blank);
decoder_loss_weights, when present, drops the rows that are all 0 (filler examples);
decoder_input_tokens is not used. The loss is the
summed CTC negative log-likelihood (as T5X sums token losses); metrics carry the label count
so evaluation can report per-label loss.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import jax.numpy as jnp

from coda_flax import ctc
from coda_flax.config import ModelConfig
from coda_flax.inputs import input_dtype
from coda_flax.model import EncoderCtc

__all__ = ["CodaCtcModel"]

Batch = Mapping[str, jnp.ndarray]


class CodaCtcModel:
    """Trainer-facing wrapper of `EncoderCtc(config)` (config.head == "ctc")."""

    def __init__(self, config: ModelConfig, *, blank_id: int = 0, output_vocabulary=None,
                 k: int | None = None):
        if not isinstance(config, ModelConfig) or config.head != "ctc":
            raise ValueError("CodaCtcModel needs a ModelConfig with head='ctc' (e.g. "
                             "ModelConfig.from_preset('speech_base')); use CodaT5Model for "
                             "encoder-decoder models.")
        self.config = config
        self.module = EncoderCtc(config, k=k)
        self.blank_id = blank_id
        self.output_vocabulary = output_vocabulary
        self.eos_id = None

    @property
    def FEATURE_CONVERTER_CLS(self):  # noqa: N802 (T5X's attribute name)
        from coda_flax.tasks.features import ContinuousEncDecFeatureConverter
        return ContinuousEncDecFeatureConverter

    def with_config(self, config: ModelConfig) -> "CodaCtcModel":
        return CodaCtcModel(config, blank_id=self.blank_id,
                            output_vocabulary=self.output_vocabulary)

    def with_k(self, k: int | None) -> "CodaCtcModel":
        """A copy of this model whose module is `EncoderCtc(config, k=k)`: each CoDA encoder
        layer routes k tokens (a k plan stage)."""
        model = copy.copy(self)
        model.module = EncoderCtc(self.config, k=k)
        return model

    def __repr__(self):
        return f"CodaCtcModel({self.config!r})"

    def get_initial_variables(self, rng, input_shapes: Mapping[str, tuple],
                              input_types: Mapping[str, Any] | None = None):
        if "encoder_input_tokens" not in input_shapes:
            raise KeyError(f"get_initial_variables: input_shapes needs 'encoder_input_tokens', "
                           f"got {sorted(input_shapes)}.")
        dtype = (input_types or {}).get("encoder_input_tokens", input_dtype(self.config))
        return self.module.init(rng, jnp.ones(input_shapes["encoder_input_tokens"], dtype))

    def _logits(self, params, batch: Batch, dropout_rng=None):
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                                 enable_dropout=rngs is not None, rngs=rngs)

    def _per_example(self, params, batch: Batch, dropout_rng=None):
        """CTC losses [b] and which examples can be aligned at all: CTC needs at least
        len(labels) + (repeated neighbours) frames, and the 4x subsampling can leave a fast
        short utterance fewer. Those get loss 0 (as torch's zero_infinity) and no weight."""
        logits, mask = self._logits(params, batch, dropout_rng)
        labels = batch["decoder_target_tokens"]
        real = labels > 0
        repeats = jnp.sum(real[:, 1:] & (labels[:, 1:] == labels[:, :-1]), axis=-1)
        feasible = jnp.sum(mask, axis=-1) >= jnp.sum(real, axis=-1) + repeats
        if batch.get("decoder_loss_weights") is not None:     # all-0 rows: filler examples
            feasible = feasible & jnp.any(batch["decoder_loss_weights"] > 0, axis=-1)
        losses = ctc.ctc_loss(logits, mask, labels, real, blank_id=self.blank_id)
        return jnp.where(feasible, losses, 0.0), feasible, real

    def loss_fn(self, params, batch: Batch, dropout_rng) -> tuple[jnp.ndarray, dict]:
        """(summed CTC loss, metrics: loss, cross_ent_loss, weight_sum = aligned label count,
        unalignable = examples with too few encoder frames for their labels)."""
        per_example, feasible, real = self._per_example(params, batch, dropout_rng)
        loss = jnp.sum(per_example)
        weight = jnp.sum(jnp.where(feasible[:, None], real, False)).astype(jnp.float32)
        return loss, {"loss": loss, "cross_ent_loss": loss, "weight_sum": weight,
                      "z_loss": jnp.zeros(()),
                      "unalignable": jnp.sum(~feasible).astype(jnp.float32)}

    def eval_fn(self, params, batch: Batch):
        return self.loss_fn(params, batch, None)

    def score_batch(self, params, batch: Batch) -> jnp.ndarray:
        """log p(labels | audio) per example [b] (-inf where the labels cannot be aligned)."""
        per_example, feasible, _ = self._per_example(params, batch)
        return jnp.where(feasible, -per_example, -jnp.inf)

    def predict_batch_with_aux(self, params, batch: Batch, rng=None, **kwargs):
        """Greedy CTC decoding: (labels [b, n] left-aligned, 0-padded, {"lengths": [b]})."""
        del rng, kwargs
        logits, mask = self._logits(params, batch)
        ids, lengths = ctc.ctc_greedy_decode(logits, mask, blank_id=self.blank_id)
        return ids, {"lengths": lengths}

    def predict_batch(self, params, batch: Batch, rng=None, **kwargs) -> jnp.ndarray:
        return self.predict_batch_with_aux(params, batch, rng, **kwargs)[0]


def make_model(config: ModelConfig, **kwargs):
    """CodaCtcModel for CTC configs, CodaT5Model otherwise (kwargs go to the latter)."""
    if config.head == "ctc":
        return CodaCtcModel(config)
    from coda_flax.train.t5_model import CodaT5Model
    return CodaT5Model(config, **kwargs)

