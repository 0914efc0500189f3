"""coda_flax.viz / `coda visualize`: routing decisions read back from the sown intermediates,
statistics on a hand-built case, the PNG / HTML files, and the CLI's errors."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest

from coda_flax import CodaConfig, EncoderDecoder, tiny_config
from coda_flax import viz
from coda_flax.viz_cli import (add_visualize_parser, dump_json, parse_layers,
                                random_init_params)

R = 3


@pytest.fixture(scope="module")
def model():
    config = tiny_config(CodaConfig(reduction=R, adapter_dim=4))      # = `--preset tiny`
    return config, random_init_params(config, seed=0)


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    t = rng.integers(3, 64, size=(2, 12)).astype(np.int32)
    t[0, 9:] = 0                          # row 0: 9 real tokens + 3 padding; k = 4 <= 9
    return t


@pytest.fixture(scope="module")
def decisions(model, tokens):
    config, params = model
    return viz.routing_decisions(config, params, tokens)


def _image(path):
    import matplotlib.image
    return matplotlib.image.imread(path)


def _cli(argv):
    import argparse
    parser = argparse.ArgumentParser(prog="coda")
    add_visualize_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["visualize", *argv])
    return args.func(args)


# --------------------------------------------------------------------------------- decisions


def test_routing_decisions_agree_with_the_intermediates(model, tokens, decisions):
    config, params = model
    _, state = jax.jit(lambda p, t: EncoderDecoder(config).apply(
        {"params": p}, t, method="encode", mutable=["intermediates"]))(params, tokens)
    b, n = tokens.shape
    k = math.ceil(n / R)
    assert (decisions["n"], decisions["k"]) == (n, k)
    assert decisions["indices"].shape == (2, b, k)
    assert decisions["lam"].shape == decisions["selected"].shape == (2, b, n)
    for i in range(config.num_encoder_layers):
        layer = state["intermediates"]["encoder"][f"layers_{i}"]
        np.testing.assert_array_equal(decisions["indices"][i], layer["router_indices"][0])
        np.testing.assert_allclose(decisions["lam"][i], layer["router_lam"][0], rtol=1e-6,
                                   atol=1e-7)
    sel = decisions["selected"]
    np.testing.assert_array_equal(sel.sum(-1), np.full((2, b), k))      # ceil(n / r) per row
    assert not (sel & ~decisions["valid"][None]).any()                   # never padding
    np.testing.assert_array_equal(decisions["valid"], tokens > 0)
    assert (np.diff(decisions["indices"], axis=-1) > 0).all()            # ascending, distinct
    np.testing.assert_allclose(decisions["weights"],
                               np.take_along_axis(decisions["lam"], decisions["indices"], 2))
    stats = viz.routing_statistics(sel[:, 0], decisions["valid"][0])
    assert stats["padding_share"] == 0.0 and stats["padding_routed"] == 0


def test_routing_decisions_refuse_models_that_route_nothing(model, tokens):
    _, params = model
    for config in (tiny_config(None), tiny_config(CodaConfig(reduction=1, adapter_dim=4))):
        with pytest.raises(ValueError, match="nothing is routed"):
            viz.routing_decisions(config, params, tokens)
    with pytest.raises(ValueError, match="vocab_size"):
        viz.routing_decisions(model[0], params, np.array([[5, 64, 3]]))


def test_routing_statistics_on_a_hand_built_case():
    #            pos: 0  1  2  3  4  5(pad)
    sel = np.array([[1, 1, 0, 0, 0, 0],
                    [1, 0, 1, 0, 0, 0],
                    [1, 1, 0, 0, 0, 1]], bool)
    valid = np.array([1, 1, 1, 1, 1, 0], bool)
    s = viz.routing_statistics(sel, valid)
    np.testing.assert_array_equal(s["routed_per_layer"], [2, 2, 3])
    np.testing.assert_allclose(s["fraction_of_layers"], [1, 2 / 3, 1 / 3, 0, 0, 0])
    assert s["coverage"] == pytest.approx(3 / 5)
    assert (s["never_routed"], s["always_routed"]) == (2, 1)
    np.testing.assert_allclose(s["overlap"], [[1, 1 / 2, 1], [1 / 2, 1, 1 / 2],
                                              [2 / 3, 1 / 3, 1]])
    np.testing.assert_allclose(s["jaccard"], [[1, 1 / 3, 2 / 3], [1 / 3, 1, 1 / 4],
                                              [2 / 3, 1 / 4, 1]])
    np.testing.assert_allclose(s["adjacent_jaccard"], [1 / 3, 1 / 4])
    assert s["padding_routed"] == 1 and s["padding_share"] == pytest.approx(1 / 7)
    batched = viz.routing_statistics(np.stack([sel, sel], 1), np.stack([valid, valid]))
    assert batched["fraction_of_layers"].shape == (2, 6)
    assert batched["coverage"] == pytest.approx(3 / 5)


# ------------------------------------------------------------------------------------- plots


def test_heatmaps_have_the_requested_size_and_content(decisions, tmp_path):
    sel, lam, valid = (decisions["selected"][:, 0], decisions["lam"][:, 0],
                       decisions["valid"][0])
    tokens = ["\u2581The", "$x", "<unk>", "s"] + [f"t{i}" for i in range(8)]
    path = viz.plot_routing_heatmap(sel, tokens, tmp_path / "sel.png", valid=valid,
                                    figsize=(6, 4), dpi=80)
    img = _image(path)
    assert img.shape[:2] == (320, 480)
    assert img[..., :3].std() > 0.05                                     # not blank
    red = (img[..., 0] > 0.6) & (img[..., 1] < 0.35) & (img[..., 2] < 0.35)
    assert red.sum() > 500                                               # routed cells drawn
    path = viz.plot_routing_heatmap(lam, None, tmp_path / "lam.png", figsize=(5, 3), dpi=50,
                                    show_fraction=False)
    assert _image(path).shape[:2] == (150, 250)
    # Long sequences: default size, thinned ticks, no error.
    rng = np.random.default_rng(0)
    big = rng.random((4, 300)) < 0.3
    img = _image(viz.plot_routing_heatmap(big, [str(i) for i in range(300)],
                                          tmp_path / "big.png"))
    assert img.shape[1] > img.shape[0] and img[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="tokens"):
        viz.plot_routing_heatmap(sel, ["a", "b"], tmp_path / "x.png")


def test_token_highlights_write_html_and_png(tmp_path):
    tokens = ["\u2581The", "\u2581cat", "s", "\u2581<b>", "</s>", "<pad>"]
    sel = np.array([[1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]], bool)
    out = viz.render_token_highlights(tokens, sel, tmp_path / "hl.html",
                                      valid=[1, 1, 1, 1, 1, 0], dpi=60)
    assert out == {"html": str(tmp_path / "hl.html"), "png": str(tmp_path / "hl.png")}
    doc = open(out["html"], encoding="utf-8").read()
    assert "&lt;b&gt;" in doc and "<b>" not in doc                      # escaped
    assert "routed by 2/2 layers (0, 1)" in doc and "routed by 0/2 layers (none)" in doc
    assert "1 padding positions not shown" in doc
    img = _image(out["png"])
    assert img.shape[1] == 600 and img[..., :3].std() > 0.05


def test_patch_routing(tmp_path):
    rng = np.random.default_rng(0)
    sel = rng.random((3, 16)) < 0.25
    image = rng.random((32, 32, 3))
    img = _image(viz.plot_patch_routing(sel, (4, 4), tmp_path / "p.png", image=image, dpi=50))
    assert img.ndim == 3 and img[..., :3].std() > 0.05
    img = _image(viz.plot_patch_routing(rng.random((5, 16)), (4, 4), tmp_path / "q.png", dpi=50))
    assert img[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="patches"):
        viz.plot_patch_routing(sel, (3, 4), tmp_path / "r.png")


# --------------------------------------------------------------------------------------- CLI


def test_parse_layers_and_json_layout():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("3, 0-1", 4) == [0, 1, 3]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("0,7", 4)
    with pytest.raises(ValueError, match="cannot parse"):
        parse_layers("x", 4)
    data = {"a": [1, 2], "b": [{"c": ["x", "y"]}]}
    text = dump_json(data)
    assert json.loads(text) == data and '"a": [1, 2]' in text


def test_cli_random_init(tmp_path, capsys):
    out = tmp_path / "viz"
    assert _cli(["--random-init", "--preset", "tiny", "--length", "10", "--layers", "1",
                 "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["decisions.json", "heatmap.png", "heatmap_lam.png",
                                       "highlights.html", "highlights.png"]
    record = json.load(open(out / "decisions.json"))
    assert (record["n"], record["k"], record["reduction"]) == (10, 4, 3)
    assert record["tokens"] == [str(i) for i in record["token_ids"]]
    assert [layer["layer"] for layer in record["layers"]] == [1]
    assert sum(record["layers"][0]["selected"]) == 4
    assert record["statistics"]["padding_share"] == 0
    assert "layer  1:" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys, monkeypatch):
    def error(argv):
        assert _cli(argv) == 2
        return capsys.readouterr().err

    assert "not found" in error(["--checkpoint", str(tmp_path / "nope"), "--text", "hi"])
    assert "nothing is routed" in error(["--random-init", "--preset", "tiny",
                                         "--reduction", "1"])
    assert "--preset" in error(["--random-init"])
    assert "out of range" in error(["--random-init", "--preset", "tiny", "--layers", "5"])
    monkeypatch.delenv("CODA_VOCAB", raising=False)
    assert "--vocab" in error(["--random-init", "--preset", "tiny", "--text", "hello"])
    assert "not found" in error(["--random-init", "--preset", "tiny", "--text", "hello",
                                 "--vocab", str(tmp_path / "missing.model")])


@pytest.fixture(scope="module")
def checkpoint_and_vocab(tmp_path_factory, model):
    """A saved tiny CoDA checkpoint (vocab_size 512) and a tiny SentencePiece model."""
    pytest.importorskip("seqio")
    from coda_flax.checkpoints import expected_shapes, save_checkpoint, unflatten_params
    from coda_flax.tasks.vocab import train_sentencepiece

    d = tmp_path_factory.mktemp("viz_ckpt")
    words = ("the cat sat on a mat and dog ran to big red house tree sky blue green sun "
             "moon star king queen sword night castle field").split()
    rng = np.random.default_rng(0)
    with open(d / "text.txt", "w") as f:
        for _ in range(300):
            f.write(" ".join(rng.choice(words, 8)) + ".\n")
    vocab = train_sentencepiece([str(d / "text.txt")], str(d / "spm"), vocab_size=120)
    config = model[0].replace(vocab_size=512)
    flat = {k: (1.0 if k.endswith("scale") else 0.3) * rng.standard_normal(shape)
            for k, shape in expected_shapes(config).items()}      # no init: nothing to compile
    save_checkpoint(str(d / "ckpt"), unflatten_params(flat), config)
    return str(d / "ckpt"), vocab


def test_cli_checkpoint_with_text(checkpoint_and_vocab, tmp_path, capsys):
    ckpt, vocab = checkpoint_and_vocab
    out = tmp_path / "viz"
    text = "the cat sat on the mat and the dog ran to the big red house"
    assert _cli(["--checkpoint", ckpt, "--vocab", vocab, "--text", text,
                 "--output", str(out)]) == 0
    record = json.load(open(out / "decisions.json"))
    n = len(record["tokens"])
    assert record["tokens"][-1] == "</s>" and record["text"] == text
    assert record["tokens"][0].startswith("\u2581")
    assert (record["n"], record["k"]) == (n, math.ceil(n / R))
    assert all(sum(layer["selected"]) == record["k"] for layer in record["layers"])
    assert os.path.getsize(out / "heatmap.png") > 1000
    assert "\u2581" not in open(out / "highlights.html", encoding="utf-8").read().split(
        '<div class="text">')[1]                                          # word markers -> spaces
    # Padded to --length: padding shown grey, never routed while real tokens are left.
    assert _cli(["--checkpoint", ckpt, "--vocab", vocab, "--text", "the cat",
                 "--length", "9", "--output", str(out)]) == 0
    record = json.load(open(out / "decisions.json"))
    assert record["num_real_tokens"] < 9 and record["statistics"]["padding_share"] == 0
    capsys.readouterr()

    def error(argv):
        assert _cli(["--checkpoint", ckpt, "--vocab", vocab, "--output", str(out), *argv]) == 2
        return capsys.readouterr().err

    assert "longer than --length 4" in error(["--text", text, "--length", "4"])
    assert "nothing is routed" in error(["--text", text, "--reduction", "1"])
    assert "--random-init only" in error(["--text", text, "--preset", "tiny"])
