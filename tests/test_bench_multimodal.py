"""`coda bench` for image (patches) and audio (frames) models: the random inputs' layout, the
JSON rows of both modes, encoder lengths after subsampling, the front-end FLOPs, the paper's
speedups, the table / notes / plot and the CLI flags (no assertions on timings)."""

from __future__ import annotations

import argparse
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coda_flax import bench
from coda_flax.analysis import bench_report, summary, synthetic
from coda_flax.cli import bench as bench_cli
from coda_flax.config import ModelConfig, tiny_config
from coda_flax.analysis.summary import flop_speedup

FAST = dict(repeats=2, warmup=0, min_sample_seconds=0.0, settle=0)
# d 16, 4 heads (2 kv), 2 + 2 layers; 2x2 RGB patches, 3 x 4 grids at 12 patches.
PATCHES = tiny_config(encoder_input="patches", patch_size=2, num_channels=3,
                      max_patch_positions=16, encoder_relative_attention=False)
# 8 log-mel bins, 4-channel conv subsampling, CTC head over 29 ids, no decoder.
FRAMES = tiny_config(encoder_input="frames", num_mel_bins=8, conv_channels=4, head="ctc",
                     num_decoder_layers=0, vocab_size=29, mlp_activations=("swish",))


def _sweep(config, **kw):
    settings = bench.SweepSettings(presets=(config,), reductions=(1, 3),
                                   attentions=("k_to_all",), modes=("encode", "generate"),
                                   batch_size=2, decode_length=3, num_layers=1, **kw, **FAST)
    return bench.run_sweep(settings)


@pytest.fixture(scope="module")
def patch_sweep():
    return _sweep(PATCHES, lengths=(12,))


@pytest.fixture(scope="module")
def frame_sweep():
    return _sweep(FRAMES, lengths=(40,))


# ------------------------------------------------------------------------------------ inputs


def test_patch_grid_shape():
    assert synthetic.patch_grid_shape(1024) == (32, 32)
    assert synthetic.patch_grid_shape(2048) == (32, 64)
    assert synthetic.patch_grid_shape(4096) == (64, 64)
    assert synthetic.patch_grid_shape(12) == (3, 4)
    assert synthetic.patch_grid_shape(7) == (1, 7)
    with pytest.raises(ValueError):
        synthetic.patch_grid_shape(0)


def test_random_inputs_layout():
    rng = np.random.default_rng(0)
    x = synthetic.random_inputs(PATCHES, 2, 12, rng)
    assert x.shape == (2, 12, 2 + 2 * 2 * 3) and x.dtype == np.float32
    for b in range(2):                               # full 3 x 4 grid, row-major, 1-based
        np.testing.assert_array_equal(x[b, :, 0], [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
        np.testing.assert_array_equal(x[b, :, 1], [1, 2, 3, 4] * 3)
    assert x[..., 2:].std() > 0.5                    # random pixels
    f = synthetic.random_inputs(FRAMES, 2, 40, rng)
    assert f.shape == (2, 40, 9) and f.dtype == np.float32
    np.testing.assert_array_equal(f[1, :, 0], np.arange(1, 41))      # every frame real
    t = synthetic.random_inputs(tiny_config(), 2, 12, rng)
    assert t.shape == (2, 12) and t.dtype == np.int32 and t.min() >= 2 and t.max() < 64


def test_audio_seconds_to_frames():
    # 16 kHz, 25 ms windows every 10 ms, no end padding (coda_flax.frontends.audio.frame_features).
    assert bench.audio_frames(10) == 998 and bench.audio_frames(30) == 2998
    assert bench.audio_frames(0.025) == 1
    assert bench.frames_seconds(998) == pytest.approx(9.995)
    assert bench.audio_frames(bench.frames_seconds(2998)) == 2998
    from coda_flax.inputs import encoder_length
    speech = ModelConfig.from_preset("speech_base")
    assert encoder_length(speech, bench.audio_frames(10)) == 250
    assert encoder_length(speech, bench.audio_frames(30)) == 750
    for bad in (0, 0.01, -1, float("nan"), True):
        with pytest.raises(ValueError, match="seconds"):
            bench.audio_frames(bad)
    from coda_flax.frontends import audio
    for seconds in (0.025, 1.0, 10, 30):
        assert bench.audio_frames(seconds) == audio.num_frames(round(seconds * 16000))


def test_input_flops_match_xla_and_hand_count():
    from coda_flax.inputs import ConvSubsampling, PatchEmbedder

    # Hand count for FRAMES at T = 40: T1 = 20, F1 = 4, T2 = 10, F2 = 2, C = 4, d = 16.
    assert summary.input_flops(FRAMES, 40) == 2 * 9 * 4 * 20 * 4 + 2 * 9 * 16 * 10 * 2 \
        + 2 * 10 * 2 * 4 * 16
    assert summary.input_flops(PATCHES, 12) == 2 * 12 * 12 * 16
    assert summary.input_flops(tiny_config(), 512) == 0
    # XLA's count adds the elementwise work (relu, masks, position adds) and leaves out the
    # convolution taps that fall on "SAME" padding: within 10% at 80 mel bins.
    cases = ((ConvSubsampling, FRAMES.replace(conv_channels=16, num_mel_bins=80), 64),
             (PatchEmbedder, PATCHES.replace(patch_size=4), 12))
    for module, config, length in cases:
        from coda_flax.inputs import input_shape
        m = module(config)
        x = jnp.ones(input_shape(config, 1, length))
        p = m.init(jax.random.key(0), x)
        cost = jax.jit(lambda p, x: m.apply(p, x)).lower(p, x).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if not cost or "flops" not in cost:
            # XLA:CPU (the test machines) reports FLOPs: only another backend may lack them.
            assert jax.default_backend() != "cpu", "XLA:CPU gave no cost analysis"
            pytest.skip(f"the {jax.default_backend()} backend gives no cost analysis")
        ours = summary.input_flops(config, length)
        assert 0.9 * ours <= cost["flops"] <= 1.1 * ours, (module.__name__, ours,
                                                          cost["flops"])


def test_bench_config_keeps_input_and_head():
    pix = bench.bench_config("pix2struct", 8, num_layers=3)     # 18 / 6: kept at 3 / 1
    assert (pix.num_encoder_layers, pix.num_decoder_layers) == (3, 1)
    assert pix.encoder_input == "patches" and not pix.encoder_relative_attention
    assert pix.coda.adapter_dim == 256 and pix.coda.k(4096) == 512
    speech = bench.bench_config("speech_base", 4, num_layers=2)
    assert (speech.num_encoder_layers, speech.num_decoder_layers) == (2, 0)
    assert speech.head == "ctc" and speech.encoder_input == "frames"
    assert speech.coda.adapter_dim == 256 and speech.coda.epsilon == 1.0
    assert bench.bench_config(FRAMES, 3, num_layers=1).num_decoder_layers == 0


def test_random_params_of_a_ctc_model():
    config = bench.bench_config(FRAMES, 2, num_layers=1)
    params = synthetic.random_params(config, seed=0)
    sub = params["encoder"]["subsampling"]
    assert set(sub) == {"conv_0", "conv_1", "input_projection"}
    assert not np.asarray(sub["conv_1"]["bias"]).any()                # conv biases at zero
    kernel = np.asarray(sub["conv_1"]["kernel"])                        # [3, 3, 4, 4]
    assert kernel.std() == pytest.approx(1 / math.sqrt(3 * 3 * 4), rel=0.3)
    assert "ctc_logits" in params and "router" in params["encoder"]["layers_0"]


# ------------------------------------------------------------------------------------ sweeps


def _check_common(row, rows_r):
    assert row["k"] == math.ceil(row["n"] / row["r"])
    config = bench.bench_config(rows_r[0], row["r"], row["attention"], num_layers=1)
    assert row["flop_speedup"] == flop_speedup(config, row["n"], row["r"], row["attention"])
    assert row["measured_over_flop"] == pytest.approx(row["measured_speedup"]
                                                      / row["flop_speedup"])
    for key in ("pa_seconds", "coda_seconds", "measured_speedup", "paired_speedup"):
        assert isinstance(row[key], float) and row[key] > 0
    if row["r"] == 1:
        assert row["flop_speedup"] == row["flop_speedup_with_input"] == 1.0
    else:      # the shared front end pulls the bound towards 1
        assert 1.0 < row["flop_speedup_with_input"] < row["flop_speedup"]
    assert row["paper_speedup"] is None


def test_patch_sweep_rows(patch_sweep, tmp_path):
    result = json.load(open(bench_report.write_json(patch_sweep, str(tmp_path / "bench.json"))))
    assert result["schema_version"] == 2
    rows = result["rows"]
    assert len(rows) == 2 * 2                                   # r x mode
    assert {r["mode"] for r in rows} == {"encode", "generate"}
    for row in rows:
        assert (row["input"], row["head"], row["input_length"], row["n"]) == (
            "patches", "decoder", 12, 12)
        assert row["audio_seconds"] is None
        assert row["decode_length"] == (3 if row["mode"] == "generate" else None)
        assert (row["num_encoder_layers"], row["num_decoder_layers"]) == (1, 1)
        assert (row["preset_num_encoder_layers"], row["preset_num_decoder_layers"]) == (2, 2)
        assert row["input_flops"] == summary.input_flops(PATCHES, 12)
        _check_common(row, [PATCHES])


def test_frame_sweep_rows_use_the_subsampled_length(frame_sweep):
    rows = frame_sweep["rows"]
    assert len(rows) == 2 * 2
    for row in rows:
        assert (row["input"], row["head"], row["input_length"]) == ("frames", "ctc", 40)
        assert row["n"] == 10                                    # ceil(ceil(40 / 2) / 2)
        assert row["audio_seconds"] == pytest.approx(bench.frames_seconds(40))
        assert row["decode_length"] is None                     # CTC: no decoder steps
        assert (row["num_encoder_layers"], row["num_decoder_layers"]) == (1, 0)
        assert row["input_flops"] == summary.input_flops(FRAMES, 40)
        _check_common(row, [FRAMES])


def test_ctc_generate_is_the_per_frame_argmax():
    from coda_flax.model import EncoderCtc

    config = bench.bench_config(FRAMES, 3, num_layers=1)
    params = synthetic.random_params(config, seed=1)
    x = synthetic.random_inputs(config, 1, 40, np.random.default_rng(0))
    x[0, 30:] = 0                                                # padded frames
    out = np.asarray(bench._generate_fn(config)(params, x))
    logits, mask = EncoderCtc(config).apply({"params": params}, x)
    assert out.shape == (1, 10) and not np.asarray(mask)[0, 8:].any()
    np.testing.assert_array_equal(out, np.where(mask, np.argmax(logits, -1), 0))


def test_audio_seconds_setting(monkeypatch):
    settings = bench.SweepSettings(presets=("speech_base",), audio_seconds=(10, 30))
    pa = bench.bench_config("speech_base", 1)
    assert bench._input_lengths(pa, settings) == [(998, 10.0), (2998, 30.0)]
    text = bench.bench_config("paper_text_base", 1)            # lengths for the others
    assert bench._input_lengths(text, settings)[0] == (128, None)
    with pytest.raises(ValueError, match="speech presets"):
        bench.SweepSettings(presets=("pix2struct",), audio_seconds=(10,))
    with pytest.raises(ValueError, match="seconds"):
        bench.SweepSettings(presets=("speech_base",), audio_seconds=(0.001,))


# ------------------------------------------------------------------------------------ paper


def test_paper_speedups():
    assert bench.paper_speedup("pix2struct", "generate", 4096, 8, "k_to_all") == 8.0
    assert bench.paper_speedup("pix2struct", "generate", 4096, 16.0, "k_to_all") == 13.5
    assert bench.paper_speedup("pix2struct", "generate", 4096, 32, "k_to_all") == 19.4
    assert bench.paper_speedup("pix2struct", "generate", 4096, 4, "k_to_all") == 4.6
    for args in (("encode", 4096, 8, "k_to_all"), ("generate", 2048, 8, "k_to_all"),
                 ("generate", 4096, 8, "k_to_k"), ("generate", 4096, 1, "k_to_all"),
                 ("generate", 4096, 3, "k_to_all")):
        assert bench.paper_speedup("pix2struct", *args) is None
    assert bench.paper_speedup("paper_text_base", "generate", 4096, 8, "k_to_all") is None
    assert bench.paper_speedup(PATCHES, "generate", 4096, 8, "k_to_all") is None


def test_paper_speedups_match_configs_table6():
    from coda_flax.configs import table6
    quoted = {row["reduction"]: row["paper"]["ocrvqa_speedup"] for row in table6.ROWS
              if row["reduction"] is not None}
    assert bench.PAPER_SPEEDUPS["pix2struct"]["speedups"] == quoted


# ------------------------------------------------------------------------ table, notes, plot


def _row(**changes):
    row = {"preset": "pix2struct", "mode": "generate", "input": "patches", "head": "decoder",
           "input_length": 4096, "audio_seconds": None, "n": 4096, "r": 8, "k": 512,
           "attention": "k_to_all", "pa_seconds": 20.0, "coda_seconds": 2.0,
           "measured_speedup": 10.0, "paired_speedup": 9.5, "flop_speedup": 9.3,
           "measured_over_flop": 10.0 / 9.3, "flop_speedup_with_input": 9.1,
           "paper_speedup": 8.0, "num_encoder_layers": 3, "num_decoder_layers": 1,
           "preset_num_encoder_layers": 18, "preset_num_decoder_layers": 6}
    row.update(changes)
    return row


def test_table_columns_for_images_and_audio():
    rows = [_row(), _row(n=1024, input_length=1024, k=128, paper_speedup=None),
            _row(preset="speech_base", input="frames", head="ctc", input_length=2998,
                 audio_seconds=30.0, n=750, r=4, k=188, paper_speedup=None,
                 num_decoder_layers=0, preset_num_decoder_layers=0,
                 preset_num_encoder_layers=31, num_encoder_layers=2)]
    lines = bench_report.format_table(rows).splitlines()
    assert lines[0].split() == ["preset", "mode", "input", "audio", "s", "n", "r", "k",
                                "attention", "PA", "ms", "CoDA", "ms", "speedup", "paired",
                                "FLOP", "bound", "meas/FLOP", "bound+input", "paper"]
    assert lines[2].split() == ["pix2struct", "generate", "4096", "patches", "-", "4096", "8",
                                "512", "k_to_all", "20000.00", "2000.00", "10.000", "9.500",
                                "9.300", "1.075", "9.100", "8.0"]
    assert lines[3].split()[-1] == "-"                       # no paper figure at n = 1024
    assert lines[4].split()[:7] == ["speech_base", "generate", "2998", "frames", "30", "750",
                                    "4"]
    # Images only: no audio column; no paper figures: no paper column.
    only = bench_report.format_table([_row(paper_speedup=None)]).splitlines()[0].split()
    assert "audio" not in only and "paper" not in only and "bound+input" in only
    notes = bench_report.format_notes(rows)
    assert "pix2struct timed with 3 of its 18 encoder layers and 1 of its 6 decoder" in notes
    assert "speech_base timed with 2 of its 31 encoder layers (" in notes
    assert "Table 6 (OCR-VQA)" in notes and "4x conv subsampling" in notes
    assert bench_report.format_notes([_row(num_encoder_layers=18, num_decoder_layers=6,
                                    paper_speedup=None, input="tokens")]) == ""
    # Schema 1 rows (no input keys) still print as text rows.
    old = {k: v for k, v in _row(preset="paper_text_base").items()
           if k in ("preset", "mode", "n", "r", "k", "attention", "pa_seconds", "coda_seconds",
                    "measured_speedup", "paired_speedup", "flop_speedup",
                    "measured_over_flop")}
    assert bench_report.format_table([old]).splitlines()[0].split()[2] == "n"
    assert bench_report.format_notes([old]) == ""


def test_plot_with_paper_stars(tmp_path):
    rows = [_row(r=r, paper_speedup=p, measured_speedup=m, flop_speedup=f)
            for r, p, m, f in ((1, None, 1.0, 1.0), (8, 8.0, 7.0, 7.5), (16, 13.5, 11.0, 13.0))]
    rows += [_row(preset="speech_base", input="frames", input_length=998, audio_seconds=10.0,
                  n=250, r=r, paper_speedup=None) for r in (1, 2, 4)]
    result = {"rows": rows, "device": {"platform": "cpu"},
              "settings": {"statistic": "median", "repeats": 3}}
    path = bench_report.plot_speedups(result, str(tmp_path / "speedup.png"))
    assert path and os.path.getsize(path) > 1000


# --------------------------------------------------------------------------------------- CLI


def _parser():
    return bench_cli.configure_parser(argparse.ArgumentParser(prog="coda bench"))


def test_cli_accepts_the_new_presets_and_audio_seconds():
    args = _parser().parse_args(["--presets", "pix2struct,speech_base,speech_xl",
                                 "--audio-seconds", "10,30,2.5"])
    assert args.presets == ("pix2struct", "speech_base", "speech_xl")
    assert args.audio_seconds == (10, 30, 2.5)
    assert _parser().parse_args([]).audio_seconds is None


@pytest.mark.parametrize("argv, message", [
    (["--audio-seconds", "0.01"], "one 25 ms frame"),
    (["--audio-seconds", "ten"], "audio duration must be a number"),
    (["--audio-seconds", ","], "empty list"),
])
def test_cli_audio_seconds_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bench_main_passes_audio_seconds_and_prints_notes(tmp_path, monkeypatch, capsys):
    seen = {}
    canned = {"schema_version": 2, "kind": "coda_bench", "jax_version": jax.__version__,
              "device": {"platform": "cpu", "device_kind": "cpu", "num_devices": 1,
                         "cpu_count": 2, "load_average_start": None, "load_average_end": None},
              "settings": {"statistic": "median", "repeats": 1},
              "rows": [_row(preset="speech_base", input="frames", head="ctc",
                            input_length=998, audio_seconds=10.0, n=250, r=2, k=125,
                            paper_speedup=None, num_encoder_layers=2, num_decoder_layers=0,
                            preset_num_encoder_layers=31, preset_num_decoder_layers=0)],
              "soft_topk": None}

    def fake_run_sweep(settings, backend=None, log=None):
        seen["settings"] = settings
        return canned
    monkeypatch.setattr(bench, "run_sweep", fake_run_sweep)
    args = _parser().parse_args(["--presets", "speech_base", "--audio-seconds", "10",
                                 "--reductions", "1,2", "--num-layers", "2", "--no-plot",
                                 "--output", str(tmp_path), "--quiet"])
    assert bench_cli.bench_main(args) == 0
    assert seen["settings"].audio_seconds == (10,)
    out = capsys.readouterr().out
    assert "998 frames" in out and "2 of its 31 encoder layers" in out
    args = _parser().parse_args(["--presets", "pix2struct", "--audio-seconds", "10",
                                 "--output", str(tmp_path), "--quiet"])
    assert bench_cli.bench_main(args) == 2
    assert "speech presets" in capsys.readouterr().err
