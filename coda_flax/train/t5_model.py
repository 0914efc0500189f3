"""CodaT5Model: the CoDA encoder-decoder behind T5X's EncoderDecoderModel interface.

    model = CodaT5Model(ModelConfig.from_preset("paper_text_base", coda=CodaConfig(reduction=3)))
    variables = model.get_initial_variables(rng, {"encoder_input_tokens": (8, 512),
                                                  "decoder_input_tokens": (8, 114)})
    loss, metrics = model.loss_fn(params, batch, dropout_rng)        # training / eval
    scores = model.score_batch(params, batch)                        # log p(targets | inputs)
    decodes, aux = model.predict_batch_with_aux(params, batch, num_decodes=4)   # beam search

Batches use seqio's EncDecFeatureConverter keys (encoder_input_tokens, decoder_input_tokens,
decoder_target_tokens, decoder_loss_weights, and the segment ids / positions of packed
batches). Losses follow T5X (`losses.py`); decoding runs the encoder once per batch, then the
decoder one token per step against its key/value cache (`decoding.py`). No gin, no argv: gin
binds the constructor's arguments at the edges.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, MutableMapping

import jax
import jax.numpy as jnp

from coda_flax.config import ModelConfig
from coda_flax.inputs import input_dtype, input_shape
from coda_flax.model import EncoderDecoder
from coda_flax.train import decoding, losses

__all__ = ["CodaT5Model"]

Batch = Mapping[str, jnp.ndarray]
_OPTIONAL_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                      "decoder_positions")


class CodaT5Model:
    """T5X-style model wrapper around `EncoderDecoder(config)`.

    z_loss, label_smoothing, loss_normalizing_factor: as T5X (loss_normalizing_factor may be a
      number or "NUM_REAL_TARGET_TOKENS" | "NUM_TOTAL_TARGET_TOKENS" | "AVERAGE_PER_SEQUENCE").
    eos_id: end-of-sequence id (T5's 1); overridden by output_vocabulary.eos_id when given.
    decode_fn: a search with decoding.greedy_decode's signature; None picks greedy decoding for
      num_decodes == 1 and beam search otherwise.
    alpha: beam search's brevity penalty exponent (decoder_params={"alpha": ...} overrides).
    k: the tokens each CoDA encoder layer routes (a k plan stage's; None: config.coda.k(n)).
    """

    def __init__(self, config: ModelConfig, z_loss: float = 1e-4, label_smoothing: float = 0.0,
                 loss_normalizing_factor=None, *, eos_id: int = 1,
                 decode_fn: Callable | None = None, alpha: float = 0.6,
                 input_vocabulary=None, output_vocabulary=None, k: int | None = None):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"CodaT5Model: config must be a ModelConfig, got "
                            f"{type(config).__name__}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        if isinstance(loss_normalizing_factor, str):
            losses._as_special(loss_normalizing_factor)            # fail early on a typo
        self.config = config
        self.module = EncoderDecoder(config, k=k)
        self.z_loss = z_loss
        self.label_smoothing = label_smoothing
        self.loss_normalizing_factor = loss_normalizing_factor
        self.input_vocabulary = input_vocabulary
        self.output_vocabulary = output_vocabulary
        self.eos_id = output_vocabulary.eos_id if output_vocabulary is not None else eos_id
        self.decode_fn = decode_fn
        self.alpha = alpha
        self._settings = dict(z_loss=z_loss, label_smoothing=label_smoothing,
                              loss_normalizing_factor=loss_normalizing_factor, eos_id=eos_id,
                              decode_fn=decode_fn, alpha=alpha,
                              input_vocabulary=input_vocabulary,
                              output_vocabulary=output_vocabulary)

    @property
    def FEATURE_CONVERTER_CLS(self):  # noqa: N802 (T5X's attribute name)
        import seqio                  # lazy: seqio pulls in tensorflow
        if self.config.encoder_input != "tokens":          # image patches / audio frames
            from coda_flax.tasks.features import ContinuousEncDecFeatureConverter
            return ContinuousEncDecFeatureConverter
        return seqio.EncDecFeatureConverter

    def with_config(self, config: ModelConfig) -> "CodaT5Model":
        """The same loss / decoding settings around another ModelConfig (parameters carry over
        when the tree is the same, e.g. another k for a k-annealing stage)."""
        return CodaT5Model(config, **self._settings)

    def with_k(self, k: int | None) -> "CodaT5Model":
        """A copy of this model whose module is `EncoderDecoder(config, k=k)`: each CoDA encoder
        layer routes k tokens (a k plan stage, coda_flax.kplan; None: config.coda.k(n)); the
        config, settings and parameters are the same."""
        model = copy.copy(self)
        model.module = EncoderDecoder(self.config, k=k)
        return model

    def __repr__(self):
        return f"CodaT5Model({self.config!r})"

    # ------------------------------------------------------------------ initialisation
    def get_initial_variables(self, rng, input_shapes: Mapping[str, tuple],
                              input_types: Mapping[str, Any] | None = None):
        """Flax variables ({"params": ...}) with nn.Partitioned boxes (logical axis names).

        input_shapes needs encoder_input_tokens and decoder_input_tokens ([batch, length];
        encoder_input_tokens is [batch, length, dim] for patches / frames, float32); segment
        ids / positions present there are passed too (packed batches).
        """
        input_types = {"encoder_input_tokens": input_dtype(self.config), **(input_types or {})}
        for key in ("encoder_input_tokens", "decoder_input_tokens"):
            if key not in input_shapes:
                raise KeyError(f"get_initial_variables: input_shapes needs {key!r}, got "
                               f"{sorted(input_shapes)}.")
        ones = lambda key: jnp.ones(input_shapes[key], input_types.get(key, jnp.int32))
        extra = {k: ones(k) for k in _OPTIONAL_FEATURES if k in input_shapes}
        dec = ones("decoder_input_tokens")
        return self.module.init(rng, ones("encoder_input_tokens"), dec, dec,
                                enable_dropout=False, **extra)

    # ------------------------------------------------------------------ training / scoring
    def _compute_logits(self, params, batch: Batch, dropout_rng=None, mutable=False):
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        extra = {k: batch[k] for k in _OPTIONAL_FEATURES if batch.get(k) is not None}
        return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                                 batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                                 enable_dropout=rngs is not None, rngs=rngs, mutable=mutable,
                                 **extra)

    def loss_fn(self, params, batch: Batch, dropout_rng) -> tuple[jnp.ndarray, dict]:
        """(loss, metrics): T5X's weighted cross-entropy; dropout on when dropout_rng is given.

        metrics: loss, z_loss, cross_ent_loss (loss without the z-loss term), weight_sum and
        accuracy (weighted fraction of argmax == target), all scalars.
        """
        factor, weights = losses.normalizing_factor_and_weights(self.loss_normalizing_factor,
                                                                batch)
        logits = self._compute_logits(params, batch, dropout_rng)
        targets = batch["decoder_target_tokens"]
        loss, z_loss, weight_sum = losses.cross_entropy_with_logits(
            logits, targets, weights, z_loss=self.z_loss, label_smoothing=self.label_smoothing,
            loss_normalizing_factor=factor)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        accuracy = jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1e-8)
        return loss, {"loss": loss, "z_loss": z_loss, "cross_ent_loss": loss - z_loss,
                      "weight_sum": weight_sum, "accuracy": accuracy}

    def eval_fn(self, params, batch: Batch):
        """loss_fn without dropout."""
        return self.loss_fn(params, batch, None)

    def score_batch(self, params, batch: Batch, return_intermediates: bool = False):
        """Per-sequence sum of target log-likelihoods [batch] (weighted by decoder_loss_weights,
        no label smoothing or z-loss). return_intermediates=True also returns the sown
        intermediates (encoder/layers_i/router_indices and router_lam for routed layers) plus
        decoder/target_tokens and decoder/loss_weights, each a 1-tuple as in T5X."""
        _, weights = losses.normalizing_factor_and_weights(None, batch)
        targets = batch["decoder_target_tokens"]
        if return_intermediates:
            logits, state = self._compute_logits(params, batch, mutable=["intermediates"])
            intermediates = dict(state.get("intermediates", {}))
            intermediates["decoder"] = dict(intermediates.get("decoder", {}),
                                            target_tokens=(targets,), loss_weights=(weights,))
        else:
            logits = self._compute_logits(params, batch)
        soft, _ = losses.smoothed_targets(targets, logits.shape[-1])
        token_nll, _ = losses.token_cross_entropy(logits, soft, z_loss=0.0)
        scores = -jnp.sum(token_nll * weights, axis=-1)
        return (scores, intermediates) if return_intermediates else scores

    # ------------------------------------------------------------------ decoding
    def _initial_cache(self, batch_size: int, encoder_length: int, decoder_length: int):
        """Zeroed decoder cache (keys / values at the full target length, index 0)."""
        c = self.config
        shapes = jax.eval_shape(lambda: self.module.init(
            jax.random.PRNGKey(0), jnp.ones((batch_size, encoder_length, c.d_model), c.jnp_dtype),
            jnp.ones(input_shape(c, batch_size, encoder_length), input_dtype(c)),
            jnp.ones((batch_size, decoder_length), jnp.int32), decode=True,
            method="decode")["cache"])
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def predict_batch_with_aux(self, params, batch: Batch, rng=None,
                               decoder_params: MutableMapping[str, Any] | None = None,
                               return_all_decodes: bool = False, num_decodes: int = 1,
                               prompt_with_targets: bool = False):
        """(decodes, {"scores": ...}): decodes [batch, len] (the best) or, with
        return_all_decodes, [batch, num_decodes, len] sorted by increasing score.

        Greedy decoding when num_decodes == 1, beam search with num_decodes beams otherwise
        (unless the model has its own decode_fn). len = decoder_input_tokens.shape[1]; decodes
        end with EOS and then hold 0. decoder_params go to the search (alpha, max_decode_len,
        eos_id, ...); rng becomes decoder_params["decode_rng"] (unused by these searches).
        prompt_with_targets: the nonzero decoder_input_tokens are forced as a prefix.
        """
        decoder_params = dict(decoder_params or {})
        if rng is not None:
            if decoder_params.get("decode_rng") is not None:
                raise ValueError("predict_batch_with_aux: got both rng and "
                                 "decoder_params['decode_rng']; pass one.")
            decoder_params["decode_rng"] = rng
        eos_id = decoder_params.pop("eos_id", self.eos_id)
        decode_fn = self.decode_fn or (decoding.greedy_decode if num_decodes == 1
                                       else decoding.beam_search)
        if decode_fn is decoding.beam_search:
            decoder_params.setdefault("alpha", self.alpha)

        encoder_tokens = batch["encoder_input_tokens"]
        decoder_inputs = batch["decoder_input_tokens"]
        batch_size, decoder_length = decoder_inputs.shape
        encoded = self.module.apply({"params": params}, encoder_tokens, method="encode")
        # Each example's encoding is repeated per decode: [b * num_decodes, n, d].
        encoded = decoding.flat_batch_beam_expand(encoded, num_decodes)
        encoder_tokens = decoding.flat_batch_beam_expand(encoder_tokens, num_decodes)

        def tokens_to_logits(tokens, cache):
            logits, state = self.module.apply(
                {"params": params, "cache": cache}, encoded, encoder_tokens, tokens,
                decode=True, method="decode", mutable=["cache"])
            return logits[:, 0], state["cache"]

        cache = self._initial_cache(batch_size, encoder_tokens.shape[1], decoder_length)
        prompt = decoder_inputs if prompt_with_targets else jnp.zeros_like(decoder_inputs)
        decodes, scores = decode_fn(inputs=prompt, cache=cache,
                                    tokens_to_logits=tokens_to_logits, eos_id=eos_id,
                                    num_decodes=num_decodes, **decoder_params)
        if return_all_decodes:
            return decodes, {"scores": scores}
        return decodes[:, -1], {"scores": scores[:, -1]}

    def predict_batch(self, params, batch: Batch, rng=None, **kwargs) -> jnp.ndarray:
        """The decodes of predict_batch_with_aux, without the scores."""
        return self.predict_batch_with_aux(params, batch, rng=rng, **kwargs)[0]
