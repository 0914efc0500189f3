"""What the encoder reads: token ids, image patches or audio frames (paper section 6).

CoDA routes whatever sequence the encoder makes: text tokens (T5), image patches (the paper's
Pix2Struct models, n = 4096) or subsampled audio frames (its speech models). Each input kind
arrives as the `encoder_input_tokens` of an EncDecFeatureConverter batch:

    "tokens"   int   [b, n]            token ids, 0 = padding
    "patches"  float [b, n, 2 + p*p*C] Pix2Struct layout: row id, column id (1-based, 0 = padding),
                                       then the flattened patch pixels
                                       (coda_flax.frontends.patches)
    "frames"   float [b, T, 1 + F]     frame index (1-based, 0 = padding), then F log-mel bins
                                       (coda_flax.frontends.audio)

* PatchEmbedder -- Pix2Struct's patch embedding: a linear projection of the pixels (with a bias
  when ModelConfig.patch_projection_bias, as in the public Pix2Struct checkpoints) plus learned
  row and column embeddings (absolute 2-D positions; the encoder then uses no relative bias).
* ConvSubsampling -- two 3x3 stride-2 convolutions over (time, frequency) and a projection to
  d_model: T frames -> ceil(ceil(T / 2) / 2) encoder tokens, as in speech Transformers. Padding
  is one row on each side (not "SAME", whose split depends on T), so output i is centred on
  input 2i whatever the padded length: a batch's padding never changes an utterance's output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from coda_flax.config import ENCODER_INPUTS, ModelConfig
from coda_flax.layers import Dense

__all__ = ["ENCODER_INPUTS", "PatchEmbedder", "ConvSubsampling", "encoder_mask", "input_shape",
           "SUBSAMPLING", "SUBSAMPLING_CONVS"]

SUBSAMPLING_CONVS = 2                   # stride-2 convolutions of ConvSubsampling
SUBSAMPLING = 2 ** SUBSAMPLING_CONVS    # audio frames per encoder token: 4


def input_dim(config: ModelConfig) -> int | None:
    """Features per encoder input row (None for token ids)."""
    if config.encoder_input == "patches":
        return 2 + config.patch_size ** 2 * config.num_channels
    if config.encoder_input == "frames":
        return 1 + config.num_mel_bins
    return None


def input_shape(config: ModelConfig, batch_size: int, length: int) -> tuple[int, ...]:
    """Shape of `encoder_input_tokens` for `length` tokens / patches / frames."""
    dim = input_dim(config)
    return (batch_size, length) if dim is None else (batch_size, length, dim)


def input_dtype(config: ModelConfig):
    return jnp.int32 if config.encoder_input == "tokens" else jnp.float32


def subsampled_length(length: int, times: int = SUBSAMPLING_CONVS) -> int:
    """Frames after `times` stride-2 convolutions (3 wide, padded 1 on each side)."""
    for _ in range(times):
        length = -(-length // 2)
    return length


def encoder_length(config: ModelConfig, length: int) -> int:
    """Encoder tokens n for an input of `length` rows (what CoDA's k = ceil(n / r) sees)."""
    return subsampled_length(length) if config.encoder_input == "frames" else length


def encoder_mask(config: ModelConfig, inputs: jnp.ndarray) -> jnp.ndarray:
    """[b, n] bool: the real encoder tokens (after subsampling for audio)."""
    if config.encoder_input == "tokens":
        return inputs > 0
    valid = inputs[..., 0] > 0
    if config.encoder_input == "frames":
        for _ in range(SUBSAMPLING_CONVS):
            valid = valid[:, ::2]                  # output i of a stride-2 conv is centred on 2i
    return valid


def check_inputs(config: ModelConfig, inputs) -> None:
    want = input_dim(config)
    shape = tuple(inputs.shape)
    if want is None:
        if len(shape) != 2:
            raise ValueError(f"encoder_input_tokens must be [batch, length] token ids, got shape "
                             f"{shape}; image / audio inputs need ModelConfig.encoder_input="
                             f"'patches' / 'frames'.")
    elif len(shape) != 3 or shape[-1] != want:
        what = ("2 + patch_size**2 * num_channels" if config.encoder_input == "patches"
                else "1 + num_mel_bins")
        raise ValueError(f"encoder_input_tokens for encoder_input={config.encoder_input!r} must "
                         f"be [batch, length, {want}] ({what}), got shape {shape}.")


class PatchEmbedder(nn.Module):
    """Pix2Struct patch embedding: W x_pixels (+ b) + E_row[row] + E_col[col]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, patches):
        c = self.config
        ids = jnp.clip(patches[..., :2].astype(jnp.int32), 0, c.max_patch_positions - 1)
        x = Dense((c.d_model,), ("patch", "embed"), dtype=c.jnp_dtype,
                  use_bias=c.patch_projection_bias, name="patch_projection")(patches[..., 2:].astype(c.jnp_dtype))
        for i, name in enumerate(("row_embedder", "column_embedder")):
            x = x + nn.Embed(c.max_patch_positions, c.d_model, dtype=c.jnp_dtype,
                             param_dtype=jnp.float32, name=name,
                             embedding_init=nn.with_logical_partitioning(
                                 nn.initializers.normal(1.0), ("abspos_buckets", "embed")))(
                                     ids[..., i])
        return x


class ConvSubsampling(nn.Module):
    """Log-mel frames [b, T, 1 + F] -> [b, ceil(T / SUBSAMPLING), d_model]:
    SUBSAMPLING_CONVS x (3x3 conv, stride 2, relu)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, frames):
        c = self.config
        valid = frames[..., 0] > 0
        x = (frames[..., 1:] * valid[..., None]).astype(c.jnp_dtype)[..., None]   # [b, T, F, 1]
        for i in range(SUBSAMPLING_CONVS):
            x = nn.Conv(c.conv_channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        dtype=c.jnp_dtype, param_dtype=jnp.float32, name=f"conv_{i}",
                        kernel_init=nn.with_logical_partitioning(
                            nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ("conv_out",)))(x)
            x = jax.nn.relu(x)
            valid = valid[:, ::2]
            x = x * valid[..., None, None]          # padded frames stay zero for the next conv
        x = x.reshape(*x.shape[:2], -1)
        return Dense((c.d_model,), ("conv_features", "embed"), dtype=c.jnp_dtype,
                     name="input_projection")(x)
