"""analysis.router_scores (issue 18's image claim): the variance shares against hand-computed
sums of squares, and layer 0's router scores against a numpy re-derivation from the parameters
(the patch embedding, T5's RMS norm and the router's w)."""

import numpy as np
import pytest

from coda_flax.analysis.router_scores import (explained_share, ink_gap, router_scores,
                                              score_variance)


def test_explained_share_by_hand():
    # scores 1, 3 (group 0) and 5 (group 1): mean 3, group means 2 and 5;
    # total SS = 4 + 0 + 4 = 8, between-group SS = 2 * (2 - 3)^2 + 1 * (5 - 3)^2 = 6
    assert explained_share([[1.0, 3.0, 5.0]], [[0, 0, 1]]) == pytest.approx(6 / 8)
    # the invalid entry (100) is left out entirely
    assert explained_share([[1.0, 3.0, 5.0, 100.0]], [[0, 0, 1, 1]],
                           [[1, 1, 1, 0]]) == pytest.approx(6 / 8)
    assert explained_share([[2.0, 2.0]], [[0, 1]]) == 0.0          # no variance to explain
    with pytest.raises(ValueError, match="same shape"):
        explained_share(np.zeros((2, 3)), np.zeros((2, 2), int))


def test_ink_gap_by_hand():
    # ink scores 4 and 6 (mean 5), the rest 0 and 2 (mean 1); all four: mean 3, std sqrt(5)
    assert ink_gap([[4.0, 0.0, 6.0, 2.0]], [[1, 0, 1, 0]]) == pytest.approx(4 / 5 ** 0.5)
    assert ink_gap([[4.0, 0.0]], [[0, 0]]) == 0.0                       # no ink: no gap


def test_score_variance_separates_position_from_ink():
    rng = np.random.default_rng(0)
    pages, n = 400, 16
    place = rng.normal(size=n)                     # a fixed preference per position
    ink = rng.random((pages, n)) < 0.25
    only_place = np.broadcast_to(place, (pages, n))
    only_ink = 3.0 * ink
    out = score_variance(np.stack([only_place, only_ink]), ink)
    assert out["position"][0] == pytest.approx(1.0)            # position explains it all
    assert out["ink"][0] < 0.02                                 # ink is independent of place
    assert out["ink"][1] == pytest.approx(1.0)
    assert out["position"][1] < 0.1                             # 16 groups of 400 random bits
    # a mix: the ink's share is its variance over the total, var(3 ink) / (var(place) + ...)
    assert out["ink_gap"][1] == pytest.approx(3.0 / np.std(only_ink))    # ink scores higher
    assert score_variance(-only_ink[None], ink)["ink_gap"][0] < 0         # ink avoided
    mixed = score_variance((only_place + only_ink)[None], ink)
    expect = np.var(only_ink) / np.var(only_place + only_ink)
    assert mixed["ink"][0] == pytest.approx(expect, abs=0.03)


def test_layer0_scores_are_the_numpy_rederivation():
    import jax
    from flax.core import meta

    from coda_flax.experiments import claims, claims_images
    from coda_flax.model import build_module

    s = claims.SCALES["tiny"]
    cfg = claims_images.image_model(s, claims.coda(s, 4))
    rng = np.random.default_rng(1)
    b, n = 2, 64
    patches = rng.normal(size=(b, n, 2 + 16 * 16 * 3)).astype(np.float32)
    patches[..., 0] = np.repeat(np.arange(1, 9), 8)            # row ids 1..8
    patches[..., 1] = np.tile(np.arange(1, 9), 8)              # column ids 1..8
    patches[1, 60:, :] = 0                                     # four padded patches
    p = meta.unbox(build_module(cfg).init(jax.random.PRNGKey(0), patches,
                                          np.ones((b, 4), np.int32))["params"])
    p["encoder"]["layers_0"]["router"]["kernel"] = rng.normal(size=16).astype(np.float32)
    out = router_scores(cfg, p, patches)
    emb = p["encoder"]["patch_embedder"]
    ids = patches[..., :2].astype(int)
    x = (patches[..., 2:] @ np.asarray(emb["patch_projection"]["kernel"])
         + np.asarray(emb["row_embedder"]["embedding"])[ids[..., 0]]
         + np.asarray(emb["column_embedder"]["embedding"])[ids[..., 1]])
    layer = p["encoder"]["layers_0"]
    xn = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) \
        * np.asarray(layer["pre_attention_layer_norm"]["scale"])
    want = xn @ np.asarray(layer["router"]["kernel"])
    assert out["scores"].shape == (2, b, n)
    np.testing.assert_allclose(out["scores"][0], want, rtol=1e-4, atol=1e-4)
    assert out["valid"].tolist() == [[True] * 64, [True] * 60 + [False] * 4]
