"""Models and inputs made up for a look without a checkpoint or data: the tiny presets of
`coda visualize --random-init` (tiny, tiny_vision, tiny_speech), freshly initialised encoder
parameters, random weights at a sane scale (numpy, for any size: the benchmark), random encoder
inputs in the layout of coda_flax.inputs (tokens, a full patch grid, audio frames), and a
synthetic document page and utterance.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from coda_flax.config import CodaConfig, ModelConfig

TINY_PRESET = "tiny"
TINY_VISION = "tiny_vision"     # tiny_config reading 4x4 RGB patches (a text decoder)
TINY_SPEECH = "tiny_speech"     # tiny_config reading 80 log-mel bins (a CTC head)
TINY_PRESETS = (TINY_PRESET, TINY_VISION, TINY_SPEECH)
DEFAULT_RANDOM_SECONDS = 3.0    # the synthetic utterance's length


# ------------------------------------------------------------------------------ models

def tiny_model_config(name: str = TINY_PRESET, coda: CodaConfig | None = None,
                      **overrides) -> ModelConfig:
    """The `--preset tiny*` models: tiny_config reading tokens, 4x4 RGB patches (tiny_vision,
    a text decoder) or 80 log-mel bins (tiny_speech: 4-channel conv subsampling, CTC head)."""
    from coda_flax.config import tiny_config

    extra = {TINY_PRESET: {},
             TINY_VISION: dict(encoder_input="patches", patch_size=4, num_channels=3,
                               max_patch_positions=128, encoder_relative_attention=False),
             TINY_SPEECH: dict(encoder_input="frames", num_mel_bins=80, conv_channels=4,
                               head="ctc", num_decoder_layers=0, vocab_size=29,
                               mlp_activations=("swish",))}[name]
    extra.update(overrides)
    if coda is not None and name == TINY_SPEECH and coda.epsilon == CodaConfig.epsilon:
        coda = dataclasses.replace(coda, epsilon=1.0)             # appendix D: speech models
    return tiny_config(coda, **extra)

def random_init_config(preset: str, *, reduction: float = 3, attention: str = "k_to_all",
                       router: str = "soft_topk", adapter_dim: int | None = None,
                       num_layers: int | None = None) -> ModelConfig:
    """A CoDA model to initialise at random (`coda visualize --random-init`): a preset of
    coda_flax.config.PRESETS or a tiny one, with num_layers encoder layers (default: all).
    adapter_dim defaults to the preset's (tiny presets: 4)."""
    fields = dict(reduction=reduction, attention=attention, router=router)
    if adapter_dim is not None:
        fields["adapter_dim"] = adapter_dim
    depth = {} if num_layers is None else {"num_encoder_layers": num_layers}
    if preset in TINY_PRESETS:
        fields.setdefault("adapter_dim", 4)
        return tiny_model_config(preset, CodaConfig(**fields), **depth)
    return ModelConfig.from_preset(preset, coda=CodaConfig(**fields), **depth)


def random_init_params(config: ModelConfig, seed: int = 0):
    """Freshly initialised embedding + encoder parameters (the decoder is not needed).

    Uses an "rbg" PRNG key: flax's init with the default threefry key takes seconds to compile
    on CPU, rbg a fraction of that."""
    import jax

    return _init_fn(config)(jax.random.key(seed, impl="rbg"))["params"]

@functools.lru_cache(maxsize=4)
def _init_fn(config: ModelConfig):
    import jax
    import jax.numpy as jnp

    from coda_flax.inputs import input_dtype, input_shape
    from coda_flax.model import build_module, init_length

    # Long enough that every layer builds its router (k < n); audio: 4 frames per token.
    length = max(8, init_length(config)) * (4 if config.encoder_input == "frames" else 1)
    dummy = jnp.ones(input_shape(config, 1, length), input_dtype(config))
    return jax.jit(lambda rng: build_module(config).init(rng, dummy, method="encode"))


def fill_random(shapes, rng: np.random.Generator, device=None):
    """Random arrays for a tree of ShapeDtypeStructs (see `random_params` for the scales)."""
    import jax

    from coda_flax.checkpoints.peft import path_names

    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    leaves = []
    for path, leaf in flat:
        names = list(path_names(path))
        name, parent = names[-1], names[-2] if len(names) > 1 else ""
        shape = tuple(leaf.shape)
        if name == "scale":
            value = np.ones(shape, np.float32)
        elif name in ("lora_b", "bias"):                          # conv biases: zero
            value = np.zeros(shape, np.float32)
        else:
            if name in ("embedding", "rel_embedding") or len(shape) < 1:
                fan_in = 1
            elif parent == "out" and len(shape) == 3:              # [heads, head_dim, d]
                fan_in = shape[0] * shape[1]
            elif len(shape) == 4:                                  # conv [h, w, in, out]
                fan_in = shape[0] * shape[1] * shape[2]
            else:                                                  # [d_in, ...]; router [d]
                fan_in = shape[0]
            value = rng.standard_normal(shape, dtype=np.float32)
            value *= np.float32(1.0 / math.sqrt(fan_in))
        leaves.append(jax.device_put(value.astype(leaf.dtype), device))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def random_params(config: ModelConfig, seed: int = 0, device=None) -> dict:
    """Random `params` of EncoderDecoder(config) with routers, cheaply (numpy, no jax RNG).

    The tree is the CoDA tree (a router in every encoder layer, whatever config.coda says), so
    one set of weights serves the Parallel Adapter (which ignores the routers) and every r.
    Kernels ~ N(0, 1 / fan_in) (fan_in: the contracted input dims), norms' scales 1,
    embeddings and the relative position table ~ N(0, 1): activations stay O(1) and finite.
    """
    from coda_flax.analysis.summary import abstract_params

    coda = config.coda if config.coda is not None else CodaConfig()
    with_router = config.replace(coda=dataclasses.replace(coda, reduction=2, num_routed=None,
                                                          router="soft_topk"))
    return fill_random(abstract_params(with_router), np.random.default_rng(seed), device)


# ------------------------------------------------------------------------------ inputs

def patch_grid_shape(num_patches: int) -> tuple[int, int]:
    """(rows, cols) of the benchmark's full patch grid: rows = the largest divisor of
    num_patches that is <= sqrt(num_patches) (1024 -> 32 x 32, 2048 -> 32 x 64)."""
    if isinstance(num_patches, bool) or not isinstance(num_patches, (int, np.integer)) \
            or num_patches < 1:
        raise ValueError(f"number of patches must be an integer >= 1, got {num_patches!r}.")
    rows = max(d for d in range(1, math.isqrt(num_patches) + 1) if num_patches % d == 0)
    return rows, num_patches // rows


def random_inputs(config: ModelConfig, batch_size: int, length: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Random `encoder_input_tokens` of `length` tokens / patches / frames, every row real.

    tokens: ids in [2, vocab_size); patches: float32 [b, length, 2 + p*p*C], the full
    `patch_grid_shape(length)` grid of 1-based (row, column) ids in row-major order, then N(0, 1)
    pixels (patchify's standardised values); frames: float32 [b, length, 1 + mel], frame index
    1..length, then N(0, 1) log-mel values.
    """
    from coda_flax.inputs import input_shape

    shape = input_shape(config, batch_size, length)
    if config.encoder_input == "tokens":
        return rng.integers(2, config.vocab_size, shape, dtype=np.int32)
    x = rng.standard_normal(shape, dtype=np.float32)
    if config.encoder_input == "patches":
        rows, cols = patch_grid_shape(length)
        x[..., 0] = np.repeat(np.arange(1, rows + 1, dtype=np.float32), cols)
        x[..., 1] = np.tile(np.arange(1, cols + 1, dtype=np.float32), rows)
    else:
        x[..., 0] = np.arange(1, length + 1, dtype=np.float32)
    return x


def synthetic_page(height: int = 192, width: int = 144, seed: int = 0):
    """A document-like test image: float32 [H, W, 3] in [0, 1], white paper with black word
    blocks in lines (paragraphs, short last lines, a blank band): the white background CoDA's
    router can skip (paper section 6)."""
    rng = np.random.default_rng(seed)
    page = np.ones((height, width, 3), np.float32)
    margin, line_h, x_h = max(4, width // 12), max(6, height // 16), max(2, height // 40)
    y = margin
    line = 0
    while y + x_h < height - margin:
        if line % 5 == 4 or (height * 0.45 < y < height * 0.58):
            y += line_h                                  # paragraph break / blank band
            line += 1
            continue
        end = width - margin - (rng.integers(width // 4, width // 2) if line % 5 == 3 else 0)
        x = margin
        while True:
            w = int(rng.integers(max(2, width // 40), max(3, width // 8)))
            if x + w > end:
                break
            page[y:y + x_h, x:x + w] = 0.05
            x += w + max(2, width // 50)
        y += line_h
        line += 1
    return page


def synthetic_utterance(seconds: float = DEFAULT_RANDOM_SECONDS, sample_rate: int = 16000,
                        seed: int = 0):
    """A speech-like test waveform: voiced bursts (harmonic tones with a falling pitch and a
    smooth envelope) separated by pauses with faint noise. float32 [samples] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    x = 0.003 * rng.standard_normal(n).astype(np.float32)
    t = 0.15
    while t < seconds - 0.2:
        dur = float(rng.uniform(0.15, 0.45))
        a, b = int(t * sample_rate), min(n, int((t + dur) * sample_rate))
        tt = np.arange(b - a) / sample_rate
        f0 = float(rng.uniform(110, 220)) * (1 - 0.2 * tt / dur)
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        burst = sum(np.sin(h * phase) / h for h in range(1, 8))
        x[a:b] += (0.25 * np.sin(np.pi * tt / dur) ** 2 * burst).astype(np.float32)
        t += dur + float(rng.uniform(0.08, 0.35))
    return np.clip(x, -1, 1).astype(np.float32)
