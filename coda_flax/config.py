"""Model and CoDA configurations, and the presets of T5 v1.1 and the paper's Table 7.

Configs are frozen dataclasses (hashable, so Flax modules can hold them and jit can treat
them as static). `ModelConfig.coda = None` is plain dense T5; `CodaConfig(reduction=1)` is
the Parallel Adapter baseline; `reduction > 1` routes k = ceil(n / r) tokens per layer.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax.numpy as jnp

from coda_flax.layers import ACTIVATIONS, LoraConfig
from coda_flax.routing import ROUTERS, num_routed
from coda_flax.soft_topk import SoftTopkConfig, check_settings

ATTENTION_VARIANTS = ("k_to_all", "k_to_k")
ENCODER_INPUTS = ("tokens", "patches", "frames")     # coda_flax.inputs
HEADS = ("decoder", "ctc")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
LORA_TARGETS = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo", "all")


def _check_choice(owner: str, field: str, value, choices):
    if value not in choices:
        raise ValueError(f"{owner}: unknown {field} {value!r}; choose one of {tuple(choices)}.")


def _check_int(owner: str, field: str, value, minimum: int):
    """An integer >= minimum (not a bool, a float or a string: a TypeError naming the field)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {field} must be an integer >= {minimum}, got {value!r} "
                        f"({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{owner}: {field} must be >= {minimum}, got {value}.")


@dataclasses.dataclass(frozen=True)
class CodaConfig:
    """What CoDA adds to a frozen dense model (paper section 3).

    reduction: r; k = ceil(n / r) tokens per encoder layer go through the frozen layer.
      r = 1 is the Parallel Adapter baseline (no router).
    attention: "k_to_all" (routed queries attend to every token) or "k_to_k".
    router: "soft_topk" | "sigmoid" | "first_k" (Table 3).
    adapter_dim, adapter_activation: the parallel adapter of equation (2).
    epsilon .. gradient: soft top-k's settings (appendix D), defaults from SoftTopkConfig;
      `CodaConfig.soft_topk` is them as one SoftTopkConfig, which the Router takes whole.
      They are stored flat because that is how gin binds them (`CodaConfig.epsilon = 1.0`)
      and how checkpoints record the config (config.json).
    num_routed: an explicit k (e.g. the paper's CoDA pretraining, k = 192 at n = 512);
      None means ceil(n / r). A setting only: k annealing (coda_flax.kplan) anneals toward it
      and hands each stage's k to the model as an argument, never writing it here.
    lora_rank, lora_alpha, lora_targets: optional LoRA on the frozen projections.
    """

    reduction: float = 3
    attention: str = "k_to_all"
    router: str = "soft_topk"
    adapter_dim: int = 64
    epsilon: float = SoftTopkConfig.epsilon
    num_iters: int = SoftTopkConfig.num_iters
    epsilon_init: float = SoftTopkConfig.epsilon_init
    epsilon_decay: float = SoftTopkConfig.epsilon_decay
    solver: str = SoftTopkConfig.solver
    gradient: str = SoftTopkConfig.gradient
    num_routed: int | None = None
    adapter_activation: str = "relu"
    router_init_std: float = 0.02
    lora_rank: int = 0
    lora_alpha: float = 1.0
    lora_targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self):
        name = "CodaConfig"
        if not (isinstance(self.reduction, numbers.Real) and not isinstance(self.reduction, bool)
                and self.reduction >= 1):
            raise ValueError(f"{name}: reduction must be a number >= 1 (1 = Parallel Adapter), "
                             f"got {self.reduction!r}.")
        _check_choice(name, "attention", self.attention, ATTENTION_VARIANTS)
        _check_choice(name, "router", self.router, ROUTERS)
        check_settings(name, **self._soft_topk_fields())
        _check_choice(name, "adapter_activation", self.adapter_activation, ACTIVATIONS)
        _check_int(name, "adapter_dim", self.adapter_dim, 1)
        if self.num_routed is not None:
            _check_int(name, "num_routed (or None)", self.num_routed, 1)
        _check_int(name, "lora_rank", self.lora_rank, 0)
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        for t in self.lora_targets:
            _check_choice(name, "lora target", t, LORA_TARGETS)

    def _soft_topk_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SoftTopkConfig)}

    @property
    def soft_topk(self) -> SoftTopkConfig:
        """The soft top-k settings as one SoftTopkConfig (what Router and soft_topk take)."""
        return SoftTopkConfig(**self._soft_topk_fields())

    def k(self, n: int) -> int:
        """Tokens routed per layer for a sequence of n tokens (the k plan's target k)."""
        if self.num_routed is not None:
            if self.num_routed > n:
                raise ValueError(f"CodaConfig.num_routed={self.num_routed} exceeds the sequence "
                                 f"length n={n}; use num_routed <= n or set it to None.")
            return self.num_routed
        return num_routed(n, self.reduction)

    @property
    def lora(self) -> LoraConfig | None:
        if self.lora_rank == 0:
            return None
        return LoraConfig(self.lora_rank, self.lora_alpha, self.lora_targets)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A T5-style encoder-decoder (T5X minimal T5 names); `coda` turns on CoDA."""

    vocab_size: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    num_encoder_layers: int
    num_decoder_layers: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    dtype: str = "float32"
    coda: CodaConfig | None = None
    mlp_activations: tuple[str, ...] = ("gelu", "linear")   # T5 v1.1 gated-gelu; ("relu",) v1.0
    logits_via_embedding: bool = False                       # True: tied head (T5 v1.0)
    layer_norm_epsilon: float = 1e-6
    # What the encoder reads (coda_flax.inputs) and what reads the encoder.
    encoder_input: str = "tokens"          # "tokens" | "patches" (Pix2Struct) | "frames" (audio)
    encoder_relative_attention: bool = True   # T5 relative bias in the encoder (Pix2Struct: no)
    patch_size: int = 16
    num_channels: int = 3
    max_patch_positions: int = 4096        # rows / columns of the learned 2-D position tables
    patch_projection_bias: bool = False    # a bias on the patch projection (public Pix2Struct)
    num_mel_bins: int = 80
    conv_channels: int = 256               # ConvSubsampling width
    head: str = "decoder"                  # "decoder" (T5 text decoder) | "ctc" (encoder + CTC)

    def __post_init__(self):
        name = "ModelConfig"
        _check_choice(name, "encoder_input", self.encoder_input, ENCODER_INPUTS)
        _check_choice(name, "head", self.head, HEADS)
        for field in ("patch_size", "num_channels", "max_patch_positions", "num_mel_bins",
                      "conv_channels", "vocab_size", "d_model", "num_heads", "num_kv_heads",
                      "head_dim", "d_ff", "relative_attention_num_buckets",
                      "relative_attention_max_distance"):
            _check_int(name, field, getattr(self, field), 1)
        for field in ("num_encoder_layers", "num_decoder_layers"):
            _check_int(name, field, getattr(self, field), 0)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{name}: num_heads={self.num_heads} must be a multiple of "
                             f"num_kv_heads={self.num_kv_heads} (1 = multi-query, "
                             f"num_heads = multi-head).")
        _check_choice(name, "dtype", self.dtype, DTYPES)
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        for act in self.mlp_activations:
            _check_choice(name, "mlp activation", act, ACTIVATIONS)
        if not (isinstance(self.dropout_rate, numbers.Real) and 0.0 <= self.dropout_rate < 1.0):
            raise ValueError(f"{name}: dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        if self.coda is not None and not isinstance(self.coda, CodaConfig):
            raise TypeError(f"{name}: coda must be a CodaConfig or None, got "
                            f"{type(self.coda).__name__}.")

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    @property
    def lora(self) -> LoraConfig | None:
        return None if self.coda is None else self.coda.lora

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def with_coda(self, **changes: Any) -> "ModelConfig":
        """This config with CoDA fields changed (e.g. adapter_dim=8)."""
        if self.coda is None:
            raise ValueError("with_coda: this ModelConfig has no CodaConfig (coda=None).")
        return self.replace(coda=dataclasses.replace(self.coda, **changes))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A preset of PRESETS with overrides.

        Args:
            name: t5_1_1_{small,base,large,xl}, paper_text_{base,large,xl}, pix2struct,
                pix2struct_large,
                speech_{base,large,xl}.
            **overrides: ModelConfig fields. A CodaConfig passed as coda= takes the preset's
                adapter_dim / epsilon (Table 7, appendix D) unless it sets its own.
        Returns:
            the ModelConfig.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        fields = dict(PRESETS[name])
        # Table 7's adapter width (and the speech models' epsilon, appendix D) unless the
        # caller's CodaConfig set a different one.
        preset_coda = {k: fields.pop(k) for k in ("adapter_dim", "epsilon") if k in fields}
        coda = overrides.get("coda")
        if isinstance(coda, CodaConfig):
            overrides["coda"] = dataclasses.replace(coda, **{
                k: v for k, v in preset_coda.items()
                if getattr(coda, k) == getattr(CodaConfig, k)})
        fields.update(overrides)
        return cls(**fields)


_T5_1_1 = dict(vocab_size=32128, relative_attention_num_buckets=32,
               relative_attention_max_distance=128, mlp_activations=("gelu", "linear"))
_PAPER = dict(vocab_size=32128, num_kv_heads=1, head_dim=128, num_decoder_layers=6,
              adapter_dim=64, mlp_activations=("gelu", "linear"))
_SPEECH = dict(vocab_size=29, num_decoder_layers=0, adapter_dim=256, epsilon=1.0,
               mlp_activations=("swish",), encoder_input="frames", head="ctc")

PRESETS: dict[str, dict[str, Any]] = {
    # Public T5 v1.1 checkpoints (multi-head attention).
    "t5_1_1_small": dict(_T5_1_1, d_model=512, num_heads=6, num_kv_heads=6, head_dim=64,
                         d_ff=1024, num_encoder_layers=8, num_decoder_layers=8),
    "t5_1_1_base": dict(_T5_1_1, d_model=768, num_heads=12, num_kv_heads=12, head_dim=64,
                        d_ff=2048, num_encoder_layers=12, num_decoder_layers=12),
    "t5_1_1_large": dict(_T5_1_1, d_model=1024, num_heads=16, num_kv_heads=16, head_dim=64,
                         d_ff=2816, num_encoder_layers=24, num_decoder_layers=24),
    "t5_1_1_xl": dict(_T5_1_1, d_model=2048, num_heads=32, num_kv_heads=32, head_dim=64,
                      d_ff=5120, num_encoder_layers=24, num_decoder_layers=24),
    # The paper's text models (Table 7): multi-query attention, 6 decoder layers.
    "paper_text_base": dict(_PAPER, d_model=768, num_heads=12, d_ff=3072, num_encoder_layers=12),
    "paper_text_large": dict(_PAPER, d_model=1024, num_heads=16, d_ff=4096,
                             num_encoder_layers=24),
    "paper_text_xl": dict(_PAPER, d_model=2048, num_heads=32, d_ff=8192, num_encoder_layers=24),
    # Table 7's vision model: Pix2Struct-style patch encoder (no relative bias), MQA, 18 / 6
    # layers; Pix2Struct's 50244-token vocabulary.
    "pix2struct": dict(_PAPER, vocab_size=50244, d_model=1536, num_heads=24, d_ff=3968,
                       num_encoder_layers=18, adapter_dim=256, encoder_input="patches",
                       encoder_relative_attention=False),
    # The public Pix2Struct-Large (google-research/pix2struct sizes/large.gin; Hugging Face
    # google/pix2struct-large): multi-head, 18 / 18 layers, a bias on the patch projection; what
    # `coda convert` makes of it (coda_flax.checkpoints.pix2struct), Table 6's runnable backbone.
    "pix2struct_large": dict(_T5_1_1, vocab_size=50244, d_model=1536, num_heads=24,
                             num_kv_heads=24, head_dim=64, d_ff=3968, num_encoder_layers=18,
                             num_decoder_layers=18, adapter_dim=256, encoder_input="patches",
                             encoder_relative_attention=False, patch_projection_bias=True),
    # Table 7's speech encoders (swish FFN, multi-head). The paper decodes with a 2-layer LSTM
    # transducer; coda_flax puts a CTC head on the encoder (vocab = CharVocabulary's 29 ids).
    **{f"speech_{size}": dict(_SPEECH, d_model=d, num_heads=8, num_kv_heads=8, head_dim=hd,
                              d_ff=4 * d, num_encoder_layers=layers)
       for size, d, hd, layers in (("base", 768, 96, 31), ("large", 1280, 160, 32),
                                   ("xl", 1664, 208, 32))},
}


def model_config(preset: str | None = None, coda: CodaConfig | None = None,
                 **fields: Any) -> ModelConfig:
    """A ModelConfig from a preset with overrides, or from every field given explicitly.

    The one builder behind gin's `@model_config()` (coda_flax.train.gin_config) and
    `@coda_t5x.model_config()` (coda_flax.t5x), the demo's models and `coda compare`'s.

    Args:
        preset: a name in PRESETS, or None to give every ModelConfig field in `fields`.
        coda: the CodaConfig (None: the dense model).
        **fields: ModelConfig fields (overrides of the preset's).
    Returns:
        ModelConfig.from_preset(preset, coda=coda, **fields), or ModelConfig(coda=coda, **fields).

    Example: model_config(preset="paper_text_base", coda=CodaConfig(reduction=3),
    dropout_rate=0.1).
    """
    if preset is not None:
        return ModelConfig.from_preset(preset, coda=coda, **fields)
    return ModelConfig(coda=coda, **fields)


def tiny_config(coda: CodaConfig | None = None, **overrides: Any) -> ModelConfig:
    """A few-thousand-parameter model for tests and examples.

    Args:
        coda: the CodaConfig (None: dense).
        **overrides: ModelConfig fields replacing the tiny sizes (vocab 64, d_model 16, 4 query
            / 2 key-value heads, 2 + 2 layers).
    """
    fields = dict(vocab_size=64, d_model=16, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=32,
                  num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16, coda=coda)
    fields.update(overrides)
    return ModelConfig(**fields)
