"""Inference speed of CoDA against the Parallel Adapter, next to the FLOP bound (paper Figure 4).

Two benchmarks, both on random parameters (the speed of a forward pass does not depend on the
values), on whatever device jax has (CPU here, the GPU where there is one):

* `run_sweep` -- the Parallel Adapter (`CodaConfig(reduction=1)`) against CoDA on the same
  inputs and the same weights, over presets x input lengths x reductions r x attention
  (k-to-all / k-to-k), in two modes:

    encode    the jit'd encoder forward (`EncoderDecoder` / `EncoderCtc` `.encode`);
    generate  text models and image models (a text decoder): encode + greedy decoding of
              exactly `decode_length` tokens with the cache (`CodaT5Model.predict_batch_with_aux`
              with an EOS id that never occurs, so both models decode the same number of
              steps); speech models (`head="ctc"`): encode + CTC logits + per-frame argmax (the
              greedy CTC path; merging repeats and dropping blanks is O(n) and left out).

  Inputs are random, in the layout of `coda_flax.inputs.input_shape`: token ids (text presets);
  image patches for `encoder_input="patches"` (pix2struct): a full rows x cols grid of valid
  1-based (row, column) ids in row-major order (rows = the largest divisor of the length
  <= sqrt(length)) with N(0, 1) pixels (patchify standardises every image); audio frames for
  `encoder_input="frames"` (speech_*): 1-based frame indices with N(0, 1) log-mel values. A
  length is tokens, patches or *audio frames* (10 ms hop); `audio_seconds` instead gives
  durations, converted with the speech front end's framing (25 ms windows every 10 ms, no end
  padding: 1 + (16000 s - 400) // 160 frames). The encoder length n that CoDA routes over is
  `inputs.encoder_length(config, length)`: the length itself, or ceil(ceil(T / 2) / 2) after the
  4x convolutional subsampling of audio; k = ceil(n / r).

  Each row reports the time per call of both models (median over rounds), the speedup
  (PA time / CoDA time), the FLOP-bound speedup `summary.flop_speedup(config, n, r, attention)`
  at the encoder length n (the speedup a purely compute-bound implementation would reach:
  encoder layers only, so for `generate` rows the decoder's fixed cost keeps the measured
  speedup below it by design), the ratio measured / FLOP bound, and for image and audio models
  `flop_speedup_with_input`: the same bound with the input front end that both models share
  (patch projection; for audio the two subsampling convolutions and their projection, which at
  conv_channels 256 cost about two speech_base layers) added to both sides, at the benchmarked
  depth. `paper_speedup` is the paper's measured speedup where it gives one (`PAPER_SPEEDUPS`:
  Table 6, pix2struct at n = 4096, k-to-all, end to end, so `generate` rows only).

* `run_soft_topk` -- the router in isolation: forward and gradient time of soft top-k
  (coordinate descent, T iterations) with the implicit and the unrolled gradient, the compiled
  temporary memory of each gradient (`compiled.memory_analysis().temp_size_in_bytes`; every
  array is an argument, since XLA would fold closed-over constants and count them), and the
  router's time (score s = Xn w, soft top-k, top-k selection) as a share of one CoDA layer's
  forward time.

Depth. Every encoder layer costs the same FLOPs, so the FLOP-bound speedup of one layer is the
encoder's, whatever its depth: `num_layers` overrides the preset's encoder depth (and, unless
`num_decoder_layers` is given, scales the decoder depth in the preset's proportion, so that
`generate` keeps the preset's encoder / decoder balance; pix2struct's 18 / 6 is kept exactly at
3, 6, 9 ... encoder layers; encoder-only CTC presets keep 0 decoder layers) to keep CPU runs
short. Rows carry the preset's own depth (`preset_num_encoder_layers`) beside the timed one, and
`format_notes` says when a run was shallower. Two caveats in the measured time: the Parallel
Adapter's relative position bias [b, h, n, n] is the same in every layer and XLA computes it
once per forward (common subexpression), while CoDA's routed positions differ per layer; the
PA's bias is memory-bound work outside the FLOP count, so a deeper PA amortises it over more
layers (pix2struct has no encoder relative bias). And the input front end of image / audio
models is a fixed cost of both models that weighs more in a shallow stack
(`flop_speedup_with_input`).

Measurement. On a shared machine timings are noisy, so: every function is compiled and run
`warmup` times first; each timed sample runs a function enough times to last at least
`min_sample_seconds`; the `repeats` rounds interleave all the models of one (preset, mode, n)
group, in an order rotated each round, so the Parallel Adapter and CoDA see the same background
load; each sample follows `settle` untimed calls of the same model (on CPU, a small model timed
right after a large one runs up to ~1.5x slower: the large one's freed buffers go back to the
OS and are faulted in again; a model serving requests back to back does not pay that); the
statistic (median by default, or min) is taken per model over the rounds and the speedup is
the ratio of the two statistics. All samples are kept in the JSON. The row with r = 1 times
the Parallel Adapter against a second copy of itself: its "speedup" is the noise floor of the
run. `timer="process"` measures this process's CPU time (all threads) instead of elapsed time,
which leaves out the time other processes hold the cores.

JSON schema (`SCHEMA_VERSION` 2; version 1 rows lack the keys marked [v2], readers here treat
them as text rows), written by `write_json`:

    {"schema_version": 2, "kind": "coda_bench",
     "created": ISO-8601 time, "jax_version": str, "jaxlib_version": str, "flax_version": str,
     "device": {"platform": "cpu" | "gpu" | "tpu", "device_kind": str, "num_devices": int,
                "cpu_count": int, "load_average_start": [3 floats] | null,
                "load_average_end": [3 floats] | null},
     "settings": null (soft top-k only) | {the sweep's settings: presets (names, or a
                  ModelConfig as a dict), lengths, audio_seconds [v2] (null or seconds),
                  reductions, attentions, modes, batch_size, decode_length, num_layers,
                  num_decoder_layers, dtype, repeats, warmup, min_sample_seconds, statistic,
                  timer, settle, seed, router, solver, adapter_dim},
     "rows": [ROW, ...],                 # the sweep; [] when only soft top-k ran
     "soft_topk": null | {"settings": {...}, "gradients": [GRAD_ROW, ...],
                          "router_share": [SHARE_ROW, ...]}}

    ROW = {"preset" (name; "custom" for a ModelConfig), "mode": "encode" | "generate",
           "input" [v2]: "tokens" | "patches" | "frames" (ModelConfig.encoder_input),
           "head" [v2]: "decoder" | "ctc",
           "input_length" [v2] (tokens / patches / audio frames fed to the model),
           "audio_seconds" [v2] (frames: the duration those frames cover; else null),
           "n" (encoder length: what CoDA routes over; = input_length but for audio),
           "r", "k", "attention",
           "num_heads", "num_kv_heads", "batch_size",
           "decode_length" (null for encode and for CTC models),
           "num_encoder_layers", "num_decoder_layers" (as timed),
           "preset_num_encoder_layers", "preset_num_decoder_layers" [v2] (the preset's own),
           "dtype", "statistic", "timer",
           "pa_seconds", "coda_seconds" (the statistic, seconds per call),
           "measured_speedup" (pa_seconds / coda_seconds),
           "paired_speedup" (median over rounds of the PA / CoDA time ratio within a round:
                             robust to background load that changes during the run),
           "flop_speedup" (summary.flop_speedup at n),
           "measured_over_flop" (measured_speedup / flop_speedup),
           "input_flops" [v2] (front-end FLOPs per sequence: 0 for tokens),
           "flop_speedup_with_input" [v2] ((PA encoder + front end) / (CoDA encoder + front
                                            end) FLOPs at the timed depth),
           "paper_speedup" [v2] (the paper's measured speedup for this setting, or null),
           "pa_samples", "coda_samples" (seconds per call, one per round),
           "pa_compile_seconds", "coda_compile_seconds" (first call, compile included)}
    GRAD_ROW = {"n", "k", "batch_size", "num_iters", "forward_seconds",
                "implicit_grad_seconds", "unrolled_grad_seconds",
                "soft_topk_implicit_temp_bytes", "soft_topk_unrolled_temp_bytes",
                "router_implicit_temp_bytes", "router_unrolled_temp_bytes",
                "soft_topk_memory_ratio", "router_memory_ratio"}      # implicit / unrolled
    SHARE_ROW = {"preset", "n", "r", "k", "attention", "batch_size", "num_iters",
                 "layer_seconds", "router_seconds", "soft_topk_seconds",
                 "router_share", "soft_topk_share"}                   # router / layer time

`format_table` / `format_soft_topk_table` print them (`format_notes`: depth and front-end notes
under the table); `plot_speedups` draws measured (solid) and FLOP-bound (dashed) speedup
against r, one colour per n, the paper's speedups as stars, one panel per (preset, mode,
attention). The CLI part (`add_bench_parser`, `bench_main`) is at the end of this module;
the library functions never read argv.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from coda_flax import argtypes
from coda_flax.config import ATTENTION_VARIANTS, DTYPES, PRESETS, CodaConfig, ModelConfig
from coda_flax.frontends.audio import SAMPLE_RATE
from coda_flax.routing import ROUTERS, num_routed
from coda_flax.soft_topk import SOLVERS

__all__ = ["SCHEMA_VERSION", "MODES", "STATISTICS", "DEFAULT_REDUCTIONS", "DEFAULT_LENGTHS",
           "PAPER_SPEEDUPS", "SweepSettings", "SoftTopkSettings", "bench_config",
           "random_params", "random_inputs", "patch_grid_shape", "audio_frames",
           "frames_seconds", "input_flops", "paper_speedup", "run_sweep", "run_soft_topk",
           "format_table", "format_notes", "format_soft_topk_table", "write_json",
           "plot_speedups", "add_bench_parser", "configure_parser", "bench_main"]

SCHEMA_VERSION = 2
MODES = ("encode", "generate")
STATISTICS = ("median", "min")
TIMERS = ("wall", "process")     # time.perf_counter | time.process_time (CPU time, all threads)
DEFAULT_REDUCTIONS = (1, 2, 3, 4, 5, 8, 16, 32)
DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096)
# The speech front end's framing (coda_flax.frontends.audio: 16 kHz, 25 ms windows every 10 ms,
# no end pad).
FRAME_LENGTH = 400                 # samples (25 ms)
FRAME_STEP = 160                   # samples (10 ms)
# The paper's measured inference speedups over the Parallel Adapter (end to end), by preset:
# Table 6, OCR-VQA column (Pix2Struct, n = 4096 patches, CoDA k-to-all; DocVQA and Screen2Words
# give 12.1-12.5x at r = 16 and 16.7-17.8x at r = 32). Checked: coda_flax/configs/table6.py.
PAPER_SPEEDUPS: dict[str, dict[str, Any]] = {
    "pix2struct": {"n": 4096, "attention": "k_to_all", "mode": "generate",
                   "source": "Table 6 (OCR-VQA)",
                   "speedups": {4: 4.6, 8: 8.0, 16: 13.5, 32: 19.4}},
}

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Settings.


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _check_reduction(r) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not r >= 1 or math.isinf(r):
        raise ValueError(f"reduction r must be a finite number >= 1 (1 = Parallel Adapter), "
                         f"got {r!r}.")


def _check_nonempty(name: str, values) -> None:
    if len(values) == 0:
        raise ValueError(f"{name}: need at least one value.")


def _check_preset(preset) -> None:
    if isinstance(preset, ModelConfig):
        return
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} "
                         f"(or pass a ModelConfig).")


def preset_name(preset: str | ModelConfig) -> str:
    """The name a preset goes by in rows: its name, or "custom" for a ModelConfig."""
    return preset if isinstance(preset, str) else "custom"


def _base_config(preset: str | ModelConfig) -> ModelConfig:
    return ModelConfig.from_preset(preset) if isinstance(preset, str) else preset


def audio_frames(seconds: float) -> int:
    """Log-mel frames of `seconds` of 16 kHz audio (25 ms windows every 10 ms, no end padding,
    as coda_flax.frontends.audio.frame_features): 1 + (round(16000 s) - 400) // 160;
    10 s -> 998."""
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds) or seconds * SAMPLE_RATE < FRAME_LENGTH):
        raise ValueError(f"audio duration must be a number of seconds >= "
                         f"{FRAME_LENGTH / SAMPLE_RATE} (one 25 ms frame), got {seconds!r}.")
    return 1 + (int(round(seconds * SAMPLE_RATE)) - FRAME_LENGTH) // FRAME_STEP


def frames_seconds(frames: int) -> float:
    """The shortest duration that gives `frames` frames: ((T - 1) * 160 + 400) / 16000 s."""
    return ((frames - 1) * FRAME_STEP + FRAME_LENGTH) / SAMPLE_RATE


def patch_grid_shape(num_patches: int) -> tuple[int, int]:
    """(rows, cols) of the benchmark's full patch grid: rows = the largest divisor of
    num_patches that is <= sqrt(num_patches) (1024 -> 32 x 32, 2048 -> 32 x 64)."""
    _check_positive_int("number of patches", num_patches)
    rows = max(d for d in range(1, math.isqrt(num_patches) + 1) if num_patches % d == 0)
    return rows, num_patches // rows


def paper_speedup(preset: str | ModelConfig, mode: str, n: int, r: float,
                  attention: str) -> float | None:
    """The paper's measured speedup for this setting (PAPER_SPEEDUPS), else None."""
    if not isinstance(preset, str) or preset not in PAPER_SPEEDUPS:
        return None
    paper = PAPER_SPEEDUPS[preset]
    if (mode, n, attention) != (paper["mode"], paper["n"], paper["attention"]):
        return None
    return paper["speedups"].get(r)


def _settings_dict(settings) -> dict[str, Any]:
    out = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.name == "presets":
            value = [p if isinstance(p, str) else dataclasses.asdict(p) for p in value]
        elif isinstance(value, ModelConfig):
            value = dataclasses.asdict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """What `run_sweep` measures (defaults: the full sweep of `coda bench`)."""

    presets: tuple[str | ModelConfig, ...] = ("paper_text_base",)   # names or ModelConfigs
    lengths: tuple[int, ...] = DEFAULT_LENGTHS     # tokens / patches / audio frames
    reductions: tuple[float, ...] = DEFAULT_REDUCTIONS
    attentions: tuple[str, ...] = ("k_to_all", "k_to_k")
    modes: tuple[str, ...] = MODES
    audio_seconds: tuple[float, ...] | None = None  # speech presets: durations instead of lengths
    batch_size: int = 1
    decode_length: int = 32
    num_layers: int | None = None            # encoder depth override (speedup per layer)
    num_decoder_layers: int | None = None    # None: the preset's proportion of num_layers
    dtype: str = "float32"
    repeats: int = 5
    warmup: int = 1
    min_sample_seconds: float = 0.05
    statistic: str = "median"
    timer: str = "wall"
    settle: int = 1                          # untimed calls before each timed sample
    seed: int = 0
    router: str = "soft_topk"
    solver: str = "coordinate_descent"
    adapter_dim: int | None = None           # None: the preset's (Table 7), else 64

    def __post_init__(self):
        for field in ("presets", "lengths", "reductions", "attentions", "modes"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
            _check_nonempty(field, getattr(self, field))
        for p in self.presets:
            _check_preset(p)
        for n in self.lengths:
            _check_positive_int("sequence length n", n)
        if self.audio_seconds is not None:
            object.__setattr__(self, "audio_seconds", tuple(self.audio_seconds))
            _check_nonempty("audio_seconds", self.audio_seconds)
            for sec in self.audio_seconds:
                audio_frames(sec)                  # raises on a bad duration
            if not any(_base_config(p).encoder_input == "frames" for p in self.presets):
                raise ValueError("audio_seconds applies to speech presets (encoder_input "
                                 "'frames', e.g. speech_base); the presets here read "
                                 + ", ".join(sorted({_base_config(p).encoder_input
                                                     for p in self.presets})) + ".")
        for r in self.reductions:
            _check_reduction(r)
        for a in self.attentions:
            if a not in ATTENTION_VARIANTS:
                raise ValueError(f"unknown attention {a!r}; choose one of {ATTENTION_VARIANTS}.")
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}; choose one of {MODES}.")
        for field in ("batch_size", "decode_length", "repeats"):
            _check_positive_int(field, getattr(self, field))
        for field in ("num_layers", "num_decoder_layers", "adapter_dim"):
            if getattr(self, field) is not None:
                _check_positive_int(field, getattr(self, field))
        if not self.min_sample_seconds >= 0:
            raise ValueError(f"min_sample_seconds must be >= 0, got {self.min_sample_seconds}.")
        _check_timing(self)
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose one of {ROUTERS}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}.")


def _check_timing(settings) -> None:
    """The fields both settings share: warmup, dtype, statistic, timer, settle."""
    for field in ("warmup", "settle"):
        value = getattr(settings, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{field} must be an integer >= 0, got {value!r}.")
    for field, choices in (("dtype", sorted(DTYPES)), ("statistic", STATISTICS),
                           ("timer", TIMERS)):
        if getattr(settings, field) not in choices:
            raise ValueError(f"unknown {field} {getattr(settings, field)!r}; choose one of "
                             f"{choices}.")


@dataclasses.dataclass(frozen=True)
class SoftTopkSettings:
    """What `run_soft_topk` measures (defaults: the issue's n = 512 and 4096, T = 20)."""

    lengths: tuple[int, ...] = (512, 4096)
    reductions: tuple[float, ...] = (3, 8)   # k = ceil(n / r) for the layers of the share rows
    gradient_reduction: float = 3            # k = ceil(n / r) of the gradient rows
    num_iters: int = 20
    preset: str | ModelConfig = "paper_text_base"   # the layer's dims: a name or a ModelConfig
    attention: str = "k_to_all"
    batch_size: int = 1
    dtype: str = "float32"
    repeats: int = 7
    warmup: int = 1
    min_sample_seconds: float = 0.05
    statistic: str = "median"
    timer: str = "wall"
    settle: int = 1                          # untimed calls before each timed sample
    seed: int = 0

    def __post_init__(self):
        for field in ("lengths", "reductions"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
            _check_nonempty(field, getattr(self, field))
        for n in self.lengths:
            _check_positive_int("sequence length n", n)
        for r in (*self.reductions, self.gradient_reduction):
            _check_reduction(r)
        for field in ("num_iters", "batch_size", "repeats"):
            _check_positive_int(field, getattr(self, field))
        _check_preset(self.preset)
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(f"unknown attention {self.attention!r}; choose one of "
                             f"{ATTENTION_VARIANTS}.")
        _check_timing(self)


# ---------------------------------------------------------------------------------------------
# Models and random parameters.


def bench_config(preset: str | ModelConfig, reduction: float = 1, attention: str = "k_to_all",
                 *, num_layers: int | None = None, num_decoder_layers: int | None = None,
                 dtype: str = "float32", router: str = "soft_topk",
                 solver: str = "coordinate_descent",
                 adapter_dim: int | None = None) -> ModelConfig:
    """The ModelConfig of one benchmarked model: a preset (or a ModelConfig) with CoDA at r.

    reduction = 1 is the Parallel Adapter. num_layers overrides the encoder depth; the decoder
    depth is then num_decoder_layers, or the preset's decoder / encoder proportion of num_layers
    (at least 1; 0 for encoder-only CTC presets), so the encode / decode balance of `generate`
    stays the preset's. The preset's input (tokens / patches / frames) and head are kept.
    """
    base = _base_config(preset)
    fields: dict[str, Any] = {"dtype": dtype}
    if num_layers is not None:
        fields["num_encoder_layers"] = num_layers
        if base.head == "ctc" or base.num_decoder_layers == 0:
            num_decoder_layers = 0 if num_decoder_layers is None else num_decoder_layers
        elif num_decoder_layers is None:
            num_decoder_layers = max(1, round(num_layers * base.num_decoder_layers
                                              / max(base.num_encoder_layers, 1)))
    if num_decoder_layers is not None:
        fields["num_decoder_layers"] = num_decoder_layers
    coda_fields = dict(reduction=reduction, attention=attention, router=router, solver=solver)
    if adapter_dim is not None:
        coda_fields["adapter_dim"] = adapter_dim
    coda = CodaConfig(**coda_fields)
    if isinstance(preset, str):
        return ModelConfig.from_preset(preset, coda=coda, **fields)
    if adapter_dim is None and base.coda is not None:
        coda = dataclasses.replace(coda, adapter_dim=base.coda.adapter_dim)
    return base.replace(coda=coda, **fields)


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _fill_random(shapes, rng: np.random.Generator, device=None):
    """Random arrays for a tree of ShapeDtypeStructs (see `random_params` for the scales)."""
    import jax

    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    leaves = []
    for path, leaf in flat:
        names = [_key_name(p) for p in path]
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
    from coda_flax.summary import abstract_params

    coda = config.coda if config.coda is not None else CodaConfig()
    with_router = config.replace(coda=dataclasses.replace(coda, reduction=2, num_routed=None,
                                                          router="soft_topk"))
    return _fill_random(abstract_params(with_router), np.random.default_rng(seed), device)


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


def input_flops(config: ModelConfig, length: int) -> int:
    """FLOPs of the input front end for one sequence of `length` rows (multiply-add = 2), the
    same for the Parallel Adapter and CoDA and not counted by summary.encoder_flops:

      tokens   0 (an embedding lookup)
      patches  2 n (p*p*C) d                      the patch projection (position tables: lookups)
      frames   2 * 9 * C * T1 * F1                conv_0, 3x3, 1 -> C channels, stride 2
               + 2 * 9 * C * C * T2 * F2          conv_1, 3x3, C -> C, stride 2
               + 2 * T2 * (F2 * C) * d            the projection to d_model
               with T1 = ceil(T / 2), T2 = ceil(T1 / 2), F1 = ceil(mel / 2), F2 = ceil(F1 / 2).
    """
    c = config
    if c.encoder_input == "patches":
        return 2 * length * c.patch_size ** 2 * c.num_channels * c.d_model
    if c.encoder_input == "frames":
        t1, f1 = -(-length // 2), -(-c.num_mel_bins // 2)
        t2, f2 = -(-t1 // 2), -(-f1 // 2)
        ch = c.conv_channels
        return (2 * 9 * ch * t1 * f1 + 2 * 9 * ch * ch * t2 * f2 + 2 * t2 * f2 * ch * c.d_model)
    return 0


def _flop_speedup_with_input(config: ModelConfig, length: int, n: int, r: float,
                             attention: str) -> float:
    """(PA encoder + front end) / (CoDA encoder + front end) FLOPs at config's depth."""
    from coda_flax.summary import encoder_flops

    front = input_flops(config, length)
    pa = encoder_flops(config, n, "parallel_adapter")["encoder"]
    coda = encoder_flops(config, n, attention, reduction=r)["encoder"]
    return (pa + front) / (coda + front)


def _strip_routers(params: dict) -> dict:
    """params without the encoder routers (the Parallel Adapter's tree)."""
    def strip(tree):
        if isinstance(tree, dict):
            return {k: strip(v) for k, v in tree.items() if k != "router"}
        return tree
    return strip(params)


def _device(backend: str | None = None):
    import jax
    return jax.devices(backend)[0] if backend else jax.devices()[0]


def _device_info(device) -> dict[str, Any]:
    import jax
    return {"platform": device.platform, "device_kind": getattr(device, "device_kind", ""),
            "num_devices": len(jax.devices(device.platform)), "cpu_count": os.cpu_count(),
            "load_average_start": _load_average(), "load_average_end": None}


def _load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _header(device) -> dict[str, Any]:
    import flax
    import jax
    import jaxlib
    return {"schema_version": SCHEMA_VERSION, "kind": "coda_bench",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__,
            "flax_version": flax.__version__, "device": _device_info(device)}


# ---------------------------------------------------------------------------------------------
# Timing.


def _block(x):
    import jax
    return jax.block_until_ready(x)


_CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def _call_seconds(fn: Callable[[], Any], inner: int, timer: str = "wall") -> float:
    """Seconds per call of fn, averaged over `inner` calls (each one waited for).

    timer "wall": elapsed time; "process": CPU time of this process (all threads), which
    leaves out the time other processes hold the cores (use it on a shared machine).
    """
    clock = _CLOCKS[timer]
    t0 = clock()
    for _ in range(inner):
        _block(fn())
    return (clock() - t0) / inner


def _paired(pa: Sequence[float], coda: Sequence[float]) -> float:
    """Median over rounds of PA / CoDA time within a round (robust to load that drifts)."""
    return float(statistics.median(p / c for p, c in zip(pa, coda)))


def _statistic(samples: Sequence[float], statistic: str) -> float:
    return float(min(samples)) if statistic == "min" else float(statistics.median(samples))


def measure_interleaved(fns: dict[Any, Callable[[], Any]], *, repeats: int, warmup: int,
                        min_sample_seconds: float, timer: str = "wall", settle: int = 1,
                        log: Log | None = None) -> tuple[dict[Any, list[float]], dict[Any, float]]:
    """Times every zero-argument function in `fns`, interleaved.

    Each function is first called once (compilation included: its time is returned as the
    compile time) and `warmup` more times; a calibration call then fixes how many calls make
    one sample (>= min_sample_seconds). Then `repeats` rounds call every function for one sample
    each, the order rotated by one every round. Each sample is preceded by `settle` untimed
    calls of the same function: a model that runs right after another one otherwise pays for
    the other's memory state (freed buffers handed back to the OS and faulted in again, cold
    caches), which a model serving requests one after another does not; the samples measure
    that steady state. Returns ({key: [seconds per call, one per round]}, {key: first-call
    seconds}).
    """
    keys = list(fns)
    compile_seconds, inner = {}, {}
    for key in keys:
        compile_seconds[key] = _call_seconds(fns[key], 1)
        for _ in range(warmup):
            _call_seconds(fns[key], 1)
        once = _call_seconds(fns[key], 1, timer)
        inner[key] = max(1, math.ceil(min_sample_seconds / max(once, 1e-9)))
    samples: dict[Any, list[float]] = {key: [] for key in keys}
    for i in range(repeats):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        for key in order:
            for _ in range(settle):
                _block(fns[key]())
            samples[key].append(_call_seconds(fns[key], inner[key], timer))
        if log is not None:
            log(f"    round {i + 1}/{repeats} done")
    return samples, compile_seconds


def measure_models(models: dict, params: dict, batch: dict, repeats: int) -> dict:
    """Seconds per call of the encoder and of encode + greedy decoding ({name: {"encoder",
    "end_to_end"}}) of trained models (CodaT5Model / CodaCtcModel) on the same batch, timed
    interleaved (measure_interleaved); the median over `repeats` rounds."""
    import jax

    fns = {}
    for name, m in models.items():
        encode = jax.jit(lambda p, x, m=m: m.module.apply({"params": p}, x, method="encode"))
        predict = jax.jit(m.predict_batch)
        fns[(name, "encoder")] = (lambda f=encode, n=name: f(params[n],
                                                              batch["encoder_input_tokens"]))
        fns[(name, "end_to_end")] = lambda f=predict, n=name: f(params[n], batch)
    samples, _ = measure_interleaved(fns, repeats=max(1, repeats), warmup=1,
                                     min_sample_seconds=0.05)
    out = {name: {} for name in models}
    for (name, what), times in samples.items():
        out[name][what] = float(np.median(times))
    return out


# ---------------------------------------------------------------------------------------------
# The sweep: Parallel Adapter vs CoDA.


def _encode_fn(config: ModelConfig):
    import jax

    from coda_flax.model import build_module
    model = build_module(config)
    return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens,
                                                      method="encode"))


def _generate_fn(config: ModelConfig):
    import jax
    import jax.numpy as jnp

    if config.head == "ctc":
        from coda_flax.model import build_module
        module = build_module(config)

        def greedy_ctc(params, inputs):
            # Encode, CTC logits, the best label per frame (0 = blank) on the real frames.
            logits, mask = module.apply({"params": params}, inputs)
            return jnp.where(mask, jnp.argmax(logits, axis=-1), 0)
        return jax.jit(greedy_ctc)

    from coda_flax.train.t5_model import CodaT5Model
    model = CodaT5Model(config)

    def generate(params, encoder_tokens, decoder_tokens):
        # eos_id -1 never occurs: every sequence decodes exactly decoder_tokens.shape[1] steps.
        decodes, _ = model.predict_batch_with_aux(
            params, {"encoder_input_tokens": encoder_tokens,
                     "decoder_input_tokens": decoder_tokens}, decoder_params={"eos_id": -1})
        return decodes
    return jax.jit(generate)


def _input_lengths(config: ModelConfig, s: SweepSettings) -> list[tuple[int, float | None]]:
    """(input length, audio seconds or None) per length of the sweep for this preset."""
    if config.encoder_input != "frames":
        return [(length, None) for length in s.lengths]
    if s.audio_seconds is not None:
        return [(audio_frames(sec), float(sec)) for sec in s.audio_seconds]
    return [(frames, frames_seconds(frames)) for frames in s.lengths]


def _length_label(row: dict) -> str:
    """'n = 4096', 'n = 1024 patches', 'n = 750 (30.0 s)' for logs and plot legends."""
    kind = row.get("input", "tokens")
    if kind == "frames":
        return f"n = {row['n']} ({row['audio_seconds']:g} s)"
    if kind == "patches":
        return f"n = {row['n']} patches"
    return f"n = {row['n']}"


def run_sweep(settings: SweepSettings = SweepSettings(), *, backend: str | None = None,
              log: Log | None = None) -> dict[str, Any]:
    """The Parallel Adapter vs CoDA sweep; returns the JSON-ready result (module docstring)."""
    import jax

    from coda_flax.inputs import encoder_length
    from coda_flax.summary import flop_speedup

    s = settings
    device = _device(backend)
    result = _header(device)
    result["settings"] = _settings_dict(s)
    result["rows"] = []
    result["soft_topk"] = None
    cfg_kw = dict(num_layers=s.num_layers, num_decoder_layers=s.num_decoder_layers,
                  dtype=s.dtype, router=s.router, solver=s.solver, adapter_dim=s.adapter_dim)
    rng = np.random.default_rng(s.seed)
    for preset in s.presets:
        base = _base_config(preset)
        pa_config = bench_config(preset, 1, **cfg_kw)
        name = preset_name(preset)
        ctc = pa_config.head == "ctc"
        if log:
            depth = (f"{pa_config.num_encoder_layers} of {base.num_encoder_layers} encoder"
                     if pa_config.num_encoder_layers != base.num_encoder_layers
                     else f"{pa_config.num_encoder_layers} encoder")
            log(f"[bench] {name}: {depth} / {pa_config.num_decoder_layers} decoder layers, "
                f"{pa_config.encoder_input} input, random parameters ...")
        params = random_params(pa_config, s.seed, device)
        pa_params = _strip_routers(params)
        for mode in s.modes:
            for length, seconds in _input_lengths(pa_config, s):
                n = encoder_length(pa_config, length)
                enc = jax.device_put(random_inputs(pa_config, s.batch_size, length, rng), device)
                dec = jax.device_put(np.zeros((s.batch_size, s.decode_length), np.int32),
                                     device)
                make = _encode_fn if mode == "encode" else _generate_fn
                args = (enc,) if mode == "encode" or ctc else (enc, dec)
                fns, variants = {}, {}
                pa_fn = make(pa_config)
                fns["pa"] = (lambda f=pa_fn, args=args: f(pa_params, *args))
                for r in s.reductions:
                    for attention in s.attentions:
                        config = bench_config(preset, r, attention, **cfg_kw)
                        k = config.coda.k(n)
                        # k = n: CoDA is the Parallel Adapter; timed again (same executable) as
                        # a second model, whose "speedup" is the run's noise floor.
                        key = ("pa_again",) if k == n else ("coda", r, attention)
                        variants[(r, attention)] = (key, config, k)
                        if key in fns:
                            continue
                        if k == n:
                            fns[key] = (lambda f=pa_fn, args=args: f(pa_params, *args))
                        else:
                            fns[key] = (lambda f=make(config), args=args: f(params, *args))
                what = (f"{length} frames ({seconds:g} s) -> n={n}" if seconds is not None
                        else f"n={n}")
                if log:
                    log(f"[bench] {name} {mode} {what}: {len(fns)} models, compiling and "
                        f"timing ({s.repeats} rounds) ...")
                samples, compiled = measure_interleaved(
                    fns, repeats=s.repeats, warmup=s.warmup,
                    min_sample_seconds=s.min_sample_seconds, timer=s.timer, settle=s.settle,
                    log=log)
                pa_time = _statistic(samples["pa"], s.statistic)
                front = input_flops(pa_config, length)
                for (r, attention), (key, config, k) in variants.items():
                    coda_time = _statistic(samples[key], s.statistic)
                    measured = pa_time / coda_time
                    bound = flop_speedup(config, n, r, attention)
                    result["rows"].append({
                        "preset": name, "mode": mode, "input": pa_config.encoder_input,
                        "head": pa_config.head, "input_length": length,
                        "audio_seconds": seconds, "n": n, "r": r, "k": k,
                        "attention": attention, "num_heads": config.num_heads,
                        "num_kv_heads": config.num_kv_heads, "batch_size": s.batch_size,
                        "decode_length": (s.decode_length if mode == "generate" and not ctc
                                          else None),
                        "num_encoder_layers": config.num_encoder_layers,
                        "num_decoder_layers": config.num_decoder_layers,
                        "preset_num_encoder_layers": base.num_encoder_layers,
                        "preset_num_decoder_layers": base.num_decoder_layers,
                        "dtype": s.dtype,
                        "statistic": s.statistic, "timer": s.timer, "pa_seconds": pa_time,
                        "coda_seconds": coda_time, "measured_speedup": measured,
                        "paired_speedup": _paired(samples["pa"], samples[key]),
                        "flop_speedup": bound, "measured_over_flop": measured / bound,
                        "input_flops": front,
                        "flop_speedup_with_input": _flop_speedup_with_input(
                            config, length, n, r, attention),
                        "paper_speedup": paper_speedup(preset, mode, n, r, attention),
                        "pa_samples": samples["pa"], "coda_samples": samples[key],
                        "pa_compile_seconds": compiled["pa"],
                        "coda_compile_seconds": compiled[key]})
                if log:
                    log(format_table([row for row in result["rows"] if row["preset"] == name
                                      and row["mode"] == mode
                                      and row["input_length"] == length], header=False))
    result["device"]["load_average_end"] = _load_average()
    return result


# ---------------------------------------------------------------------------------------------
# The soft top-k micro-benchmark.


def _temp_bytes(jitted, *args) -> int | None:
    try:
        analysis = jitted.lower(*args).compile().memory_analysis()
    except Exception:                     # some backends do not implement memory_analysis
        return None
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes)


def _one_layer_module(config: ModelConfig):
    """A single CodaEncoderLayer with its relative position bias (what one encoder layer runs)."""
    import flax.linen as nn

    from coda_flax.coda_layer import CodaEncoderLayer
    from coda_flax.model import relative_position_bias

    class OneLayer(nn.Module):
        config: ModelConfig

        @nn.compact
        def __call__(self, x, valid, positions):
            c = self.config
            relpos = relative_position_bias(c, bidirectional=True)
            return CodaEncoderLayer(c, name="layer")(x, valid, positions, relpos)

    return OneLayer(config)


def run_soft_topk(settings: SoftTopkSettings = SoftTopkSettings(), *,
                  backend: str | None = None, log: Log | None = None) -> dict[str, Any]:
    """The soft top-k micro-benchmark; returns the JSON-ready result (module docstring)."""
    import flax
    import jax
    import jax.numpy as jnp

    from coda_flax.routing import Router
    from coda_flax.soft_topk import soft_topk

    st = settings
    device = _device(backend)
    result = _header(device)
    result["settings"] = None
    result["rows"] = []
    gradients, shares = [], []
    result["soft_topk"] = {"settings": _settings_dict(st), "gradients": gradients,
                           "router_share": shares}
    rng = np.random.default_rng(st.seed)
    base = bench_config(st.preset, 1, dtype=st.dtype)
    d, b, T = base.d_model, st.batch_size, st.num_iters
    timing = dict(repeats=st.repeats, warmup=st.warmup, min_sample_seconds=st.min_sample_seconds,
                  timer=st.timer, settle=st.settle)

    for n in st.lengths:
        k = num_routed(n, st.gradient_reduction)
        if log:
            log(f"[bench] soft top-k n={n} k={k} T={T}: gradients ...")
        scores = jax.device_put(rng.standard_normal((b, n), dtype=np.float32), device)
        cotangent = jax.device_put(rng.standard_normal((b, n), dtype=np.float32), device)
        xn = jax.device_put(rng.standard_normal((b, n, d), dtype=np.float32)
                            .astype(base.jnp_dtype), device)
        w = jax.device_put(rng.standard_normal((d,), dtype=np.float32) / np.sqrt(d), device)
        mask = jax.device_put(np.ones((b, n), bool), device)

        # Every array is an argument of the jitted functions, never a closed-over constant:
        # XLA would fold constants at compile time and count them in the temporary memory.
        def topk_loss(s, cot, gradient):
            return jnp.sum(soft_topk(s, k, num_iters=T, gradient=gradient) * cot)

        def router_loss(kernel, x, cot, m, gradient):
            route = Router(num_iters=T, gradient=gradient).apply(
                {"params": {"kernel": kernel}}, x, k, m)
            return jnp.sum(route.lam * cot) + jnp.sum(route.weights)

        forward = jax.jit(lambda s: soft_topk(s, k, num_iters=T))
        grads = {g: jax.jit(jax.grad(functools.partial(topk_loss, gradient=g)))
                 for g in ("implicit", "unrolled")}
        router_grads = {g: jax.jit(jax.grad(functools.partial(router_loss, gradient=g)))
                        for g in ("implicit", "unrolled")}
        samples, _ = measure_interleaved(
            {"forward": lambda: forward(scores),
             "implicit": lambda: grads["implicit"](scores, cotangent),
             "unrolled": lambda: grads["unrolled"](scores, cotangent)}, **timing)
        mem = {g: _temp_bytes(grads[g], scores, cotangent) for g in grads}
        rmem = {g: _temp_bytes(router_grads[g], w, xn, cotangent, mask) for g in router_grads}
        ratio = lambda a, c: None if a is None or not c else a / c
        gradients.append({
            "n": n, "k": k, "batch_size": b, "num_iters": T,
            "forward_seconds": _statistic(samples["forward"], st.statistic),
            "implicit_grad_seconds": _statistic(samples["implicit"], st.statistic),
            "unrolled_grad_seconds": _statistic(samples["unrolled"], st.statistic),
            "soft_topk_implicit_temp_bytes": mem["implicit"],
            "soft_topk_unrolled_temp_bytes": mem["unrolled"],
            "router_implicit_temp_bytes": rmem["implicit"],
            "router_unrolled_temp_bytes": rmem["unrolled"],
            "soft_topk_memory_ratio": ratio(mem["implicit"], mem["unrolled"]),
            "router_memory_ratio": ratio(rmem["implicit"], rmem["unrolled"])})

        x = jax.device_put(rng.standard_normal((b, n, d), dtype=np.float32)
                           .astype(base.jnp_dtype), device)
        positions = jax.device_put(np.broadcast_to(np.arange(n, dtype=np.int32), (b, n)), device)
        for r in st.reductions:
            config = bench_config(st.preset, r, st.attention, dtype=st.dtype).with_coda(
                num_iters=T)
            kr = config.coda.k(n)
            if kr == n:
                continue                   # no router at k = n
            if log:
                log(f"[bench] router share n={n} r={r} k={kr} ...")
            layer = _one_layer_module(config)
            shapes = flax.core.meta.unbox(jax.eval_shape(layer.init, jax.random.key(0), x,
                                                         mask, positions))["params"]
            lp = _fill_random(shapes, rng, device)
            layer_fn = jax.jit(lambda p, x, m, pos: layer.apply({"params": p}, x, m, pos))
            router = Router(num_iters=T)
            rp = {"kernel": lp["layer"]["router"]["kernel"]}
            router_fn = jax.jit(lambda p, x, m: router.apply({"params": p}, x, kr, m))
            topk_fn = jax.jit(lambda s, m: soft_topk(s, kr, num_iters=T, mask=m))
            samples, _ = measure_interleaved(
                {"layer": lambda: layer_fn(lp, x, mask, positions),
                 "router": lambda: router_fn(rp, xn, mask),
                 "soft_topk": lambda: topk_fn(scores, mask)}, **timing)
            t = {key: _statistic(v, st.statistic) for key, v in samples.items()}
            shares.append({
                "preset": preset_name(st.preset), "n": n, "r": r, "k": kr,
                "attention": st.attention,
                "batch_size": b, "num_iters": T, "layer_seconds": t["layer"],
                "router_seconds": t["router"], "soft_topk_seconds": t["soft_topk"],
                "router_share": t["router"] / t["layer"],
                "soft_topk_share": t["soft_topk"] / t["layer"]})
    result["device"]["load_average_end"] = _load_average()
    return result


# ---------------------------------------------------------------------------------------------
# Output: table, JSON, plot.

_COLUMNS = (("preset", "preset", "{}"), ("mode", "mode", "{}"), ("n", "n", "{}"),
            ("r", "r", "{:g}"), ("k", "k", "{}"), ("attention", "attention", "{}"),
            ("pa_seconds", "PA ms", "{:.2f}"), ("coda_seconds", "CoDA ms", "{:.2f}"),
            ("measured_speedup", "speedup", "{:.3f}"), ("paired_speedup", "paired", "{:.3f}"),
            ("flop_speedup", "FLOP bound", "{:.3f}"), ("measured_over_flop", "meas/FLOP", "{:.3f}"))


# Extra columns, shown only when some row needs them: image / audio inputs ("input": what the
# model reads, e.g. "4096 patches", "2998 frames"; "audio": seconds), the bound with the shared
# input front end, and the paper's speedup.
_INPUT_COLUMN = ("input_length", "input", "{}")
_AUDIO_COLUMN = ("audio_seconds", "audio s", "{:g}")
_WITH_INPUT_COLUMN = ("flop_speedup_with_input", "bound+input", "{:.3f}")
_PAPER_COLUMN = ("paper_speedup", "paper", "{:.1f}")


def _columns(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    columns = list(_COLUMNS)
    media = any(row.get("input", "tokens") != "tokens" for row in rows)
    if media:
        at = columns.index(("n", "n", "{}"))
        extra = [_INPUT_COLUMN]
        if any(row.get("input") == "frames" for row in rows):
            extra.append(_AUDIO_COLUMN)
        columns[at:at] = extra
        columns.append(_WITH_INPUT_COLUMN)
    if any(row.get("paper_speedup") is not None for row in rows):
        columns.append(_PAPER_COLUMN)
    return columns


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if key == "input_length":
        kind = row.get("input", "tokens")
        length = row.get("input_length", row.get("n"))
        return f"{length} {kind}" if length is not None else "-"
    if value is None:
        return "-"
    if key.endswith("_seconds") and key != "audio_seconds":
        value = value * 1e3
    return fmt.format(value)


def format_table(rows: Sequence[dict], header: bool = True) -> str:
    """The sweep rows as an aligned text table (times in milliseconds per call).

    Text rows: preset, mode, n, r, k, attention, PA ms, CoDA ms, speedup, paired, FLOP bound,
    meas/FLOP. Image / audio rows add "input" (e.g. "4096 patches", "2998 frames") before n
    (then the encoder length), "audio s" for audio, and "bound+input" (flop_speedup_with_input)
    at the end; rows with a paper figure add "paper". Reads schema 1 rows (as text rows).
    """
    columns = _columns(rows)
    cells = [[_cell(row, key, fmt) for key, _, fmt in columns] for row in rows]
    titles = [title for _, title, _ in columns]
    widths = [max([len(t)] + [len(c[i]) for c in cells]) for i, t in enumerate(titles)]
    left = {"preset", "mode", "attention", "input_length"}
    def line(values):
        return "  ".join(v.ljust(w) if key in left else v.rjust(w)
                         for v, w, (key, _, _) in zip(values, widths, columns)).rstrip()
    lines = [line(titles), line(["-" * w for w in widths])] if header else []
    lines += [line(c) for c in cells]
    return "\n".join(lines)


def format_notes(rows: Sequence[dict]) -> str:
    """Notes printed under the table: runs shallower than the preset, the paper's figures,
    the front end of image / audio models. "" when there is nothing to say."""
    notes = []
    seen = set()
    for row in rows:
        key = (row["preset"], row.get("num_encoder_layers"), row.get("num_decoder_layers"))
        full = row.get("preset_num_encoder_layers")
        if key in seen or full is None or row.get("num_encoder_layers") == full:
            continue
        seen.add(key)
        dec = ""
        generate = any(r.get("mode") == "generate" and r["preset"] == row["preset"]
                       for r in rows)
        if row.get("preset_num_decoder_layers") and generate:
            dec = (f" and {row['num_decoder_layers']} of its {row['preset_num_decoder_layers']}"
                   f" decoder layers")
        notes.append(f"note: {row['preset']} timed with {row['num_encoder_layers']} of its "
                     f"{full} encoder layers{dec} (--num-layers, to keep the run short); every "
                     f"encoder layer costs the same, so the FLOP bound is the full encoder's, "
                     f"but fixed costs (input front end, decoder) weigh more than at full depth.")
    papers = sorted({row["preset"] for row in rows if row.get("paper_speedup") is not None})
    for name in papers:
        paper = PAPER_SPEEDUPS.get(name)
        if paper:
            notes.append(f"note: paper = the paper's measured end-to-end speedup, "
                         f"{paper['source']}, {name} at n = {paper['n']} "
                         f"({paper['attention'].replace('_', '-')}); the paper's hardware and "
                         f"full-depth model, not this run's.")
    if any(row.get("input") == "frames" for row in rows):
        notes.append("note: audio rows: input = log-mel frames (10 ms hop), n = encoder tokens "
                     "after the 4x conv subsampling; bound+input adds the subsampling "
                     "convolutions, which both models run, to the FLOP bound.")
    elif any(row.get("input") == "patches" for row in rows):
        notes.append("note: bound+input adds the patch projection, which both models run, to "
                     "the FLOP bound.")
    return "\n".join(notes)


def _fmt_bytes(x) -> str:
    if x is None:
        return "n/a"
    return f"{x / 1024:.1f} KiB" if x < 1024 ** 2 else f"{x / 1024 ** 2:.2f} MiB"


def format_soft_topk_table(soft: dict) -> str:
    """The soft top-k micro-benchmark (`result["soft_topk"]`) as text."""
    lines = ["soft top-k gradients (coordinate descent): implicit vs unrolled",
             f"  {'n':>5} {'k':>5} {'T':>3}  {'fwd ms':>8} {'implicit ms':>11} "
             f"{'unrolled ms':>11}  {'soft top-k temp impl / unrolled':>33}  "
             f"{'router temp impl / unrolled':>29}"]
    for g in soft["gradients"]:
        ratio = lambda x: "n/a" if x is None else f"{x:.3f}"
        lines.append(
            f"  {g['n']:>5} {g['k']:>5} {g['num_iters']:>3}  {g['forward_seconds'] * 1e3:>8.3f} "
            f"{g['implicit_grad_seconds'] * 1e3:>11.3f} {g['unrolled_grad_seconds'] * 1e3:>11.3f}"
            f"  {_fmt_bytes(g['soft_topk_implicit_temp_bytes']):>10} / "
            f"{_fmt_bytes(g['soft_topk_unrolled_temp_bytes']):>10} = "
            f"{ratio(g['soft_topk_memory_ratio']):>5}"
            f"  {_fmt_bytes(g['router_implicit_temp_bytes']):>9} / "
            f"{_fmt_bytes(g['router_unrolled_temp_bytes']):>9} = "
            f"{ratio(g['router_memory_ratio']):>5}")
    if soft["router_share"]:
        lines += ["", "router (score + soft top-k + top-k) as a share of one CoDA layer's forward",
                  f"  {'preset':<16} {'n':>5} {'r':>4} {'k':>5}  {'layer ms':>9} "
                  f"{'router ms':>9} {'topk ms':>8}  {'router %':>8} {'topk %':>7}"]
        for s in soft["router_share"]:
            lines.append(
                f"  {s['preset']:<16} {s['n']:>5} {s['r']:>4g} {s['k']:>5}  "
                f"{s['layer_seconds'] * 1e3:>9.2f} {s['router_seconds'] * 1e3:>9.3f} "
                f"{s['soft_topk_seconds'] * 1e3:>8.3f}  {100 * s['router_share']:>7.2f}% "
                f"{100 * s['soft_topk_share']:>6.2f}%")
    return "\n".join(lines)


def write_json(result: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return path


def plot_speedups(result: dict, path: str) -> str | None:
    """Measured (solid) and FLOP-bound (dashed) speedup vs r, one colour per n (the paper's
    speedups as stars), one panel per (preset, mode, attention). Returns the path, or None when
    there are no rows or no matplotlib. Reads schema 1 results too."""
    rows = result["rows"]
    if not rows:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    panels = sorted({(r["preset"], r["mode"], r["attention"]) for r in rows},
                    key=lambda p: (p[0], MODES.index(p[1]), p[2]))
    lengths = sorted({r["n"] for r in rows})
    label = {(r["preset"], r["n"]): _length_label(r) for r in rows}
    cols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.0 * cols, 4.2 * nrows), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(lengths)))
    for ax, (preset, mode, attention) in zip(axes.flat, panels):
        for color, n in zip(colors, lengths):
            sel = sorted((r for r in rows if (r["preset"], r["mode"], r["attention"], r["n"])
                          == (preset, mode, attention, n)), key=lambda r: r["r"])
            if not sel:
                continue
            rs = [r["r"] for r in sel]
            ax.plot(rs, [r["measured_speedup"] for r in sel], "o-", color=color,
                    label=label[(preset, n)])
            ax.plot(rs, [r["flop_speedup"] for r in sel], "--", color=color, alpha=0.7)
            paper = [(r["r"], r["paper_speedup"]) for r in sel
                     if r.get("paper_speedup") is not None]
            if paper:
                ax.plot(*zip(*paper), "*", color=color, markersize=11, markeredgecolor="black",
                        markeredgewidth=0.5, label=f"{label[(preset, n)]}: paper")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        reductions = sorted({r["r"] for r in rows if (r["preset"], r["mode"], r["attention"])
                             == (preset, mode, attention)})
        ax.set_xticks(reductions)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_formatter(plain)
        ax.set_xlabel("reduction r")
        ax.set_ylabel("speedup over the Parallel Adapter")
        some = next(r for r in rows if (r["preset"], r["mode"], r["attention"])
                    == (preset, mode, attention))
        depth = ""
        full = some.get("preset_num_encoder_layers")
        if full is not None and some.get("num_encoder_layers") != full:
            depth = f" ({some['num_encoder_layers']} of {full} enc. layers)"
        ax.set_title(f"{preset} {mode} {attention.replace('_', '-')}{depth}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="solid: measured, dashed: FLOP bound"
                  + (", stars: paper" if any(r.get("paper_speedup") is not None for r in rows)
                     else ""), title_fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    device = result.get("device", {})
    fig.suptitle(f"CoDA vs Parallel Adapter ({device.get('platform', '?')}, "
                 f"{result['settings'].get('statistic', 'median')} over "
                 f"{result['settings'].get('repeats', '?')} rounds)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# CLI part (the parser is built here, argv is parsed by coda_flax.cli or scripts/bench.py).


def _csv(item_parser: Callable[[str], Any], what: str):
    def parse(text: str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{what}: empty list")
        return tuple(item_parser(p) for p in parts)
    return parse

def _parse_positive(what: str):
    return argtypes.positive_int(f"{what} must be an integer >= 1")


_REDUCTION = argtypes.reduction("reduction r must be >= 1 (1 = Parallel Adapter)", finite=True)


def _parse_choice(choices: Sequence[str], what: str):
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from "
                                             f"{', '.join(choices)}")
        return text
    return parse


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"audio duration must be a number of seconds, got "
                                         f"{text!r}") from None
    try:
        audio_frames(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return int(value) if value.is_integer() else value


_DESCRIPTION = """\
Inference speed of CoDA against the Parallel Adapter (CodaConfig(reduction=1)) on the same
random weights and inputs, next to the FLOP bound of `coda summary`.

Sweep (default): presets x lengths x reductions r x attention, in modes
  encode    the jit'd encoder forward (EncoderDecoder / EncoderCtc .encode)
  generate  encode + greedy decoding of exactly --decode-length tokens with the cache (text and
            image presets); encode + CTC logits + per-frame argmax (speech presets)
Lengths are tokens (text presets), image patches (pix2struct: a full grid of random patches)
or audio frames at 10 ms (speech_*; or --audio-seconds 10,30); n is the encoder length CoDA
routes over (audio: ceil(frames / 4) after the conv subsampling).
Per row: PA and CoDA time per call, measured speedup, FLOP-bound speedup
(summary.flop_speedup at n), measured / FLOP bound; image / audio rows add the bound with the
shared input front end, and pix2struct rows at n = 4096 the paper's speedup (Table 6).
Writes OUTPUT/bench.json and OUTPUT/speedup.png (measured solid, FLOP bound dashed, vs r, one
line per n, paper stars).

--soft-topk instead times soft top-k (T iterations): implicit vs unrolled gradients (time and
compiled temporary memory) and the router's share of one CoDA layer's forward time; writes
OUTPUT/soft_topk.json.

Every encoder layer costs the same, so the speedup of one layer is the encoder's: use
--num-layers 2 on CPU (the decoder keeps the preset's encoder/decoder proportion). Runs on the
default jax device (a GPU when jax has one); timings interleave all models of a group in
rotated order and take the median over --repeats rounds (--statistic min on a busy machine).

examples:
  coda bench --lengths 512 --reductions 1,3 --attention k_to_all --modes encode --num-layers 2
  coda bench --presets t5_1_1_base,paper_text_base --lengths 512,2048 --num-layers 2
  coda bench --presets pix2struct --lengths 1024,2048,4096 --reductions 1,8,16,32 \
      --attention k_to_all --modes generate --num-layers 3 --batch-size 1
  coda bench --presets speech_base --audio-seconds 10,30 --reductions 1,2,4 \
      --attention k_to_all --num-layers 2
  coda bench --soft-topk --soft-topk-lengths 512,4096
"""


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds `coda bench`'s arguments to a parser (used by add_bench_parser and scripts/bench.py)."""
    p.add_argument("--presets", type=_csv(_parse_choice(sorted(PRESETS), "preset"), "presets"),
                   default=("paper_text_base",), metavar="NAME[,NAME]",
                   help="model presets (default paper_text_base; t5_1_1_base is the MHA "
                        "counterpart of the MQA paper_text_base; pix2struct reads image "
                        "patches, speech_base/large/xl audio frames)")
    p.add_argument("--lengths", type=_csv(_parse_positive("length n"), "lengths"),
                   default=DEFAULT_LENGTHS, metavar="N[,N]",
                   help=f"input lengths: tokens, patches (pix2struct) or audio frames at 10 ms "
                        f"(speech presets) (default {','.join(map(str, DEFAULT_LENGTHS))})")
    p.add_argument("--audio-seconds", type=_csv(_parse_seconds, "audio seconds"), default=None,
                   metavar="S[,S]",
                   help="speech presets: durations in seconds instead of --lengths, e.g. 10,30 "
                        "(16 kHz, 25 ms windows every 10 ms: 10 s = 998 frames = 250 encoder "
                        "tokens)")
    p.add_argument("--reductions", type=_csv(_REDUCTION, "reductions"),
                   default=DEFAULT_REDUCTIONS, metavar="R[,R]",
                   help=f"reductions r >= 1 (default {','.join(map(str, DEFAULT_REDUCTIONS))}; "
                        "r = 1 times the Parallel Adapter against itself: the noise floor)")
    p.add_argument("--attention", type=_csv(_parse_choice(ATTENTION_VARIANTS, "attention"),
                                            "attention"),
                   default=ATTENTION_VARIANTS, metavar="A[,A]",
                   help="CoDA attention variants (default k_to_all,k_to_k)")
    p.add_argument("--modes", type=_csv(_parse_choice(MODES, "mode"), "modes"), default=MODES,
                   metavar="M[,M]", help="encode and/or generate (default both)")
    p.add_argument("--batch-size", type=_parse_positive("batch size"), default=1, metavar="B",
                   help="batch size (default 1)")
    p.add_argument("--decode-length", type=_parse_positive("decode length"), default=32,
                   metavar="L", help="tokens decoded per sequence in generate mode, always "
                                     "exactly L (default 32)")
    p.add_argument("--num-layers", type=_parse_positive("num layers"), default=None,
                   metavar="L", help="encoder layers (default: the preset's); the speedup per "
                                     "layer does not depend on depth")
    p.add_argument("--num-decoder-layers", type=_parse_positive("num decoder layers"),
                   default=None, metavar="L",
                   help="decoder layers (default: the preset's, scaled with --num-layers)")
    p.add_argument("--adapter-dim", type=_parse_positive("adapter dim"), default=None,
                   metavar="D", help="adapter width (default: the preset's, else 64)")
    p.add_argument("--router", type=_parse_choice(ROUTERS, "router"), default="soft_topk",
                   help="CoDA router (default soft_topk)")
    p.add_argument("--solver", type=_parse_choice(SOLVERS, "solver"),
                   default="coordinate_descent", help="soft top-k solver (default "
                                                      "coordinate_descent, the paper's)")
    p.add_argument("--dtype", type=_parse_choice(sorted(DTYPES), "dtype"), default="float32",
                   help="activation dtype (default float32)")
    p.add_argument("--repeats", type=_parse_positive("repeats"), default=5, metavar="R",
                   help="interleaved timing rounds (default 5)")
    p.add_argument("--warmup", type=argtypes.nonnegative_int, default=1, metavar="W",
                   help="untimed calls after the compiling one (default 1)")
    p.add_argument("--min-sample-seconds", type=argtypes.nonnegative_float, default=0.05,
                   metavar="S", help="a timed sample repeats a call until it lasts S seconds "
                                     "(default 0.05)")
    p.add_argument("--statistic", type=_parse_choice(STATISTICS, "statistic"), default="median",
                   help="per-model statistic over the rounds (default median; min is more "
                        "robust on a loaded machine)")
    p.add_argument("--settle", type=argtypes.nonnegative_int, default=1, metavar="S",
                   help="untimed calls of a model before each of its timed samples, so that "
                        "it is timed in its steady state and not right after another model "
                        "(default 1)")
    p.add_argument("--timer", type=_parse_choice(TIMERS, "timer"), default="wall",
                   help="wall (elapsed, default) or process (this process's CPU time over all "
                        "threads: leaves out time other processes hold the cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="jax backend (cpu, gpu, tpu; default: jax's default device)")
    p.add_argument("--soft-topk", action="store_true",
                   help="run the soft top-k micro-benchmark instead of the sweep")
    p.add_argument("--soft-topk-lengths", type=_csv(_parse_positive("length n"), "lengths"),
                   default=(512, 4096), metavar="N[,N]",
                   help="lengths of the soft top-k benchmark (default 512,4096)")
    p.add_argument("--soft-topk-reductions", type=_csv(_REDUCTION, "reductions"),
                   default=(3, 8), metavar="R[,R]",
                   help="r of the CoDA layers the router share is measured against "
                        "(default 3,8; the gradient rows use k = ceil(n / 3))")
    p.add_argument("--num-iters", type=_parse_positive("num iters"), default=20, metavar="T",
                   help="soft top-k iterations T for --soft-topk (default 20)")
    p.add_argument("--output", default="bench_out", metavar="DIR",
                   help="directory for the JSON and the plot (default ./bench_out)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=bench_main)
    return p


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `bench` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "bench", help="measured vs FLOP-bound speedup of CoDA over the Parallel Adapter",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure_parser(p)


def bench_main(args: argparse.Namespace) -> int:
    """Runs `coda bench` for parsed arguments: prints the table, writes JSON (and a plot)."""
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        if args.soft_topk:
            settings = SoftTopkSettings(
                lengths=args.soft_topk_lengths, reductions=args.soft_topk_reductions,
                num_iters=args.num_iters, preset=args.presets[0], attention=args.attention[0],
                batch_size=args.batch_size, dtype=args.dtype, repeats=args.repeats,
                warmup=args.warmup, min_sample_seconds=args.min_sample_seconds,
                statistic=args.statistic, timer=args.timer, settle=args.settle,
                seed=args.seed)
        else:
            settings = SweepSettings(
                presets=args.presets, lengths=args.lengths, reductions=args.reductions,
                attentions=args.attention, modes=args.modes,
                audio_seconds=args.audio_seconds, batch_size=args.batch_size,
                decode_length=args.decode_length, num_layers=args.num_layers,
                num_decoder_layers=args.num_decoder_layers, dtype=args.dtype,
                repeats=args.repeats, warmup=args.warmup,
                min_sample_seconds=args.min_sample_seconds, statistic=args.statistic,
                timer=args.timer, settle=args.settle, seed=args.seed, router=args.router,
                solver=args.solver, adapter_dim=args.adapter_dim)
    except ValueError as e:
        print(f"coda bench: error: {e}", file=sys.stderr)
        return 2
    if args.soft_topk:
        result = run_soft_topk(settings, backend=args.backend, log=log)
        path = write_json(result, os.path.join(args.output, "soft_topk.json"))
        print(format_soft_topk_table(result["soft_topk"]))
    else:
        result = run_sweep(settings, backend=args.backend, log=log)
        path = write_json(result, os.path.join(args.output, "bench.json"))
        print(format_table(result["rows"]))
        notes = format_notes(result["rows"])
        if notes:
            print(notes)
        if not args.no_plot:
            plot = plot_speedups(result, os.path.join(args.output, "speedup.png"))
            print(f"plot: {plot}" if plot else "plot: skipped (matplotlib not installed)")
    dev = result["device"]
    print(f"json: {path}  (device {dev['platform']} {dev['device_kind']}, jax "
          f"{result['jax_version']}, load average {dev['load_average_start']} -> "
          f"{dev['load_average_end']})")
    return 0
