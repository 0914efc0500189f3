"""`coda bench`: JSON schema, FLOP column, table writer, CLI errors (no assertions on timings)."""

from __future__ import annotations

import argparse
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coda_flax import CodaConfig, EncoderDecoder, ModelConfig, tiny_config
from coda_flax import bench
from coda_flax.analysis import bench_report, synthetic
from coda_flax.cli import bench as bench_cli
from coda_flax.analysis.summary import abstract_params, flop_speedup

TINY = tiny_config()          # d 16, 4 heads (2 kv), 2 + 2 layers, vocab 64
FAST = dict(repeats=2, warmup=0, min_sample_seconds=0.0, settle=0)

ROW_KEYS = {"preset", "mode", "n", "r", "k", "attention", "num_heads", "num_kv_heads",
            "batch_size", "decode_length", "num_encoder_layers", "num_decoder_layers", "dtype",
            "statistic", "timer", "pa_seconds", "coda_seconds", "measured_speedup",
            "paired_speedup", "flop_speedup", "measured_over_flop", "pa_samples", "coda_samples",
            "pa_compile_seconds", "coda_compile_seconds",
            # schema 2: what the encoder reads, the preset's own depth, front end, paper
            "input", "head", "input_length", "audio_seconds", "preset_num_encoder_layers",
            "preset_num_decoder_layers", "input_flops", "flop_speedup_with_input",
            "paper_speedup",
            # the listed variant of each row (coda_flax/variants.py)
            "variant"}
TOP_KEYS = {"schema_version", "kind", "created", "jax_version", "jaxlib_version",
            "flax_version", "device", "settings", "rows", "soft_topk"}
DEVICE_KEYS = {"platform", "device_kind", "num_devices", "cpu_count", "load_average_start",
               "load_average_end"}


@pytest.fixture(scope="module")
def tiny_sweep():
    settings = bench.SweepSettings(presets=(TINY,), lengths=(12,), reductions=(1, 3),
                                   attentions=("k_to_all", "k_to_k"),
                                   modes=("encode", "generate"), batch_size=2, decode_length=3,
                                   num_layers=1, **FAST)
    return settings, bench.run_sweep(settings)


# ------------------------------------------------------------------------------------- sweep


def test_sweep_json_schema(tiny_sweep, tmp_path):
    settings, result = tiny_sweep
    path = bench_report.write_json(result, str(tmp_path / "out" / "bench.json"))
    loaded = json.load(open(path))                      # JSON-serialisable, round trips
    assert set(loaded) == TOP_KEYS
    assert loaded["schema_version"] == bench.SCHEMA_VERSION == 2
    assert loaded["kind"] == "coda_bench"
    assert loaded["jax_version"] == jax.__version__
    assert set(loaded["device"]) == DEVICE_KEYS
    assert loaded["device"]["platform"] == jax.devices()[0].platform
    assert isinstance(loaded["device"]["num_devices"], int)
    assert loaded["settings"]["lengths"] == [12] and loaded["settings"]["repeats"] == 2
    assert loaded["settings"]["presets"][0]["d_model"] == TINY.d_model   # a ModelConfig preset
    assert loaded["soft_topk"] is None

    rows = loaded["rows"]
    assert len(rows) == 2 * 2 * 2                        # r x attention x mode
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["preset"] == "custom"
        assert row["mode"] in bench.MODES and row["attention"] in ("k_to_all", "k_to_k")
        assert row["variant"] == {"k_to_all": "coda_k_to_all", "k_to_k": "coda_k_to_k"}[
            row["attention"]]
        assert row["n"] == 12 and row["k"] == math.ceil(12 / row["r"])
        assert row["batch_size"] == 2 and row["statistic"] == "median"
        assert row["timer"] == "wall"
        assert row["num_encoder_layers"] == 1 and row["num_decoder_layers"] == 1
        assert (row["num_heads"], row["num_kv_heads"]) == (4, 2)
        assert row["decode_length"] == (3 if row["mode"] == "generate" else None)
        assert (row["input"], row["head"], row["input_length"]) == ("tokens", "decoder", 12)
        assert row["audio_seconds"] is None and row["paper_speedup"] is None
        assert (row["preset_num_encoder_layers"], row["preset_num_decoder_layers"]) == (2, 2)
        assert row["input_flops"] == 0                     # token lookup: no front-end FLOPs
        assert row["flop_speedup_with_input"] == pytest.approx(row["flop_speedup"])
        for key in ("pa_seconds", "coda_seconds", "measured_speedup", "paired_speedup",
                    "flop_speedup",
                    "measured_over_flop", "pa_compile_seconds", "coda_compile_seconds"):
            assert isinstance(row[key], float) and row[key] > 0, key
        for key in ("pa_samples", "coda_samples"):
            assert len(row[key]) == 2 and all(isinstance(x, float) and x > 0 for x in row[key])
        assert row["pa_seconds"] == pytest.approx(float(np.median(row["pa_samples"])))
        assert row["measured_speedup"] == pytest.approx(row["pa_seconds"] / row["coda_seconds"])
        assert row["paired_speedup"] == pytest.approx(float(np.median(
            [p / c for p, c in zip(row["pa_samples"], row["coda_samples"])])))
        assert row["measured_over_flop"] == pytest.approx(
            row["measured_speedup"] / row["flop_speedup"])


def test_every_grid_row_names_what_ran_listed_or_derived():
    # attention x router is a grid: sigmoid with k-to-k is a listed variant (coda_sigmoid),
    # with k-to-all it is not, and gets the derived <router>_<attention> name
    settings = bench.SweepSettings(presets=(TINY,), lengths=(12,), reductions=(3,),
                                   attentions=("k_to_all", "k_to_k"), modes=("encode",),
                                   batch_size=2, num_layers=1, router="sigmoid", **FAST)
    rows = bench.run_sweep(settings)["rows"]
    assert {row["attention"]: row["variant"] for row in rows} == {
        "k_to_all": "sigmoid_k_to_all", "k_to_k": "coda_sigmoid"}


def test_flop_column_is_summary_flop_speedup(tiny_sweep):
    settings, result = tiny_sweep
    for row in result["rows"]:
        config = bench.bench_config(TINY, row["r"], row["attention"], num_layers=1)
        assert row["flop_speedup"] == flop_speedup(config, row["n"], row["r"], row["attention"])
        if row["r"] == 1:
            assert row["flop_speedup"] == 1.0
        else:
            assert row["flop_speedup"] > 1.0


def test_parallel_adapter_rows_time_the_pa_against_itself(tiny_sweep):
    _, result = tiny_sweep
    pa = [row for row in result["rows"] if row["r"] == 1]
    assert pa and all(row["k"] == row["n"] for row in pa)
    for mode in bench.MODES:   # r = 1 is the same model whatever the attention: timed once
        a, b = (row for row in pa if row["mode"] == mode)
        assert a["coda_samples"] == b["coda_samples"]


def test_plot_is_written(tiny_sweep, tmp_path):
    _, result = tiny_sweep
    path = bench_report.plot_speedups(result, str(tmp_path / "speedup.png"))
    assert path is not None and os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert bench_report.plot_speedups(dict(result, rows=[]), str(tmp_path / "none.png")) is None


def test_min_statistic_is_the_minimum_sample():
    settings = bench.SweepSettings(presets=(TINY,), lengths=(8,), reductions=(2,),
                                   attentions=("k_to_all",), modes=("encode",), num_layers=1,
                                   statistic="min", **FAST)
    logged = []
    (row,) = bench.run_sweep(settings, log=logged.append)["rows"]
    assert row["pa_seconds"] == min(row["pa_samples"])
    assert row["coda_seconds"] == min(row["coda_samples"])
    # progress only: the rows are printed once, by `coda bench`, when the run is done
    assert logged and not any("FLOP bound" in m or "meas/FLOP" in m for m in logged)


# ------------------------------------------------------------------------ configs and weights


def test_bench_config_depth_override_keeps_the_decoder_proportion():
    pa = bench.bench_config("paper_text_base", 1, num_layers=2)      # preset: 12 enc / 6 dec
    assert (pa.num_encoder_layers, pa.num_decoder_layers) == (2, 1)
    assert pa.coda.reduction == 1 and pa.coda.k(512) == 512           # the Parallel Adapter
    assert pa.coda.adapter_dim == 64 and pa.num_kv_heads == 1          # Table 7, MQA
    mha = bench.bench_config("t5_1_1_base", 3, "k_to_k", num_layers=2)  # 12 / 12, MHA
    assert (mha.num_encoder_layers, mha.num_decoder_layers) == (2, 2)
    assert mha.coda.attention == "k_to_k" and mha.coda.k(512) == 171
    assert mha.num_kv_heads == mha.num_heads == 12
    both = bench.bench_config("paper_text_base", 8, num_layers=3, num_decoder_layers=5)
    assert (both.num_encoder_layers, both.num_decoder_layers) == (3, 5)
    full = bench.bench_config("paper_text_base", 3)
    assert (full.num_encoder_layers, full.num_decoder_layers) == (12, 6)


def test_random_params_fit_pa_and_coda():
    config = bench.bench_config(TINY, 2, num_layers=1)
    params = synthetic.random_params(config, seed=0)
    expected = abstract_params(config)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
    for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
        assert got.shape == want.shape and got.dtype == want.dtype
    tokens = jnp.arange(2, 18, dtype=jnp.int32).reshape(2, 8)
    for r in (1, 2):
        model = EncoderDecoder(bench.bench_config(TINY, r, num_layers=1))
        out = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode"))(params, tokens)
        assert out.shape == (2, 8, TINY.d_model) and bool(jnp.all(jnp.isfinite(out)))
    again = synthetic.random_params(config, seed=0)
    assert all(bool(jnp.array_equal(a, b)) for a, b in
               zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)))


# ------------------------------------------------------------------------------ soft top-k


def test_soft_topk_json_schema(tmp_path):
    settings = bench.SoftTopkSettings(lengths=(16,), reductions=(1, 2), gradient_reduction=3,
                                      num_iters=20, preset=TINY, **FAST)
    result = bench.run_soft_topk(settings)
    loaded = json.load(open(bench_report.write_json(result, str(tmp_path / "soft_topk.json"))))
    assert set(loaded) == TOP_KEYS and loaded["rows"] == []
    soft = loaded["soft_topk"]
    assert set(soft) == {"settings", "gradients", "router_share"}
    assert soft["settings"]["num_iters"] == 20
    (g,) = soft["gradients"]
    assert set(g) == {"n", "k", "batch_size", "num_iters", "forward_seconds",
                      "implicit_grad_seconds", "unrolled_grad_seconds",
                      "soft_topk_implicit_temp_bytes", "soft_topk_unrolled_temp_bytes",
                      "router_implicit_temp_bytes", "router_unrolled_temp_bytes",
                      "soft_topk_memory_ratio", "router_memory_ratio"}
    assert (g["n"], g["k"], g["num_iters"]) == (16, 6, 20)
    for key in ("soft_topk", "router"):
        impl, unr = g[f"{key}_implicit_temp_bytes"], g[f"{key}_unrolled_temp_bytes"]
        if impl is not None and unr is not None:       # compiled memory, not a timing
            assert isinstance(impl, int) and isinstance(unr, int) and impl < unr
            assert g[f"{key}_memory_ratio"] == pytest.approx(impl / unr)
    (share,) = soft["router_share"]                    # r = 1 has no router: no row
    assert set(share) == {"preset", "n", "r", "k", "attention", "batch_size", "num_iters",
                          "layer_seconds", "router_seconds", "soft_topk_seconds",
                          "router_share", "soft_topk_share"}
    assert (share["n"], share["r"], share["k"]) == (16, 2, 8)
    assert share["router_share"] == pytest.approx(share["router_seconds"]
                                                  / share["layer_seconds"])
    text = bench_report.format_soft_topk_table(soft)
    assert "implicit vs unrolled" in text and "share of one CoDA layer" in text


# ------------------------------------------------------------------------------ table writer


def _row(**changes):
    row = {"preset": "paper_text_base", "mode": "encode", "n": 512, "r": 3, "k": 171,
           "attention": "k_to_all", "pa_seconds": 0.2, "coda_seconds": 0.08,
           "measured_speedup": 2.5, "paired_speedup": 2.4, "flop_speedup": 2.845,
           "measured_over_flop": 2.5 / 2.845}
    row.update(changes)
    return row


def test_format_table():
    rows = [_row(), _row(n=4096, r=8, k=512, attention="k_to_k", pa_seconds=3.5,
                         coda_seconds=0.5, measured_speedup=7.0, paired_speedup=None,
                         flop_speedup=7.3, measured_over_flop=7.0 / 7.3), _row(r=1.5, k=342)]
    lines = bench_report.format_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0].split() == ["preset", "mode", "n", "r", "k", "attention", "PA", "ms",
                                "CoDA", "ms", "speedup", "paired", "FLOP", "bound", "meas/FLOP"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["paper_text_base", "encode", "512", "3", "171", "k_to_all",
                                "200.00", "80.00", "2.500", "2.400", "2.845", "0.879"]
    assert lines[3].split()[2:6] == ["4096", "8", "512", "k_to_k"]
    assert lines[3].split()[6:] == ["3500.00", "500.00", "7.000", "-", "7.300", "0.959"]
    assert lines[4].split()[3] == "1.5"
    assert len({len(line) for line in lines[:2]}) == 1          # aligned columns
    assert bench_report.format_table(rows, header=False).splitlines() == lines[2:]


# ------------------------------------------------------------------------------------- CLI


def _parser():
    return bench_cli.configure_parser(argparse.ArgumentParser(prog="coda bench"))


@pytest.mark.parametrize("argv, message", [
    (["--presets", "t5_huge"], "unknown preset 't5_huge'"),
    (["--presets", "paper_text_base,nope"], "unknown preset 'nope'"),
    (["--reductions", "0.5"], "reduction r must be >= 1"),
    (["--reductions", "1,3,0"], "reduction r must be >= 1"),
    (["--reductions", "three"], "reduction must be a number"),
    (["--lengths", "0"], "length n must be an integer >= 1"),
    (["--lengths", "512,-4"], "length n must be an integer >= 1"),
    (["--lengths", "1e3"], "length n must be an integer >= 1"),
    (["--lengths", ","], "empty list"),
    (["--attention", "k_to_some"], "unknown attention"),
    (["--modes", "train"], "unknown mode"),
    (["--batch-size", "0"], "batch size must be an integer >= 1"),
    (["--decode-length", "-1"], "decode length must be an integer >= 1"),
    (["--statistic", "mean"], "unknown statistic"),
    (["--timer", "gpu"], "unknown timer"),
    (["--settle", "-1"], "expected an integer >= 0"),
])
def test_cli_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_defaults():
    args = _parser().parse_args([])
    assert args.presets == ("paper_text_base",)
    assert args.reductions == (1, 2, 3, 4, 5, 8, 16, 32)
    assert args.lengths == (128, 256, 512, 1024, 2048, 4096)
    assert args.attention == ("k_to_all", "k_to_k") and args.modes == ("encode", "generate")
    assert args.func is bench_cli.bench_main and not args.soft_topk
    args = _parser().parse_args(["--reductions", "1,2.5,8", "--lengths", "512,4096",
                                 "--presets", "t5_1_1_base,paper_text_base"])
    assert args.reductions == (1, 2.5, 8) and args.lengths == (512, 4096)
    assert args.presets == ("t5_1_1_base", "paper_text_base")


def test_coda_cli_has_bench(capsys):
    from coda_flax.cli import build_parser
    args = build_parser().parse_args(["bench", "--lengths", "512", "--reductions", "1,3"])
    assert args.func is bench_cli.bench_main and args.reductions == (1, 3)
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "--reductions", "0"])
    assert exc.value.code == 2 and "reduction r must be >= 1" in capsys.readouterr().err


def test_settings_validation():
    with pytest.raises(ValueError, match="unknown preset"):
        bench.SweepSettings(presets=("t5_huge",))
    with pytest.raises(ValueError, match="reduction r must be"):
        bench.SweepSettings(reductions=(1, 0.5))
    with pytest.raises(ValueError, match="sequence length n"):
        bench.SweepSettings(lengths=(512, 0))
    with pytest.raises(ValueError, match="at least one"):
        bench.SweepSettings(reductions=())
    with pytest.raises(ValueError, match="unknown mode"):
        bench.SweepSettings(modes=("train",))
    with pytest.raises(ValueError, match="unknown preset"):
        bench.SoftTopkSettings(preset="nope")
    with pytest.raises(ValueError, match="num_iters"):
        bench.SoftTopkSettings(num_iters=0)


def test_bench_main_writes_json_plot_and_table(tmp_path, monkeypatch, capsys):
    canned = {"schema_version": 1, "kind": "coda_bench", "device": {
                  "platform": "cpu", "device_kind": "cpu", "num_devices": 1, "cpu_count": 2,
                  "load_average_start": None, "load_average_end": None},
              "jax_version": jax.__version__, "settings": {"statistic": "median", "repeats": 1},
              "rows": [_row(), _row(r=1, k=512, flop_speedup=1.0, measured_speedup=1.0,
                                    measured_over_flop=1.0)], "soft_topk": None}
    seen = {}

    def fake_run_sweep(settings, backend=None, log=None):
        seen["settings"] = settings
        return canned
    monkeypatch.setattr(bench, "run_sweep", fake_run_sweep)
    out = tmp_path / "bench_out"
    args = _parser().parse_args(["--lengths", "512", "--reductions", "1,3", "--num-layers", "2",
                                 "--modes", "encode", "--output", str(out), "--quiet"])
    assert bench_cli.bench_main(args) == 0
    assert seen["settings"].num_layers == 2 and seen["settings"].reductions == (1, 3)
    assert json.load(open(out / "bench.json"))["rows"] == canned["rows"]
    assert (out / "speedup.png").exists()
    printed = capsys.readouterr().out
    assert "FLOP bound" in printed and "2.845" in printed and "bench.json" in printed
    assert printed.startswith(f"coda bench: writes {out / 'bench.json'} and "
                              f"{out / 'speedup.png'}\n")
    assert printed.count("FLOP bound") == 1                # the rows once
