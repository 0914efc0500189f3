"""The T5 v1.1 encoder-decoder with CoDA encoder layers (paper section 3, Figure 2).

Encoder: embeddings of tokens, image patches or audio frames (coda_flax.inputs) ->
CodaEncoderLayer x L (DenseEncoderLayer when `coda` is None) -> RMSNorm.
Decoder: dense T5 decoder layers (causal self-attention, cross-attention, gated MLP), each
with a parallel adapter when CoDA is on -> RMSNorm -> logits.
EncoderCtc: the encoder with a CTC output layer (the speech models of section 6).
Each takes k, the tokens every CoDA encoder layer routes (a k plan stage's k, coda_flax.kplan;
None: config.coda.k(n)); it is a module attribute, so jit compiles once per value.
Parameter names follow T5X's minimal T5 (token_embedder, encoder/layers_{i}/..., decoder/...).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from coda_flax.coda_layer import CodaEncoderLayer, DenseEncoderLayer, attention_mask
from coda_flax.config import PRESETS, CodaConfig, ModelConfig, tiny_config
from coda_flax.inputs import (ConvSubsampling, PatchEmbedder, check_inputs, encoder_mask,
                              input_dtype, input_shape)
from coda_flax.kplan import routes
from coda_flax.layers import Attention, Dense, GatedMlp, ParallelAdapter, RelativePositionBias, RMSNorm

__all__ = ["ModelConfig", "CodaConfig", "PRESETS", "tiny_config", "Encoder", "Decoder",
           "DecoderLayer", "EncoderDecoder", "EncoderCtc", "build_module", "init_args",
           "relative_position_bias"]


def relative_position_bias(c: ModelConfig, *, bidirectional: bool,
                           name: str = "relpos_bias") -> RelativePositionBias:
    """The T5 relative position bias of a config (encoder: bidirectional, decoder: causal).

    Args:
        c: the ModelConfig (buckets, max distance, heads).
        bidirectional: True in the encoder, False in the decoder.
        name: the module name (the parameter tree's "relpos_bias").
    """
    return RelativePositionBias(num_buckets=c.relative_attention_num_buckets,
                                max_distance=c.relative_attention_max_distance,
                                num_heads=c.num_heads, bidirectional=bidirectional, name=name)


def _positions(tokens, positions):
    if positions is not None:
        return positions
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


class Encoder(nn.Module):
    """Input embedding -> num_encoder_layers CoDA (or dense) layers -> RMSNorm."""

    config: ModelConfig
    shared_embedding: nn.Module | None = None        # the token embedder (text inputs)
    k: int | None = None                             # routed tokens per layer (None: c.coda.k)

    def embed(self, inputs):
        """Token ids [b, n], patches [b, n, 2 + p*p*C] or frames [b, T, 1 + F] -> [b, n, d]."""
        c = self.config
        check_inputs(c, inputs)
        if c.encoder_input == "patches":
            return PatchEmbedder(c, name="patch_embedder")(inputs)
        if c.encoder_input == "frames":
            return ConvSubsampling(c, name="subsampling")(inputs)
        return self.shared_embedding(inputs).astype(c.jnp_dtype)

    @nn.compact
    def __call__(self, inputs, segment_ids=None, positions=None, deterministic=True):
        """Args: inputs as `embed`; segment_ids / positions [b, n] of packed examples (None:
        unpacked); deterministic: no dropout. Returns: the encoded tokens [b, n, d]."""
        c = self.config
        x = self.embed(inputs)
        valid = encoder_mask(c, inputs)
        positions = _positions(valid, positions)
        x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
        relpos = (relative_position_bias(c, bidirectional=True) if c.encoder_relative_attention
                  else None)
        for i in range(c.num_encoder_layers):
            layer = (DenseEncoderLayer(c, name=f"layers_{i}") if c.coda is None else
                     CodaEncoderLayer(c, k=self.k, name=f"layers_{i}"))
            x = layer(x, valid, positions, relpos, segment_ids=segment_ids,
                      deterministic=deterministic)
        x = RMSNorm(epsilon=c.layer_norm_epsilon, dtype=c.jnp_dtype, name="encoder_norm")(x)
        return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class DecoderLayer(nn.Module):
    """Dense T5 decoder layer; with CoDA on, a parallel adapter runs beside it."""

    config: ModelConfig

    @nn.compact
    def __call__(self, y, encoded, self_mask, cross_mask, positions, relpos, decode=False,
                 deterministic=True):
        c = self.config
        drop = lambda z: nn.Dropout(c.dropout_rate)(z, deterministic=deterministic)
        attn = lambda name: Attention(num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                                      head_dim=c.head_dim, dropout_rate=c.dropout_rate,
                                      lora=c.lora, dtype=c.jnp_dtype, name=name)
        norm = lambda name: RMSNorm(epsilon=c.layer_norm_epsilon, dtype=c.jnp_dtype, name=name)
        yn = norm("pre_self_attention_layer_norm")(y)
        z = y + drop(attn("self_attention")(yn, yn, positions, positions, self_mask, relpos,
                                            decode=decode, deterministic=deterministic))
        zn = norm("pre_cross_attention_layer_norm")(z)
        z = z + drop(attn("encoder_decoder_attention")(zn, encoded, None, None, cross_mask,
                                                       deterministic=deterministic))
        mlp = GatedMlp(d_ff=c.d_ff, activations=c.mlp_activations, dropout_rate=c.dropout_rate,
                       lora=c.lora, dtype=c.jnp_dtype, name="mlp")
        z = z + drop(mlp(norm("pre_mlp_layer_norm")(z), deterministic=deterministic))
        if c.coda is not None:
            z = z + ParallelAdapter(adapter_dim=c.coda.adapter_dim,
                                    activation=c.coda.adapter_activation, dtype=c.jnp_dtype,
                                    name="adapter")(yn)
        return z


class Decoder(nn.Module):
    """T5 decoder: shared token embedding -> DecoderLayer x L -> RMSNorm -> logits."""

    config: ModelConfig
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded, encoder_valid, tokens, segment_ids=None, positions=None,
                 encoder_segment_ids=None, decode=False, deterministic=True):
        """Args: encoded [b, n, d], encoder_valid [b, n] bool, tokens [b, len] decoder input
        ids (+ packing ids); decode: one step with the cache. Returns: logits [b, len, vocab]
        float32."""
        c = self.config
        positions = _positions(tokens, positions)
        causal = positions[:, None, :] <= positions[:, :, None]                # [b, q, k]
        if segment_ids is not None:
            causal = causal & (segment_ids[:, :, None] == segment_ids[:, None, :])
        cross = attention_mask(encoder_valid, segment_ids, encoder_segment_ids)
        y = self.shared_embedding(tokens).astype(c.jnp_dtype)
        y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
        relpos = relative_position_bias(c, bidirectional=False)
        for i in range(c.num_decoder_layers):
            y = DecoderLayer(c, name=f"layers_{i}")(y, encoded, causal, cross, positions, relpos,
                                                    decode=decode, deterministic=deterministic)
        y = RMSNorm(epsilon=c.layer_norm_epsilon, dtype=c.jnp_dtype, name="decoder_norm")(y)
        y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
        if c.logits_via_embedding:              # T5 v1.0: tied head, rescaled by d_model^-0.5
            return self.shared_embedding.attend(y * (c.d_model ** -0.5)).astype(jnp.float32)
        return Dense((c.vocab_size,), ("embed", "vocab"), dtype=c.jnp_dtype,
                     name="logits_dense")(y).astype(jnp.float32)


class EncoderDecoder(nn.Module):
    """T5 with CoDA encoder layers. Batches use seqio's EncDecFeatureConverter keys."""

    config: ModelConfig
    k: int | None = None               # tokens each CoDA encoder layer routes (None: c.coda.k)

    def setup(self):
        c = self.config
        self.token_embedder = nn.Embed(
            c.vocab_size, c.d_model, dtype=c.jnp_dtype, param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                        ("vocab", "embed")))
        self.encoder = Encoder(c, self.token_embedder, k=self.k)
        self.decoder = Decoder(c, self.token_embedder)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
               enable_dropout=False):
        """The encoder output [b, n, d] of a batch's encoder_input_tokens (ids, patches or
        frames), with the packing ids when packed."""
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic=not enable_dropout)

    def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
               decoder_target_tokens=None, encoder_segment_ids=None, decoder_segment_ids=None,
               decoder_positions=None, enable_dropout=False, decode=False):
        """Decoder logits [b, len, vocab] (float32). decode=True: one step with the cache."""
        del decoder_target_tokens      # T5X passes it; the causal mask needs only positions
        return self.decoder(encoded, encoder_mask(self.config, encoder_input_tokens),
                            decoder_input_tokens,
                            decoder_segment_ids, decoder_positions, encoder_segment_ids,
                            decode=decode, deterministic=not enable_dropout)

    def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
                 encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
                 decoder_positions=None, enable_dropout=False, decode=False):
        """Teacher-forced logits [b, len, vocab] (float32) of an EncDecFeatureConverter batch.

        Args:
            encoder_input_tokens: [b, n] ids (or [b, n, dim] patches / frames).
            decoder_input_tokens: [b, len] ids (targets shifted right).
            decoder_target_tokens: accepted for T5X compatibility, unused.
            encoder_segment_ids, decoder_segment_ids, encoder_positions, decoder_positions:
                packing ids (None: unpacked).
            enable_dropout: training mode.
            decode: one autoregressive step with the cache.
        Returns:
            logits [b, len, vocab] float32.
        """
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                           decoder_positions, enable_dropout, decode)


class EncoderCtc(nn.Module):
    """The CoDA encoder with a CTC output layer: logits [b, n, vocab] over encoder tokens
    (vocab id 0 is the CTC blank); the speech models of section 6 with CTC instead of the
    paper's LSTM transducer."""

    config: ModelConfig
    k: int | None = None               # tokens each CoDA encoder layer routes (None: c.coda.k)

    def setup(self):
        c = self.config
        self.encoder = Encoder(c, k=self.k)
        self.ctc_logits = Dense((c.vocab_size,), ("embed", "vocab"), dtype=c.jnp_dtype)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
               enable_dropout=False):
        """The encoder output [b, n, d] (n after the audio subsampling)."""
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic=not enable_dropout)

    def __call__(self, encoder_input_tokens, enable_dropout=False):
        """(logits [b, n, vocab] float32, mask [b, n] of the real encoder tokens)."""
        encoded = self.encode(encoder_input_tokens, enable_dropout=enable_dropout)
        logits = self.ctc_logits(encoded).astype(jnp.float32)
        return logits, encoder_mask(self.config, encoder_input_tokens)


def build_module(config: ModelConfig, k: int | None = None) -> nn.Module:
    """The Flax module of a config: EncoderDecoder, or EncoderCtc when config.head == "ctc";
    k: the tokens each CoDA encoder layer routes (None: config.coda.k(n))."""
    cls = EncoderCtc if config.head == "ctc" else EncoderDecoder
    return cls(config, k=k)


def init_length(config: ModelConfig) -> int:
    """An encoder length n at which init builds every parameter: `CodaEncoderLayer` creates its
    router only when it routes (k < n), so e.g. r = 1.2 needs n with ceil(n / 1.2) < n."""
    coda = config.coda
    if not routes(coda):
        return 4
    if coda.num_routed is not None:
        return max(4, coda.num_routed + 1)
    n = 4
    while coda.k(n) >= n:
        n *= 2
    return n


def init_args(config: ModelConfig, batch_size: int = 1, length: int | None = None,
              decoder_length: int = 4, abstract: bool = False) -> tuple:
    """Positional inputs for `build_module(config).init`: all ones (real tokens, patch / frame
    position 1), long enough for every parameter to exist. abstract=True gives
    ShapeDtypeStructs (for jax.eval_shape)."""
    if length is None:
        length = init_length(config) * (4 if config.encoder_input == "frames" else 1)
    make = jax.ShapeDtypeStruct if abstract else jnp.ones
    enc = make(input_shape(config, batch_size, length), input_dtype(config))
    if config.head == "ctc":
        return (enc,)
    dec = make((batch_size, decoder_length), jnp.int32)
    return enc, dec, dec
