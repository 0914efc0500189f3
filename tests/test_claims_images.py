"""`coda claims`' image claim (experiments.claims_images): the pages' settings (type sizes,
words) against the rendered pixels, the ink lines of the table against hand-made numbers, and
`--images-only` on the tiny scale: the pages, their runs and the ink alone, reused when run
again, no text data prepared."""

import dataclasses
import json
import os

import numpy as np
import pytest

from coda_flax.datasets import ink_pages
from coda_flax.datasets.vision import find_fonts
from coda_flax.experiments import claims, claims_images


def _records(root, split):
    with open(os.path.join(root, f"{split}.jsonl")) as f:
        return [json.loads(line) for line in f]


def _ink_patches(root, rec):
    """Patches of 16 x 16 px holding a pixel darker than half grey, counted from the PNG."""
    from PIL import Image
    with Image.open(os.path.join(root, rec["image"])) as img:
        grey = np.asarray(img.convert("L"))
    h, w = grey.shape
    return int((grey < 128).reshape(h // 16, 16, w // 16, 16).any(axis=(1, 3)).sum())


def test_type_sizes_and_words_reach_the_pixels(tmp_path):
    font = find_fonts(None, download=False, log=lambda s: None)["sans"]
    words = ink_pages.WORDS[:4]
    big, small = str(tmp_path / "big"), str(tmp_path / "small")
    ink_pages.render_pages(big, font, words=words, num_train=4, num_validation=8,
                           page_size=(256, 256), font_sizes=(24, 32), seed=5)
    ink_pages.render_pages(small, font, num_train=8, num_validation=8, page_size=(256, 256),
                           seed=5)
    recs = _records(big, "validation")
    assert sorted(r["text"] for r in recs) == sorted(words * 2)          # 4 words, stratified
    assert all(24 <= r["font_size"] <= 32 for r in recs)
    assert all(r["bbox"][3] - r["bbox"][1] >= 17 for r in recs)         # tall type, in pixels
    small_recs = _records(small, "validation")
    assert all(12 <= r["font_size"] <= 16 for r in small_recs)
    big_ink = np.mean([_ink_patches(big, r) for r in recs])
    small_ink = np.mean([_ink_patches(small, r) for r in small_recs])
    assert big_ink > 1.5 * small_ink and big_ink < 0.15 * 256            # still a blank page


def test_reduced_scale_pages_are_the_large_type_ones():
    s = claims.SCALES["reduced"]
    assert s.image_font_sizes == (24, 32) and s.image_words == 8
    assert s.image_rates == (8, 16) and s.image_dense_steps > s.image_finetune_steps
    assert s.image_seeds == 3
    runs = claims_images.image_runs(s, {"pages": "/p"}, None)
    assert sorted(runs) == ["images/coda_r16", "images/coda_r8", "images/pa"]
    assert runs["images/coda_r8"].model.coda.k(s.image_patches) == 32
    assert runs["images/pa"].init.trainable == "all"
    assert runs["images/pa"].init.steps == s.image_dense_steps


def test_image_table_ink_and_score_lines_by_hand():
    from coda_flax.analysis.estimates import Estimate
    ink = {"pages": 2, "routed_ink_share": [0.5, 0.25], "routed_ink_share_se": [0.1, 0.05],
           "page_ink_share": 0.04, "page_ink_share_se": 0.01, "ink_coverage": [1.0, 0.125],
           "score_position_share": [0.8, 0.1], "score_ink_share": [0.05, 0.6],
           "score_ink_gap": [0.5, -1.25], "routed_weight": [0.9, 0.05]}
    table = claims_images.image_table({"images/pa": None}, {"images/pa": Estimate(
        0.5, 0.1, (0.5,), 10)}, ["a", "b", "c", "d"], ink, 16)
    assert "majority floor 25.0%" in table
    assert ("images/coda_r16: share of routed patches holding ink per layer (mean over 2 "
            "validation pages ± SE): layer 0 50.0 ± 10.0%, layer 1 25.0 ± 5.0%; the page's "
            "share (chance) 4.0%.") in table
    assert "in SDs: 80% / 5% (+0.50), 10% / 60% (-1.25)." in table
    assert "Mean weight m of the routed patches per layer: 0.90, 0.05." in table
    assert "Share of the page's ink patches routed per layer: 100%, 12%." in table
    two = claims_images.image_table({}, {}, ["a"], {8: ink, 16: ink}, 16)
    assert "images/coda_r8:" in two and "images/coda_r16:" in two


def test_combine_seeds_by_hand():
    a = {"routed_ink_share": [0.0, 0.5], "routed_ink_share_se": [0.0, 0.03],
         "page_ink_share": 0.04, "page_ink_share_se": 0.001, "pages": 10}
    b = dict(a, routed_ink_share=[0.6, 0.5], routed_ink_share_se=[0.04, 0.04])
    out = claims_images.combine_seeds([a, b])
    assert out["routed_ink_share"] == pytest.approx([0.3, 0.5])
    # layer 0: the seeds disagree, std 0.424 / sqrt 2 = 0.3 > the pages' sqrt(0.0008 / 2);
    # layer 1: they agree, so the pages' sqrt((0.03^2 + 0.04^2) / 2 / 2) = 0.0177 remains
    assert out["routed_ink_share_se"] == pytest.approx([0.3, (0.0025 / 2 / 2) ** 0.5])
    assert out["per_seed"] == [[0.0, 0.5], [0.6, 0.5]] and out["pages"] == 10
    assert out["page_ink_share"] == pytest.approx(0.04)
    one = claims_images.combine_seeds([a])
    assert one["routed_ink_share_se"] == [0.0, 0.03] and one["per_seed"] == [[0.0, 0.5]]
    assert claims_images.seeded(claims_images.image_runs(
        claims.SCALES["tiny"], {"pages": "/p"}, None)["images/coda_r4"], 2).name == \
        "images/coda_r4/seed2"


def test_cli_refuses_data_only_with_images_only(capsys):
    from coda_flax.cli import main
    assert main(["claims", "--data-only", "--images-only"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def _results(root):
    return {os.path.relpath(folder, root): os.path.getmtime(os.path.join(folder, "result.json"))
            for folder, _, files in os.walk(root) if "result.json" in files}


def test_images_only_goes_to_the_image_stage_alone(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(claims, "run_images", lambda *a: calls.append(a) or {"done": 1})
    monkeypatch.setattr(claims, "prepare_data", lambda *a: pytest.fail("text data prepared"))
    out = claims.run_claims(str(tmp_path), scale="tiny", data_dir=None, images_only=True)
    assert out == {"done": 1} and calls[0][:3] == (claims.SCALES["tiny"], "tiny", str(tmp_path))


def test_image_stage_reports_every_seed_of_the_coda_runs(tmp_path, monkeypatch):
    """The pages' accuracy of a CoDA rate is the mean over all its seeds (not seed 0 only), as
    the ink of claim d is; the exact-match values are made up here."""
    s = dataclasses.replace(claims.SCALES["tiny"], image_seeds=3, image_rates=(4,))
    made = {"images/dense": 40.0, "images/pa/seed0": 60.0, "images/coda_r4/seed0": 10.0,
            "images/coda_r4/seed1": 40.0, "images/coda_r4/seed2": 70.0}

    def fake_execute_all(runs, root, log, jobs, setup):
        assert sorted(r.name for r in runs) == sorted(set(made) - {"images/dense"})
        assert (jobs, setup) == (1, None)
        return {r.name: {"eval": {"exact_match": made[r.name], "num_examples": 100},
                         "seconds": 1.0} for r in runs} | {
            "images/dense": {"eval": {"exact_match": 40.0, "num_examples": 100}}}

    ink = {"routed_ink_share": [0.5, 0.5], "routed_ink_share_se": [0.01, 0.01],
           "page_ink_share": 0.05, "page_ink_share_se": 0.001, "ink_coverage": [1.0, 1.0],
           "pages": 8}
    monkeypatch.setattr(claims_images, "execute_all", fake_execute_all)
    monkeypatch.setattr(claims_images, "seeded_ink", lambda *a: ink)
    out = claims_images.image_stage(s, {"dir": "/p", "words": ["a", "b"]}, None,
                                    str(tmp_path), lambda m: None)
    coda4 = out["accuracy"]["images/coda_r4"]
    assert len(coda4.seeds) == 3 and coda4.mean == pytest.approx(0.4)      # (10 + 40 + 70) / 3
    assert out["accuracy"]["images/pa"].mean == pytest.approx(0.6)
    assert "| images/coda_r4 | 40.0" in out["table"]
    assert out["row"]["claim"] == "d" and out["row"]["holds"] == "yes"


@pytest.mark.slow
def test_images_only_tiny_runs_the_pages_alone_and_reuses(tmp_path):
    """4-5 min on the shared 2-core machine; test_images_only_goes_to_the_image_stage_alone
    keeps the dispatch in the default suite."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    summary = claims.run_claims(str(out), scale="tiny", data_dir=str(data), images_only=True,
                                log=lambda s: None)
    s = claims.SCALES["tiny"]
    assert sorted(_results(out / "runs")) == ["images/coda_r4/seed0", "images/dense",
                                              "images/pa/seed0"]
    assert os.listdir(data) == ["ink_pages"]                        # no text data
    assert summary["claim"]["claim"] == "d"
    ink = summary["ink"]["4"]
    assert len(ink["routed_ink_share"]) == s.num_encoder_layers == len(ink["score_ink_share"])
    assert all(0 <= v <= 1 for v in ink["score_position_share"] + ink["score_ink_share"])
    assert ink["pages"] == s.image_validation and 0 < ink["page_ink_share"] < 0.5
    assert len(ink["routed_weight"]) == s.num_encoder_layers
    assert sorted(summary["accuracy"]) == ["images/coda_r4", "images/dense", "images/pa"]
    saved = json.load(open(out / "images.json"))
    assert saved["claim"]["holds"] in ("yes", "no", "not separated")
    assert "| d. on images the router picks ink over background |" in open(out / "images.md").read()
    assert os.path.getsize(out / "figure7" / "routing_image.png") > 1000
    before = _results(out / "runs")
    claims.run_claims(str(out), scale="tiny", data_dir=str(data), images_only=True,
                      log=lambda s: None)
    assert _results(out / "runs") == before                         # nothing trained again
