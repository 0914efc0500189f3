"""`coda compare` (Parallel Adapter vs CoDA on offline image / speech tasks): the quick path end
to end on data the test renders itself, the ink-share statistic and the table writer."""

import json
import os
import numpy as np
import pytest

from coda_flax.datasets import vision as vision_data
from coda_flax.datasets.vision import MissingVisionDataError
from coda_flax.experiments import compare

WORDS = "thou art more lovely and more temperate rough winds do shake the darling buds".split()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Rendered words in a temporary cache. No skip: find_fonts falls back to the DejaVu copy
    bundled with matplotlib (a dependency), so a missing font fails with MissingVisionDataError
    naming the fix (scripts/prepare_vision_data.py fetches fonts-dejavu-core)."""
    root = str(tmp_path_factory.mktemp("compare_data"))
    vision_data.prepare_rendered_words(root, words=WORDS[:4], num_train=8, num_validation=4,
                                       download=False, log=lambda s: None)
    return root


@pytest.mark.slow    # ~70 s on 2 cores; the quick demo covers the shared finetune / table path
def test_quick_rendered_words_comparison_writes_every_output(data_dir, tmp_path):
    out = str(tmp_path / "cmp")
    summary = compare.run_compare("rendered_words", out, quick_run=True, data_dir=data_dir,
                                  prepare=False, log=lambda s: None)
    on_disk = json.load(open(os.path.join(out, "results.json")))
    assert on_disk["variants"].keys() == summary["variants"].keys() == {"parallel_adapter",
                                                                          "coda_r4"}
    pa, coda = on_disk["variants"]["parallel_adapter"], on_disk["variants"]["coda_r4"]
    assert pa["k"] == pa["n"] == 64 and coda["k"] == 16                 # k = ceil(64 / 4)
    assert pa["encoder_speedup"] == pa["end_to_end_speedup"] == 1.0
    assert coda["encoder_speedup"] > 0 and 0.0 <= coda["quality"] <= 100.0
    assert coda["trainable_params"] > pa["trainable_params"]           # + the routers
    texts = [r["text"] for r in vision_data.read_rendered_docs(
        vision_data.rendered_words_dir(data_dir), "validation")][:2]        # the 2 evaluated
    majority = on_disk["majority"]
    assert majority["answer"] in texts
    assert majority["exact_match"] == pytest.approx(100 * texts.count(majority["answer"]) / 2)
    shares = on_disk["ink_share"]["coda_r4"]
    assert len(shares["routed_ink_share"]) == 2 and 0 < shares["page_ink_share"] < 1
    assert shares["routed"] == [2 * 16] * 2                   # k patches of each of 2 pages
    for name in ("results.md", "speed_quality.png", "ink_share.png", "routing_coda_r4.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    # A second run reuses the finished variants: no training, the same evaluation.
    log = os.path.join(out, "finetune", "coda_r4", "metrics.jsonl")
    before = os.path.getmtime(log)
    again = compare.run_compare("rendered_words", out, quick_run=True, data_dir=data_dir,
                                prepare=False, log=lambda s: None)
    assert os.path.getmtime(log) == before
    assert again["variants"]["coda_r4"]["eval"] == summary["variants"]["coda_r4"]["eval"]


def test_results_table_layout():
    summary = {"task": "coda_speech_offline", "settings": dict(
        compare.SETTINGS["speech"].__dict__), "variants": {
            "parallel_adapter": dict(reduction=1, n=128, k=128, quality=50.0,
                                     eval=dict(wer=50.0, cer=20.0), encoder_speedup=1.0,
                                     end_to_end_speedup=1.0, trainable_params=1000),
            "coda_r2": dict(reduction=2, n=128, k=64, quality=55.5, eval=dict(wer=55.5, cer=21.25),
                            encoder_speedup=1.8, end_to_end_speedup=1.7, trainable_params=1100)}}
    table = compare.results_table(summary)
    assert "| coda_r2 | 2 | 128 | 64 | 55.5 | 21.2 | 1.80x | 1.70x | 1,100 |" in table
    assert "| wer (lower is better) | cer |" in table


def test_unknown_comparison_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="rendered_words"):
        compare.run_compare("ocr", str(tmp_path))
