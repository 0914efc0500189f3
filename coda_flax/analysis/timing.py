"""Timing of jitted functions on a shared machine: interleaved rounds, steady-state samples.

`measure_interleaved` times several zero-argument functions in rotated order so that every one
sees the same background load; `measure_models` times trained models' encoder and encode +
greedy decoding on one batch, every round's sample (what `coda demo`, `coda compare` and
`coda claims` report);
`machine` names what a timing depends on besides the code; `sample_statistic` /
`paired_speedup` reduce the samples (median or min; the median over rounds
of the per-round ratio). Used by coda_flax.bench and the experiments.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np

Log = Callable[[str], None]


def block(x):
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
        block(fn())
    return (clock() - t0) / inner


def paired_speedup(pa: Sequence[float], coda: Sequence[float]) -> float:
    """Median over rounds of PA / CoDA time within a round (robust to load that drifts)."""
    return float(statistics.median(p / c for p, c in zip(pa, coda)))


def sample_statistic(samples: Sequence[float], statistic: str) -> float:
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
                block(fns[key]())
            samples[key].append(_call_seconds(fns[key], inner[key], timer))
        if log is not None:
            log(f"    round {i + 1}/{repeats} done")
    return samples, compile_seconds


def machine(device=None) -> dict:
    """What a timing depends on besides the code and its inputs: the platform and kind of
    `device` (default: JAX's first), the number of devices of that platform, and the host's
    CPU cores (`coda bench`'s JSON header and `coda claims`' kept timings)."""
    import os

    import jax
    device = device or jax.devices()[0]
    return {"platform": device.platform, "device_kind": getattr(device, "device_kind", ""),
            "num_devices": len(jax.devices(device.platform)), "cpu_count": os.cpu_count()}


def measure_models(models: dict, params: dict, batch: dict, repeats: int) -> dict:
    """Seconds per call of the encoder and of encode + greedy decoding ({name: {"encoder",
    "end_to_end": [seconds, one per round]}}) of trained models (CodaT5Model / CodaCtcModel)
    on the same batch, timed interleaved (measure_interleaved) over `repeats` rounds."""
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
        out[name][what] = [float(t) for t in times]
    return out
