"""coda_flax.analysis.routing_report as a library: arrays in (token ids, a waveform), the
decisions, statistics and record out, checked against the sown intermediates and numpy."""

import json
import math

import jax
import numpy as np
import pytest

from coda_flax.analysis import routing_report as report
from coda_flax.analysis.synthetic import (random_init_config, random_init_params,
                                          synthetic_utterance)
from coda_flax.model import build_module


@pytest.fixture(scope="module")
def text_model():
    config = random_init_config("tiny", reduction=3)
    return config, random_init_params(config, seed=1)


def _sown(config, params, inputs):
    _, state = build_module(config).apply({"params": params}, inputs, method="encode",
                                          mutable=["intermediates"])
    return state["intermediates"]["encoder"]


def test_text_report_from_ids(text_model, tmp_path):
    config, params = text_model
    ids = [5, 9, 11, 7, 3, 20, 31, 1]                          # 8 real tokens, padded to 12
    inp = report.EncoderInput("tokens", np.array(ids + [0] * 4, np.int32),
                              [str(i) for i in ids + [0] * 4], {"token_ids": ids + [0] * 4})
    rep = report.routing_report(config, params, inp, layers=[1], source={"test": 1})
    assert (rep.n, rep.k, rep.layers) == (12, 4, [1])
    sown = _sown(config, params, jax.numpy.asarray(inp.values[None]))["layers_1"]
    want = np.zeros(12, bool)
    want[np.asarray(sown["router_indices"][0][0])] = True
    np.testing.assert_array_equal(rep.selected[0], want)
    np.testing.assert_allclose(rep.lam[0], np.asarray(sown["router_lam"][0][0]), atol=1e-6)
    assert not want[8:].any()                                 # padding is never routed
    # Statistics of one layer by hand: coverage = routed real / real tokens.
    assert rep.statistics["coverage"] == pytest.approx(4 / 8)
    assert rep.statistics["never_routed"] == 4 and rep.statistics["always_routed"] == 4
    files = report.write_report(rep, str(tmp_path), "t")
    record = json.load(open(files["decisions"]))
    assert list(record)[:2] == ["source", "token_ids"] and record["source"] == {"test": 1}
    assert record["layers"][0]["selected"] == want.astype(int).tolist()
    assert record["model_config"]["d_model"] == config.d_model
    lines = report.summary_lines(rep, "t")
    assert lines[0].startswith("t: r = 3, k = 4 of n = 12; 8 real tokens")


def test_batch_report_evidence_and_ink_by_numpy(text_model):
    config, params = text_model
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 60, size=(2, 12)).astype(np.int32)
    tokens[1, 9:] = 0                                            # 9 real tokens in row 1
    ink = np.zeros((2, 12), bool)
    ink[:, :3] = True
    out = report.batch_report(config, params, tokens, ink=ink, spans=[(0, 4), (2, 3)])
    sown = _sown(config, params, jax.numpy.asarray(tokens))
    selected = np.zeros((config.num_encoder_layers, 2, 12), bool)
    for i in range(config.num_encoder_layers):
        for b in range(2):
            selected[i, b, np.asarray(sown[f"layers_{i}"]["router_indices"][0][b])] = True
    np.testing.assert_array_equal(out["decisions"]["selected"], selected)
    valid = tokens > 0
    evidence = np.zeros((2, 12), bool)
    evidence[0, 0:4] = evidence[1, 2:3] = True
    routed = selected & valid
    share = ((routed & evidence).sum(-1) / routed.sum(-1)).mean(-1)
    np.testing.assert_allclose(out["evidence"]["routed_evidence_share"], share)
    assert out["evidence"]["chance"] == pytest.approx((4 / 12 + 1 / 9) / 2)
    # ink: every page's patches pooled; 6 of the 21 real positions hold ink
    assert out["ink"]["page_ink_share"] == pytest.approx(6 / 21)
    assert out["ink"]["routed"] == routed.sum((1, 2)).tolist()
    np.testing.assert_allclose(out["ink"]["routed_ink_share"],
                               (routed & ink).sum((1, 2)) / routed.sum((1, 2)))
    assert set(report.batch_report(config, params, tokens)) == {"decisions"}


def test_text_input_random_ids_and_errors(text_model):
    config, _ = text_model
    a = report.text_input(config, length=10, seed=3)
    b = report.text_input(config, length=10, seed=3)
    assert a.values.shape == (10,) and (a.values >= 3).all() and a.labels == [
        str(i) for i in a.values]
    np.testing.assert_array_equal(a.values, b.values)
    with pytest.raises(ValueError, match="not found"):
        report.text_input(config, "hello", "/nonexistent/spm.model")
    with pytest.raises(ValueError, match="out of range"):
        report.parse_layers("0,2", 2)
    with pytest.raises(ValueError, match="reads tokens"):
        report.routing_report(config, {}, report.EncoderInput(
            "frames", np.zeros((8, 81), np.float32), None, {}))


def test_audio_report_from_a_waveform():
    config = random_init_config("tiny_speech", reduction=4)
    params = random_init_params(config, seed=0)
    wave = synthetic_utterance(0.5, seed=4)
    inp = report.audio_input(config, wave, description="array", max_seconds=0.25)
    assert inp.record["num_frames"] == 23 and inp.record["seconds"] == pytest.approx(0.25)
    rep = report.routing_report(config, params, inp)
    n = math.ceil(math.ceil(23 / 2) / 2)                      # two stride-2 convolutions
    assert (rep.n, rep.k) == (n, math.ceil(n / 4))
    assert (rep.selected.sum(axis=1) == rep.k).all()
    assert "routed, at s =" in report.summary_lines(rep, "a")[1]
