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
from coda_flax.analysis import routing_stats
from coda_flax.frontends import patch_grid
from coda_flax.analysis.synthetic import random_init_params
from coda_flax.cli.visualize import add_visualize_parser, dump_json, parse_layers

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
    return routing_stats.routing_decisions(config, params, tokens)


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
    stats = routing_stats.routing_statistics(sel[:, 0], decisions["valid"][0])
    assert stats["padding_share"] == 0.0 and stats["padding_routed"] == 0


def test_routing_decisions_refuse_models_that_route_nothing(model, tokens):
    _, params = model
    for config in (tiny_config(None), tiny_config(CodaConfig(reduction=1, adapter_dim=4))):
        with pytest.raises(ValueError, match="nothing is routed"):
            routing_stats.routing_decisions(config, params, tokens)
    with pytest.raises(ValueError, match="vocab_size"):
        routing_stats.routing_decisions(model[0], params, np.array([[5, 64, 3]]))


def test_routing_statistics_on_a_hand_built_case():
    #            pos: 0  1  2  3  4  5(pad)
    sel = np.array([[1, 1, 0, 0, 0, 0],
                    [1, 0, 1, 0, 0, 0],
                    [1, 1, 0, 0, 0, 1]], bool)
    valid = np.array([1, 1, 1, 1, 1, 0], bool)
    s = routing_stats.routing_statistics(sel, valid)
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
    batched = routing_stats.routing_statistics(np.stack([sel, sel], 1), np.stack([valid, valid]))
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


# ------------------------------------------------------------------------------------ images

P = 2                                            # patch size of the hand-built patches


def _patches(ids, pixels=None, channels=1, n=None):
    """Patches [n, 2 + P*P*C] with the given (row, col) ids (1-based) and pixel values."""
    n = n or len(ids)
    out = np.zeros((n, 2 + P * P * channels), np.float32)
    for i, (r, c) in enumerate(ids):
        out[i, :2] = (r, c)
        out[i, 2:] = 1.0 if pixels is None else pixels[i]
    return out


def test_place_patches_puts_values_on_their_cells():
    # A 2 x 3 grid given in shuffled order, plus two padding rows.
    ids = [(2, 3), (1, 1), (2, 1), (1, 3), (1, 2), (2, 2)]
    patches = _patches(ids, n=8)
    rows, cols, grid = patch_grid.patch_grid_positions(patches)
    assert grid == (2, 3)
    np.testing.assert_array_equal(rows, [1, 0, 1, 0, 0, 1, -1, -1])
    np.testing.assert_array_equal(cols, [2, 0, 0, 2, 1, 1, -1, -1])
    selected = np.zeros((2, 8), bool)
    selected[0, [0, 4]] = True                   # layer 0 routes (2, 3) and (1, 2)
    selected[1, [1, 6]] = True                   # layer 1 routes (1, 1) and a padding row
    placed = patch_grid.place_patches(selected, patches)
    np.testing.assert_array_equal(placed[0], [[0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(placed[1], [[1, 0, 0], [0, 0, 0]])   # padding dropped
    lam = np.arange(8, dtype=np.float32)
    np.testing.assert_array_equal(patch_grid.place_patches(lam, patches, fill=-1),
                                  [[1, 4, 3], [2, 5, 0]])
    with pytest.raises(ValueError, match="same"):
        patch_grid.place_patches(lam[:2], _patches([(1, 1), (1, 1)]))
    with pytest.raises(ValueError, match="outside"):
        patch_grid.patch_grid_positions(_patches([(3, 1)]), grid_hw=(2, 2))
    with pytest.raises(ValueError, match="values"):
        patch_grid.place_patches(lam[:3], patches)


def test_image_heatmap_places_the_routed_set_over_the_page(monkeypatch, tmp_path):
    # 2 x 2 grid of 2x2 grey patches in the order (2,2), (1,1), (1,2), (2,1); patch (1, 2) is
    # black, the others white. The routed patches must land on their cells over that page.
    ids = [(2, 2), (1, 1), (1, 2), (2, 1)]
    pixels = [1.0, 1.0, 0.0, 1.0]
    patches = _patches(ids, pixels)
    seen = {}

    def fake(selected, grid_hw, path, image=None, **kw):
        seen.update(selected=selected, grid_hw=grid_hw, image=image)
        return path
    monkeypatch.setattr(viz.media, "plot_patch_routing", fake)   # plot_image_routing's module
    selected = np.array([[True, False, True, False]])            # routes (2, 2) and (1, 2)
    viz.plot_image_routing(selected, patches, str(tmp_path / "x.png"), patch_size=P)
    assert seen["grid_hw"] == (2, 2)
    np.testing.assert_array_equal(seen["selected"], [[False, True, False, True]])  # row-major
    image = seen["image"]
    assert image.shape == (4, 4)                                  # grey: one channel dropped
    np.testing.assert_array_equal(image[:2, 2:], 0.0)             # the black patch, top right
    assert (image[:2, :2] == 1).all() and (image[2:] == 1).all()
    monkeypatch.undo()
    img = _image(viz.plot_image_routing(selected, patches, tmp_path / "real.png",
                                        patch_size=P, dpi=50))
    assert img[..., :3].std() > 0.05


def test_patch_image_undoes_standardisation_and_matches_unpatchify():
    page = np.ones((8, 6, 3), np.float32)
    page[2:4, 1:5] = 0.0
    # The pix2struct layout of a standardised page (what patchify makes), in row-major order.
    std = (page - page.mean()) / page.std()
    pix = std.reshape(4, P, 3, P, 3).transpose(0, 2, 1, 3, 4).reshape(12, P * P * 3)
    ids = [(r + 1, c + 1) for r in range(4) for c in range(3)]
    patches = _patches(ids, pix, channels=3, n=14)
    np.testing.assert_allclose(patch_grid.patch_image(patches, P), page, atol=1e-6)
    np.testing.assert_allclose(patch_grid._unpatchify(patches, P, 3, (4, 3)), std, atol=1e-6)
    from coda_flax.frontends.patches import unpatchify
    np.testing.assert_allclose(unpatchify(patches, patch_size=P, channels=3), std, atol=1e-6)


def test_patch_ink_from_patches():
    # Four 2x2 RGB patches: white, one dark pixel, light grey (0.7), all black; one padding.
    white, dark_pixel, grey, black = (np.ones(12), np.r_[np.zeros(3), np.ones(9)],
                                      np.full(12, 0.7), np.zeros(12))
    pixels = np.stack([white, dark_pixel, grey, black]) * 4.0 - 1.0   # any affine scaling
    patches = _patches([(1, 1), (1, 2), (2, 1), (2, 2)], pixels, channels=3, n=5)
    np.testing.assert_array_equal(patch_grid.patch_ink_from_patches(patches, P),
                                  [False, True, False, True, False])
    np.testing.assert_array_equal(patch_grid.patch_ink_from_patches(patches, P, threshold=0.8),
                                  [False, True, True, True, False])


def test_ink_share_on_a_hand_computed_example():
    #                 patch: 0  1  2  3  4  5(pad)
    ink = np.array([1, 1, 0, 0, 0, 0], bool)
    valid = np.array([1, 1, 1, 1, 1, 0], bool)
    selected = np.array([[1, 1, 1, 0, 0, 0],         # 2 of 3 routed patches have ink
                         [0, 0, 1, 1, 0, 1],         # no ink; the padding slot is ignored
                         [1, 0, 0, 0, 1, 0]], bool)  # 1 of 2
    s = routing_stats.ink_share(selected, ink, valid)
    np.testing.assert_allclose(s["routed_ink_share"], [2 / 3, 0, 1 / 2])
    assert s["page_ink_share"] == pytest.approx(2 / 5)
    np.testing.assert_allclose(s["enrichment"], [5 / 3, 0, 5 / 4])
    np.testing.assert_allclose(s["ink_coverage"], [1, 0, 1 / 2])
    np.testing.assert_array_equal(s["routed"], [3, 2, 2])
    assert (s["ink_patches"], s["real_patches"]) == (2, 5)
    one = routing_stats.ink_share(selected[0], ink)                           # [n], all valid
    assert one["page_ink_share"] == pytest.approx(2 / 6)
    np.testing.assert_allclose(one["routed_ink_share"], [2 / 3])
    with pytest.raises(ValueError, match="ink_mask"):
        routing_stats.ink_share(selected, ink[:4])


def test_plot_ink_share(tmp_path):
    stats = routing_stats.ink_share(np.eye(4, 6, dtype=bool), np.array([1, 0, 1, 0, 0, 0], bool))
    img = _image(viz.plot_ink_share(stats, tmp_path / "ink.png", dpi=50))
    assert img.shape[1] > img.shape[0] and img[..., :3].std() > 0.05
    # several variants on the same pages: grouped bars, a wider figure
    other = routing_stats.ink_share(np.eye(4, 6, k=1, dtype=bool), np.array([1, 0, 1, 0, 0, 0],
                                                                            bool))
    both = _image(viz.plot_ink_share({"coda_r4": stats, "coda_r8": other},
                                     tmp_path / "ink2.png", dpi=50))
    assert both.shape[1] > img.shape[1] and both[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="no layers"):
        viz.plot_ink_share({}, tmp_path / "none.png")


# ------------------------------------------------------------------------------------- audio


def test_audio_routing_strips():
    values = np.array([[1, 0, 1], [0, 1, 0]], bool)         # 3 encoder tokens of 10 frames
    strips = viz.audio_routing_strips(values, 10)
    assert strips.shape == (2, 10) and strips.dtype == bool
    np.testing.assert_array_equal(strips[0], [1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(strips[1], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    lam = viz.audio_routing_strips(np.array([0.2, 0.9]), 8)    # [n] -> [1, T]
    np.testing.assert_allclose(lam, [[0.2] * 4 + [0.9] * 4])
    with pytest.raises(ValueError, match="encoder tokens"):
        viz.audio_routing_strips(values, 13)                     # 13 frames -> 4 tokens


def test_plot_audio_routing(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.concatenate([np.arange(1, 51)[:, None], rng.normal(size=(50, 8))], 1)
    frames[46:] = 0                                             # padding
    sel = rng.random((3, 13)) < 0.3
    img = _image(viz.plot_audio_routing(sel, frames, tmp_path / "a.png", dpi=50))
    assert img.shape[1] > img.shape[0] and img[..., :3].std() > 0.05
    img = _image(viz.plot_audio_routing(rng.random((3, 13)), frames, tmp_path / "b.png",
                                        kind="lam", dpi=50, figsize=(6, 4)))
    assert img.shape[:2] == (200, 300)
    with pytest.raises(ValueError, match="encoder tokens"):
        viz.plot_audio_routing(sel[:, :5], frames, tmp_path / "c.png")


# ---------------------------------------------------------------- decisions for patches, frames


def test_routing_decisions_for_patches_and_frames():
    from coda_flax.analysis.synthetic import TINY_SPEECH, TINY_VISION, tiny_model_config

    rng = np.random.default_rng(0)
    config = tiny_model_config(TINY_VISION, CodaConfig(reduction=R, adapter_dim=4))
    params = random_init_params(config, 0)
    patches = np.zeros((12, 2 + 4 * 4 * 3), np.float32)
    patches[:10, 0] = np.repeat([1, 2], 5)[:10]
    patches[:10, 1] = np.tile(np.arange(1, 6), 2)
    patches[:10, 2:] = rng.normal(size=(10, 48))                 # 10 real, 2 padding
    d = routing_stats.routing_decisions(config, params, patches)
    assert (d["n"], d["k"], d["input"]) == (12, 4, "patches")
    np.testing.assert_array_equal(d["valid"][0], np.arange(12) < 10)
    assert d["selected"].shape == (2, 1, 12) and not d["selected"][:, 0, 10:].any()
    np.testing.assert_array_equal(d["selected"].sum(-1), 4)

    config = tiny_model_config(TINY_SPEECH, CodaConfig(reduction=R, adapter_dim=4))
    assert config.coda.epsilon == 1.0 and config.head == "ctc"
    params = random_init_params(config, 0)
    frames = np.zeros((40, 81), np.float32)
    frames[:30, 0] = np.arange(1, 31)
    frames[:30, 1:] = rng.normal(size=(30, 80))
    d = routing_stats.routing_decisions(config, params, frames[None])
    assert (d["n"], d["k"], d["input"]) == (10, 4, "frames")   # ceil(ceil(40 / 2) / 2)
    np.testing.assert_array_equal(d["valid"][0], np.arange(10) < 8)   # frames 0, 4, .. 28
    assert not d["selected"][:, 0, 8:].any()
    with pytest.raises(ValueError, match="1 \\+ num_mel_bins"):
        routing_stats.routing_decisions(config, params, frames[:, :20])


# ------------------------------------------------------------------------------ CLI: images


def _write_page(path):
    from PIL import Image
    from coda_flax.analysis.synthetic import synthetic_page
    page = (synthetic_page(96, 72, seed=1) * 255).astype(np.uint8)
    Image.fromarray(page).save(path)
    return page


def test_cli_image(tmp_path, capsys):
    from coda_flax.frontends import patches as patching
    page = _write_page(tmp_path / "page.png")
    out = tmp_path / "viz"
    assert _cli(["--random-init", "--preset", "tiny_vision", "--image",
                 str(tmp_path / "page.png"), "--max-patches", "48", "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["decisions.json", "heatmap.png", "ink_share.png",
                                       "routing_image.png", "routing_image_lam.png"]
    record = json.load(open(out / "decisions.json"))
    rows, cols = patching.grid_size(96, 72, 48, 4)
    assert record["grid"] == [rows, cols] and record["n"] == 48 and record["input"] == "patches"
    assert record["k"] == 16 and record["image"] == str(tmp_path / "page.png")
    ink = np.array(record["ink"]["mask"], bool)
    np.testing.assert_array_equal(ink, patching.patch_ink(page, 48, 4))
    assert 0 < ink.sum() < rows * cols                          # some ink, some white
    selected = np.array([layer["selected"] for layer in record["layers"]], bool)
    valid = np.arange(48) < rows * cols
    expect = routing_stats.ink_share(selected, ink, valid)
    np.testing.assert_allclose(record["ink"]["routed_ink_share"], expect["routed_ink_share"],
                               atol=1e-6)
    assert record["ink"]["page_ink_share"] == pytest.approx(expect["page_ink_share"])
    assert "of them with ink" in capsys.readouterr().out
    # Without --image: a synthetic page.
    assert _cli(["--random-init", "--preset", "tiny_vision", "--max-patches", "32",
                 "--layers", "1", "--output", str(out)]) == 0
    record = json.load(open(out / "decisions.json"))
    assert record["image"] == "synthetic page" and [l["layer"] for l in record["layers"]] == [1]


def test_cli_audio(tmp_path, capsys):
    from coda_flax.analysis.synthetic import synthetic_utterance
    from coda_flax.frontends import audio
    audio.write_wav(str(tmp_path / "a.wav"), synthetic_utterance(1.0, seed=2))
    out = tmp_path / "viz"
    assert _cli(["--random-init", "--preset", "tiny_speech", "--audio", str(tmp_path / "a.wav"),
                 "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["decisions.json", "heatmap.png", "routing_audio.png",
                                       "routing_audio_lam.png"]
    record = json.load(open(out / "decisions.json"))
    assert record["num_frames"] == 98 and record["seconds"] == pytest.approx(1.0)
    assert (record["n"], record["k"], record["input"]) == (25, 9, "frames")
    assert all(sum(layer["selected"]) == 9 for layer in record["layers"])
    assert "routed, at s =" in capsys.readouterr().out
    assert _cli(["--random-init", "--preset", "tiny_speech", "--audio", str(tmp_path / "a.wav"),
                 "--max-seconds", "0.5", "--output", str(out)]) == 0
    assert json.load(open(out / "decisions.json"))["num_frames"] == 48


def test_cli_input_errors(tmp_path, capsys):
    def error(argv):
        assert _cli(argv) == 2
        return capsys.readouterr().err

    assert "--image needs an image" in error(["--random-init", "--preset", "tiny", "--image",
                                              str(tmp_path / "x.png")])
    assert "--audio needs a speech model" in error(["--random-init", "--preset", "tiny_vision",
                                                    "--audio", str(tmp_path / "x.wav")])
    assert "--text / --text-file needs a text model" in error(
        ["--random-init", "--preset", "tiny_speech", "--text", "hi"])
    assert "--max-patches applies to image" in error(["--random-init", "--preset", "tiny",
                                                      "--max-patches", "16"])
    assert "--length applies to text" in error(["--random-init", "--preset", "tiny_vision",
                                                "--length", "16"])
    assert "not found" in error(["--random-init", "--preset", "tiny_vision", "--image",
                                 str(tmp_path / "missing.png")])
    assert "--random-init only" in error(["--checkpoint", str(tmp_path), "--num-layers", "1"])


def test_cli_pix2struct_random_init(tmp_path):
    """The paper's vision preset without a checkpoint (one of its 18 layers, 64 patches)."""
    out = tmp_path / "viz"
    assert _cli(["--random-init", "--preset", "pix2struct", "--num-layers", "1",
                 "--max-patches", "64", "--reduction", "8", "--output", str(out)]) == 0
    record = json.load(open(out / "decisions.json"))
    assert (record["n"], record["k"]) == (64, 8)
    assert record["model_config"]["d_model"] == 1536
