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

The result is a JSON-ready dict (schema and readers: coda_flax.analysis.bench_report, which
prints the tables, writes the JSON and draws the plot); timing: coda_flax.analysis.timing;
random weights and inputs: coda_flax.analysis.synthetic; FLOP bounds: coda_flax.analysis.summary.
The command line is coda_flax/cli/bench.py; nothing here reads argv.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
from typing import Any

import numpy as np

from coda_flax.analysis.bench_report import MODES, PAPER_SPEEDUPS
from coda_flax.analysis.synthetic import fill_random, random_inputs, random_params
from coda_flax.analysis.timing import (Log, machine, measure_interleaved, paired_speedup,
                                       sample_statistic)
from coda_flax.config import ATTENTION_VARIANTS, DTYPES, PRESETS, CodaConfig, ModelConfig
from coda_flax.frontends.audio import SAMPLE_RATE
from coda_flax.routing import ROUTERS, num_routed
from coda_flax.soft_topk import SOLVERS, SoftTopkConfig
from coda_flax.variants import name_of

__all__ = ["SCHEMA_VERSION", "MODES", "STATISTICS", "TIMERS", "DEFAULT_REDUCTIONS",
           "DEFAULT_LENGTHS", "PAPER_SPEEDUPS", "TimingSettings", "SweepSettings", "SoftTopkSettings",
           "bench_config", "audio_frames", "frames_seconds", "paper_speedup", "preset_name",
           "run_sweep", "run_soft_topk"]

SCHEMA_VERSION = 2
STATISTICS = ("median", "min")
TIMERS = ("wall", "process")     # time.perf_counter | time.process_time (CPU time, all threads)
DEFAULT_REDUCTIONS = (1, 2, 3, 4, 5, 8, 16, 32)
DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096)
# The speech front end's framing (coda_flax.frontends.audio: 16 kHz, 25 ms windows every 10 ms,
# no end pad).
FRAME_LENGTH = 400                 # samples (25 ms)
FRAME_STEP = 160                   # samples (10 ms)


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
class TimingSettings:
    """How a benchmark times its models (the fields `SweepSettings` and `SoftTopkSettings` share;
    see the module docstring for warmup, samples, rounds and settle)."""

    batch_size: int = 1
    dtype: str = "float32"
    repeats: int = 5
    warmup: int = 1
    min_sample_seconds: float = 0.05
    statistic: str = "median"
    timer: str = "wall"
    settle: int = 1                          # untimed calls before each timed sample
    seed: int = 0

    def check_timing(self) -> None:
        for field in ("batch_size", "repeats"):
            _check_positive_int(field, getattr(self, field))
        for field in ("warmup", "settle"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{field} must be an integer >= 0, got {value!r}.")
        if not self.min_sample_seconds >= 0:
            raise ValueError(f"min_sample_seconds must be >= 0, got {self.min_sample_seconds}.")
        for field, choices in (("dtype", sorted(DTYPES)), ("statistic", STATISTICS),
                               ("timer", TIMERS)):
            if getattr(self, field) not in choices:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; choose one of "
                                 f"{choices}.")

    def timing(self) -> dict:
        """The keyword arguments of `measure_interleaved`."""
        return dict(repeats=self.repeats, warmup=self.warmup,
                    min_sample_seconds=self.min_sample_seconds, timer=self.timer,
                    settle=self.settle)


@dataclasses.dataclass(frozen=True)
class SweepSettings(TimingSettings):
    """What `run_sweep` measures (defaults: the full sweep of `coda bench`)."""

    presets: tuple[str | ModelConfig, ...] = ("paper_text_base",)   # names or ModelConfigs
    lengths: tuple[int, ...] = DEFAULT_LENGTHS     # tokens / patches / audio frames
    reductions: tuple[float, ...] = DEFAULT_REDUCTIONS
    attentions: tuple[str, ...] = ("k_to_all", "k_to_k")
    modes: tuple[str, ...] = MODES
    audio_seconds: tuple[float, ...] | None = None  # speech presets: durations instead of lengths
    decode_length: int = 32
    num_layers: int | None = None            # encoder depth override (speedup per layer)
    num_decoder_layers: int | None = None    # None: the preset's proportion of num_layers
    router: str = "soft_topk"
    solver: str = SoftTopkConfig.solver
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
        _check_positive_int("decode_length", self.decode_length)
        for field in ("num_layers", "num_decoder_layers", "adapter_dim"):
            if getattr(self, field) is not None:
                _check_positive_int(field, getattr(self, field))
        self.check_timing()
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose one of {ROUTERS}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}.")


@dataclasses.dataclass(frozen=True)
class SoftTopkSettings(TimingSettings):
    """What `run_soft_topk` measures (defaults: the issue's n = 512 and 4096, T = 20)."""

    lengths: tuple[int, ...] = (512, 4096)
    reductions: tuple[float, ...] = (3, 8)   # k = ceil(n / r) for the layers of the share rows
    gradient_reduction: float = 3            # k = ceil(n / r) of the gradient rows
    num_iters: int = SoftTopkConfig.num_iters
    preset: str | ModelConfig = "paper_text_base"   # the layer's dims: a name or a ModelConfig
    attention: str = "k_to_all"
    repeats: int = 7

    def __post_init__(self):
        for field in ("lengths", "reductions"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
            _check_nonempty(field, getattr(self, field))
        for n in self.lengths:
            _check_positive_int("sequence length n", n)
        for r in (*self.reductions, self.gradient_reduction):
            _check_reduction(r)
        _check_positive_int("num_iters", self.num_iters)
        _check_preset(self.preset)
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(f"unknown attention {self.attention!r}; choose one of "
                             f"{ATTENTION_VARIANTS}.")
        self.check_timing()


# ---------------------------------------------------------------------------------------------
# Models and random parameters.


def bench_config(preset: str | ModelConfig, reduction: float = 1, attention: str = "k_to_all",
                 *, num_layers: int | None = None, num_decoder_layers: int | None = None,
                 dtype: str = "float32", router: str = "soft_topk",
                 solver: str = SoftTopkConfig.solver,
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
    # the variant variants.name_of(attention, router) names (its row's "variant")
    coda_fields = dict(attention=attention, router=router, reduction=reduction, solver=solver)
    if adapter_dim is not None:
        coda_fields["adapter_dim"] = adapter_dim
    coda = CodaConfig(**coda_fields)
    if isinstance(preset, str):
        return ModelConfig.from_preset(preset, coda=coda, **fields)
    if adapter_dim is None and base.coda is not None:
        coda = dataclasses.replace(coda, adapter_dim=base.coda.adapter_dim)
    return base.replace(coda=coda, **fields)



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
    return {**machine(device), "load_average_start": _load_average(), "load_average_end": None}


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


def run_sweep(settings: SweepSettings = SweepSettings(), *, backend: str | None = None,
              log: Log | None = None) -> dict[str, Any]:
    """The Parallel Adapter vs CoDA sweep; returns the JSON-ready result (module docstring)."""
    import jax

    from coda_flax.inputs import encoder_length
    from coda_flax.analysis.summary import flop_speedup, flop_speedup_with_input, input_flops

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
                samples, compiled = measure_interleaved(fns, **s.timing(), log=log)
                pa_time = sample_statistic(samples["pa"], s.statistic)
                front = input_flops(pa_config, length)
                for (r, attention), (key, config, k) in variants.items():
                    coda_time = sample_statistic(samples[key], s.statistic)
                    measured = pa_time / coda_time
                    bound = flop_speedup(config, n, r, attention)
                    result["rows"].append({
                        "preset": name, "mode": mode, "input": pa_config.encoder_input,
                        "head": pa_config.head, "input_length": length,
                        "audio_seconds": seconds, "n": n, "r": r, "k": k,
                        "attention": attention, "variant": name_of(attention, s.router),
                        "num_heads": config.num_heads,
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
                        "paired_speedup": paired_speedup(samples["pa"], samples[key]),
                        "flop_speedup": bound, "measured_over_flop": measured / bound,
                        "input_flops": front,
                        "flop_speedup_with_input": flop_speedup_with_input(
                            config, length, n, r, attention),
                        "paper_speedup": paper_speedup(preset, mode, n, r, attention),
                        "pa_samples": samples["pa"], "coda_samples": samples[key],
                        "pa_compile_seconds": compiled["pa"],
                        "coda_compile_seconds": compiled[key]})
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
    by_gradient = {g: SoftTopkConfig(num_iters=T, gradient=g) for g in ("implicit", "unrolled")}
    timing = st.timing()

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
            return jnp.sum(soft_topk(s, k, config=by_gradient[gradient]) * cot)

        def router_loss(kernel, x, cot, m, gradient):
            route = Router(soft_topk=by_gradient[gradient]).apply(
                {"params": {"kernel": kernel}}, x, k, m)
            return jnp.sum(route.lam * cot) + jnp.sum(route.weights)

        forward = jax.jit(lambda s: soft_topk(s, k, config=by_gradient["implicit"]))
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
            "forward_seconds": sample_statistic(samples["forward"], st.statistic),
            "implicit_grad_seconds": sample_statistic(samples["implicit"], st.statistic),
            "unrolled_grad_seconds": sample_statistic(samples["unrolled"], st.statistic),
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
            lp = fill_random(shapes, rng, device)
            layer_fn = jax.jit(lambda p, x, m, pos: layer.apply({"params": p}, x, m, pos))
            router = Router(soft_topk=config.coda.soft_topk)
            rp = {"kernel": lp["layer"]["router"]["kernel"]}
            router_fn = jax.jit(lambda p, x, m: router.apply({"params": p}, x, kr, m))
            topk_fn = jax.jit(lambda s, m: soft_topk(s, kr, mask=m, config=config.coda.soft_topk))
            samples, _ = measure_interleaved(
                {"layer": lambda: layer_fn(lp, x, mask, positions),
                 "router": lambda: router_fn(rp, xn, mask),
                 "soft_topk": lambda: topk_fn(scores, mask)}, **timing)
            t = {key: sample_statistic(v, st.statistic) for key, v in samples.items()}
            shares.append({
                "preset": preset_name(st.preset), "n": n, "r": r, "k": kr,
                "attention": st.attention,
                "batch_size": b, "num_iters": T, "layer_seconds": t["layer"],
                "router_seconds": t["router"], "soft_topk_seconds": t["soft_topk"],
                "router_share": t["router"] / t["layer"],
                "soft_topk_share": t["soft_topk"] / t["layer"]})
    result["device"]["load_average_end"] = _load_average()
    return result
