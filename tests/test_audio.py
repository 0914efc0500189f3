"""coda_flax.frontends.audio: log-mel features against tf.signal (stft +
linear_to_mel_weight_matrix), the frame-index column, resampling and the audio readers (WAV 8/16-bit, raw PCM, FLAC), with files
the tests write themselves."""

import wave

import jax
import numpy as np
import pytest
import soundfile
import tensorflow as tf

from coda_flax.frontends import audio


def _tf_log_mel(x, sample_rate=16000, num_mel_bins=80, frame_length=400, frame_step=160,
                fft_length=512, lower=125.0, upper=7600.0, power=2.0, offset=1e-6):
    stft = tf.signal.stft(x, frame_length, frame_step, fft_length)  # periodic Hann, no pad_end
    weights = tf.signal.linear_to_mel_weight_matrix(num_mel_bins, fft_length // 2 + 1,
                                                    sample_rate, lower, upper)
    return np.log(np.matmul(np.abs(stft.numpy()) ** power, weights.numpy()) + offset)


@pytest.mark.parametrize("args", [
    dict(num_mel_bins=80, sample_rate=16000, lower=125.0, upper=7600.0, fft_length=512),
    dict(num_mel_bins=40, sample_rate=8000, lower=20.0, upper=4000.0, fft_length=256),
    dict(num_mel_bins=64, sample_rate=16000, lower=0.0, upper=8000.0, fft_length=1024),
])
def test_mel_filterbank_matches_tf(args):
    ours = audio.mel_filterbank(args["num_mel_bins"], args["fft_length"] // 2 + 1,
                                args["sample_rate"], args["lower"], args["upper"])
    ref = tf.signal.linear_to_mel_weight_matrix(
        args["num_mel_bins"], args["fft_length"] // 2 + 1, args["sample_rate"], args["lower"],
        args["upper"]).numpy()
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=5e-5)  # tf computes in float32, we in float64


def test_hertz_mel_round_trip():
    hz = np.array([0.0, 125.0, 1000.0, 7600.0])
    np.testing.assert_allclose(audio.mel_to_hertz(audio.hertz_to_mel(hz)), hz, atol=1e-9)
    assert abs(audio.hertz_to_mel(700.0) - 1127.0 * np.log(2.0)) < 1e-9


def test_log_mel_matches_tf_and_jits():
    rng = np.random.default_rng(0)
    t = np.arange(12345) / 16000.0
    x = np.stack([0.3 * np.sin(2 * np.pi * 440.0 * t), 0.1 * rng.normal(size=t.shape)])
    x = x.astype(np.float32)
    ref = _tf_log_mel(x)
    got = np.asarray(jax.jit(audio.log_mel_spectrogram)(x))
    assert got.shape == ref.shape == (2, 1 + (12345 - 400) // 160, 80)
    np.testing.assert_allclose(got, ref, atol=2e-3, rtol=1e-4)
    # magnitude spectrum, other framing
    ref1 = _tf_log_mel(x[1], frame_length=200, frame_step=80, fft_length=256, power=1.0)
    got1 = audio.log_mel_spectrogram(x[1], frame_length_ms=12.5, frame_step_ms=5.0, power=1.0)
    np.testing.assert_allclose(np.asarray(got1), ref1, atol=2e-3, rtol=1e-4)


def test_frame_features_layout():
    rng = np.random.default_rng(1)
    x = (0.1 * rng.normal(size=16000)).astype(np.float32)
    feats = audio.frame_features(x)
    assert feats.dtype == np.float32 and feats.shape == (98, 81) == (audio.num_frames(16000), 81)
    np.testing.assert_array_equal(feats[:, 0], np.arange(1, 99))
    np.testing.assert_allclose(feats[:, 1:], _tf_log_mel(x), atol=2e-3, rtol=1e-4)
    np.testing.assert_allclose(feats[:, 1:], np.asarray(audio.log_mel_spectrogram(x)),
                               atol=1e-4, rtol=1e-5)
    short = audio.frame_features(np.zeros(100, np.float32))  # shorter than one window
    assert short.shape == (1, 81) and short[0, 0] == 1.0
    assert audio.frame_features(x, num_mel_bins=40, frame_step_ms=20.0).shape == (49, 41)
    with pytest.raises(ValueError, match="mono"):
        audio.frame_features(np.zeros((2, 1000)))
    with pytest.raises(TypeError, match="unexpected"):
        audio.frame_features(x, lower_herz=10)


def test_default_fft_length():
    assert audio.default_fft_length(400) == 512
    assert audio.default_fft_length(512) == 512
    assert audio.default_fft_length(200) == 256


def test_resample():
    t8 = np.arange(8000) / 8000.0
    x = np.sin(2 * np.pi * 300.0 * t8).astype(np.float32)
    y = audio.resample(x, 8000, 16000)
    assert y.shape == (16000,) and y.dtype == np.float32
    t16 = np.arange(16000) / 16000.0
    inner = slice(200, -200)  # edges of the FIR filter
    np.testing.assert_allclose(y[inner], np.sin(2 * np.pi * 300.0 * t16)[inner], atol=2e-3)
    assert audio.resample(x, 8000, 8000) is not None and audio.resample(y, 16000, 22050).shape \
        == (22050,)
    with pytest.raises(ValueError):
        audio.resample(x, 0, 16000)


def _write_pcm_wav(path, data: bytes, sample_width, rate, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(sample_width)
        w.setframerate(rate)
        w.writeframes(data)


def test_read_wav_16_and_8_bit_and_stereo(tmp_path):
    x16 = np.array([0, 16384, -16384, 32767, -32768], "<i2")
    _write_pcm_wav(tmp_path / "a.wav", x16.tobytes(), 2, 8000)
    y, sr = audio.read_audio(str(tmp_path / "a.wav"))
    assert sr == 8000 and y.dtype == np.float32
    np.testing.assert_allclose(y, x16 / 32768.0)
    x8 = np.array([128, 192, 64, 255, 0], np.uint8)
    _write_pcm_wav(tmp_path / "b.wav", x8.tobytes(), 1, 11025)
    y, sr = audio.read_audio(str(tmp_path / "b.wav"))
    assert sr == 11025
    np.testing.assert_allclose(y, (x8.astype(np.float32) - 128) / 128)
    x32 = np.array([0, 1 << 30, -(1 << 31)], "<i4")
    _write_pcm_wav(tmp_path / "d.wav", x32.tobytes(), 4, 16000)
    np.testing.assert_allclose(audio.read_audio(str(tmp_path / "d.wav"))[0], [0.0, 0.5, -1.0])
    x24 = np.array([0, 1 << 22, -(1 << 23), (1 << 23) - 1], np.int64)
    raw24 = b"".join(int(v).to_bytes(3, "little", signed=True) for v in x24)
    _write_pcm_wav(tmp_path / "e.wav", raw24, 3, 16000)
    np.testing.assert_allclose(audio.read_audio(str(tmp_path / "e.wav"))[0], x24 / float(1 << 23))
    stereo = np.array([[1000, 3000], [-2000, 0]], "<i2")
    _write_pcm_wav(tmp_path / "c.wav", stereo.tobytes(), 2, 16000, channels=2)
    y, _ = audio.read_audio(str(tmp_path / "c.wav"))
    np.testing.assert_allclose(y, stereo.mean(axis=1) / 32768.0)


def test_write_wav_round_trip(tmp_path):
    x = np.linspace(-0.5, 0.5, 321).astype(np.float32)
    path = audio.write_wav(str(tmp_path / "sub" / "x.wav"), x, 16000)
    y, sr = audio.read_audio(path)
    assert sr == 16000
    np.testing.assert_allclose(y, x, atol=1 / 32768)


def test_read_raw_pcm(tmp_path):
    x = np.array([0, 100, -100, 32000], "<i2")
    (tmp_path / "x.raw").write_bytes(x.tobytes() + b"\x01")  # odd trailing byte ignored
    y, sr = audio.read_audio(str(tmp_path / "x.raw"), raw_sample_rate=16000)
    assert sr == 16000
    np.testing.assert_allclose(y, x / 32768.0)
    with pytest.raises(ValueError, match="raw_sample_rate"):
        audio.read_audio(str(tmp_path / "x.raw"))
    w = audio.load_waveform(str(tmp_path / "x.raw"), 8000, raw_sample_rate=16000)
    assert w.shape == (2,)


def test_read_flac(tmp_path):
    x = (0.25 * np.sin(np.arange(1600) / 5.0)).astype(np.float32)
    soundfile.write(str(tmp_path / "x.flac"), x, 16000, subtype="PCM_16")
    y, sr = audio.read_audio(str(tmp_path / "x.flac"))
    assert sr == 16000 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1 / 32768)


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        audio.read_audio(str(tmp_path / "missing.wav"))
    (tmp_path / "x.mp3").write_bytes(b"ID3")
    with pytest.raises(ValueError, match="unsupported audio format '.mp3'"):
        audio.read_audio(str(tmp_path / "x.mp3"))
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(ValueError, match="cannot read"):
        audio.read_audio(str(tmp_path / "bad.wav"))


def test_mel_filterbank_errors():
    with pytest.raises(ValueError, match="upper_hz"):
        audio.mel_filterbank(80, 257, 16000, 125.0, 9000.0)
    with pytest.raises(ValueError, match="fft_length"):
        audio.log_mel_spectrogram(np.zeros(1000, np.float32), fft_length=128)
