"""The speech front end of the paper's section 6 models: audio files -> 16 kHz mono waveforms ->
log-mel filterbank frames, the encoder input of the CoDA speech models (Lingvo / Conformer
LibriSpeech recipe: 80 mel bins, 25 ms Hann windows every 10 ms, 125 Hz - 7.6 kHz).

    log_mel_spectrogram(waveform)      [..., samples] -> [..., frames, num_mel_bins] (jax, jit)
    mel_filterbank(...)                [fft_length // 2 + 1, num_mel_bins]; HTK mel scale, same
                                       matrix as tf.signal.linear_to_mel_weight_matrix
    frame_features(waveform)           np.float32 [frames, 1 + num_mel_bins]: column 0 is the
                                       1-based frame index (all-zero padded rows = padding, the
                                       layout ContinuousEncDecFeatureConverter expects)
    read_audio(path) / write_wav(...)  WAV (8/16/24/32-bit PCM), raw headerless 16-bit PCM,
                                       FLAC / OGG (through the `soundfile` package)
    resample(waveform, orig_sr, new_sr)   polyphase resampling (scipy.signal.resample_poly)

Framing follows tf.signal.stft with pad_end=False: frame t covers samples [t * step, t * step +
frame_length), so a waveform of n >= frame_length samples has 1 + (n - frame_length) // step
frames; each frame is multiplied by a periodic Hann window and zero-padded to fft_length. The
features are log(mel(|STFT|^power) + log_offset) (power 2: the power spectrum).
"""

from __future__ import annotations

import functools
import math
import os
import wave
from typing import Optional

import numpy as np

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
_MEL_BREAK_HZ = 700.0
_MEL_HIGH_Q = 1127.0
RAW_EXTENSIONS = (".raw", ".pcm")
SOUNDFILE_EXTENSIONS = (".flac", ".ogg")


# ------------------------------------------------------------------ mel filterbank

def hertz_to_mel(hz):
    """HTK mel scale: 1127 ln(1 + f / 700)."""
    return _MEL_HIGH_Q * np.log1p(np.asarray(hz, np.float64) / _MEL_BREAK_HZ)


def mel_to_hertz(mel):
    return _MEL_BREAK_HZ * np.expm1(np.asarray(mel, np.float64) / _MEL_HIGH_Q)


def default_fft_length(frame_length: int) -> int:
    """The next power of two >= frame_length (400 samples -> 512)."""
    return 1 << max(int(frame_length) - 1, 0).bit_length()


@functools.lru_cache(maxsize=32)
def mel_filterbank(num_mel_bins: int = NUM_MEL_BINS, num_spectrogram_bins: int = 257,
                   sample_rate: int = SAMPLE_RATE, lower_hz: float = 125.0,
                   upper_hz: float = 7600.0) -> np.ndarray:
    """Triangular mel filters, float32 [num_spectrogram_bins, num_mel_bins].

    Same conventions as tf.signal.linear_to_mel_weight_matrix: the spectrogram bins are
    linspace(0, sample_rate / 2, num_spectrogram_bins); num_mel_bins + 2 band edges equally spaced
    on the HTK mel scale between lower_hz and upper_hz; triangles are computed in mel space, not
    normalised to unit area; the DC bin gets weight 0.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"mel_filterbank needs 0 <= lower_hz < upper_hz <= sample_rate / 2 = "
                         f"{nyquist}; got lower_hz={lower_hz}, upper_hz={upper_hz}.")
    if num_mel_bins < 1 or num_spectrogram_bins < 2:
        raise ValueError(f"mel_filterbank: bad sizes num_mel_bins={num_mel_bins}, "
                         f"num_spectrogram_bins={num_spectrogram_bins}")
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins)[1:])[:, None]
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    lower_slopes = (bins_mel - lower) / (center - lower)
    upper_slopes = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    weights = np.concatenate([np.zeros((1, num_mel_bins)), weights], axis=0)
    weights = weights.astype(np.float32)
    weights.setflags(write=False)  # cached: shared between callers
    return weights


# ------------------------------------------------------------------ log-mel features

def _frame_lengths(sample_rate: int, frame_length_ms: float, frame_step_ms: float,
                   fft_length: Optional[int]) -> tuple[int, int, int]:
    frame_length = int(round(sample_rate * frame_length_ms / 1000.0))
    frame_step = int(round(sample_rate * frame_step_ms / 1000.0))
    fft_length = int(fft_length or default_fft_length(frame_length))
    if frame_step < 1 or frame_length < 1 or fft_length < frame_length:
        raise ValueError(f"bad framing: frame_length={frame_length}, frame_step={frame_step}, "
                         f"fft_length={fft_length} samples (fft_length must be >= frame_length)")
    return frame_length, frame_step, fft_length


def num_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, frame_length_ms: float = 25.0,
               frame_step_ms: float = 10.0) -> int:
    """Frames of log_mel_spectrogram for a waveform of num_samples samples (pad_end=False)."""
    frame_length, frame_step, _ = _frame_lengths(sample_rate, frame_length_ms, frame_step_ms, None)
    return max(0, 1 + (int(num_samples) - frame_length) // frame_step)


def _log_mel(xp, waveform, sample_rate, num_mel_bins, frame_length_ms, frame_step_ms, fft_length,
             lower_hz, upper_hz, log_offset, power):
    """log_mel_spectrogram with array module xp (numpy or jax.numpy)."""
    frame_length, frame_step, fft_length = _frame_lengths(sample_rate, frame_length_ms,
                                                          frame_step_ms, fft_length)
    waveform = xp.asarray(waveform, xp.float32)
    n = 1 + (waveform.shape[-1] - frame_length) // frame_step if \
        waveform.shape[-1] >= frame_length else 0
    index = (np.arange(n)[:, None] * frame_step + np.arange(frame_length)[None, :])
    frames = waveform[..., index]                                        # [..., n, frame_length]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(frame_length) / frame_length)
    spectrum = xp.fft.rfft(frames * window.astype(np.float32), n=fft_length, axis=-1)
    magnitude = xp.abs(spectrum).astype(xp.float32)
    if power != 1.0:
        magnitude = magnitude ** power
    weights = mel_filterbank(num_mel_bins, fft_length // 2 + 1, sample_rate, float(lower_hz),
                             float(upper_hz))
    mel = xp.matmul(magnitude, weights)
    return xp.log(mel + log_offset).astype(xp.float32)


def log_mel_spectrogram(waveform, sample_rate: int = SAMPLE_RATE,
                        num_mel_bins: int = NUM_MEL_BINS, frame_length_ms: float = 25.0,
                        frame_step_ms: float = 10.0, fft_length: Optional[int] = None,
                        lower_hz: float = 125.0, upper_hz: float = 7600.0,
                        log_offset: float = 1e-6, power: float = 2.0):
    """Log-mel filterbank energies in jax.numpy: [..., samples] -> float32 [..., frames, bins].

    = log(|STFT(waveform)|^power @ mel_filterbank + log_offset), with tf.signal.stft's framing
    (periodic Hann window, pad_end=False) and fft_length defaulting to the next power of two of
    the frame length (512 for 25 ms at 16 kHz). Shapes are static, so it can be jitted (all
    arguments but waveform are static).
    """
    import jax.numpy as jnp

    return _log_mel(jnp, waveform, sample_rate, num_mel_bins, frame_length_ms, frame_step_ms,
                    fft_length, lower_hz, upper_hz, log_offset, power)


def frame_features(waveform, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS,
                   **kwargs) -> np.ndarray:
    """Encoder input of one utterance: np.float32 [frames, 1 + num_mel_bins], column 0 = frame
    index 1..frames, columns 1.. = log_mel_spectrogram (computed in numpy, so that input
    pipelines never touch the accelerator). A waveform shorter than one frame is zero-padded to
    one frame. kwargs: the other log_mel_spectrogram arguments."""
    waveform = np.asarray(waveform, np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"frame_features expects a mono waveform [samples]; got shape "
                         f"{waveform.shape}")
    frame_length, _, _ = _frame_lengths(sample_rate, kwargs.get("frame_length_ms", 25.0),
                                        kwargs.get("frame_step_ms", 10.0), None)
    if waveform.shape[0] < frame_length:
        waveform = np.pad(waveform, (0, frame_length - waveform.shape[0]))
    args = dict(frame_length_ms=25.0, frame_step_ms=10.0, fft_length=None, lower_hz=125.0,
                upper_hz=7600.0, log_offset=1e-6, power=2.0)
    unknown = set(kwargs) - set(args)
    if unknown:
        raise TypeError(f"frame_features: unexpected arguments {sorted(unknown)}")
    args.update(kwargs)
    mel = _log_mel(np, waveform, sample_rate, num_mel_bins, **args)
    index = np.arange(1, mel.shape[0] + 1, dtype=np.float32)[:, None]
    return np.concatenate([index, mel], axis=1).astype(np.float32)


# ------------------------------------------------------------------ audio files

def resample(waveform, orig_sr: int, new_sr: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed FIR) along the last
    axis; float32. Same rate: returned unchanged."""
    waveform = np.asarray(waveform, np.float32)
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return waveform
    from scipy.signal import resample_poly

    g = math.gcd(orig_sr, new_sr)
    return resample_poly(waveform, new_sr // g, orig_sr // g, axis=-1).astype(np.float32)


def _pcm_to_float(data: bytes, sample_width: int, channels: int) -> np.ndarray:
    if sample_width == 1:  # 8-bit WAV is unsigned
        x = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif sample_width == 2:
        x = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    elif sample_width == 3:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif sample_width == 4:
        x = np.frombuffer(data, "<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"unsupported PCM sample width {sample_width} bytes")
    if channels > 1:
        x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    return x.astype(np.float32)


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    try:
        with wave.open(path, "rb") as w:
            data = w.readframes(w.getnframes())
            return _pcm_to_float(data, w.getsampwidth(), w.getnchannels()), w.getframerate()
    except wave.Error as e:  # e.g. IEEE-float or WAVE_FORMAT_EXTENSIBLE: try libsndfile
        try:
            return _read_soundfile(path)
        except ImportError:
            raise ValueError(f"cannot read WAV file {path} with the stdlib wave module ({e}); "
                             "install `soundfile` to read non-PCM WAV files.") from e


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError as e:
        raise ImportError(f"reading {path} needs the `soundfile` package (libsndfile): "
                          "pip install 'coda_flax[train]' or pip install soundfile") from e
    try:
        data, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.SoundFileError) as e:  # LibsndfileError: corrupt / unknown
        raise ValueError(f"cannot read audio file {path}: {e}") from e
    return data.mean(axis=1).astype(np.float32), int(sample_rate)


def read_audio(path: str, *, raw_sample_rate: Optional[int] = None) -> tuple[np.ndarray, int]:
    """Reads an audio file -> (float32 mono waveform in [-1, 1), sample_rate). Channels are
    averaged.

    .wav: stdlib `wave` (8-bit unsigned, 16/24/32-bit signed PCM; other encodings through
    soundfile); .raw / .pcm: headerless little-endian 16-bit mono PCM at raw_sample_rate (required;
    pocketsphinx test data is 16 kHz); .flac / .ogg: the `soundfile` package.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".wav":
        return _read_wav(path)
    if ext in RAW_EXTENSIONS:
        if not raw_sample_rate:
            raise ValueError(f"{path} is headerless PCM: pass raw_sample_rate= (e.g. 16000) to "
                             "read_audio.")
        with open(path, "rb") as f:
            data = f.read()
        return _pcm_to_float(data[: len(data) // 2 * 2], 2, 1), int(raw_sample_rate)
    if ext in SOUNDFILE_EXTENSIONS:
        return _read_soundfile(path)
    raise ValueError(f"unsupported audio format '{ext or '(no extension)'}' for {path}; "
                     f"read_audio supports .wav, {', '.join(RAW_EXTENSIONS)} (16-bit PCM with "
                     f"raw_sample_rate=) and {', '.join(SOUNDFILE_EXTENSIONS)} (soundfile).")


def load_waveform(path: str, sample_rate: int = SAMPLE_RATE, *,
                  raw_sample_rate: Optional[int] = None) -> np.ndarray:
    """read_audio + resample to sample_rate: float32 mono [samples]."""
    waveform, sr = read_audio(path, raw_sample_rate=raw_sample_rate)
    return resample(waveform, sr, sample_rate)


def write_wav(path: str, waveform, sample_rate: int = SAMPLE_RATE) -> str:
    """Writes a float waveform ([-1, 1], clipped) as 16-bit mono PCM WAV; returns path."""
    x = np.clip(np.asarray(waveform, np.float32).reshape(-1), -1.0, 32767.0 / 32768.0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(np.round(x * 32768.0).astype("<i2").tobytes())
    return path


__all__ = ["SAMPLE_RATE", "NUM_MEL_BINS", "hertz_to_mel", "mel_to_hertz", "mel_filterbank",
           "default_fft_length", "num_frames", "log_mel_spectrogram", "frame_features",
           "resample", "read_audio", "load_waveform", "write_wav"]
