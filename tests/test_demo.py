"""`coda demo --quick` end to end on a synthetic play corpus (no downloads)."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("seqio")

from corpus_helpers import synthetic_corpus  # noqa: E402
from coda_flax import demo  # noqa: E402
from coda_flax.cli import main  # noqa: E402
from coda_flax.tasks import shakespeare  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    out = root / "shakespeare"
    synthetic_corpus(str(out / "plays"), num_plays=3, num_scenes=12)
    # prepared exactly as prepare_shakespeare would, so the demo finds it and downloads nothing
    shakespeare.build_corpus(str(out / "plays"), str(out), vocab_size=demo.QUICK.vocab_size,
                             passage_chars=1800, validation_fraction=0.1, log=lambda s: None)
    return root


def test_demo_quick_writes_table_plot_and_heatmaps(data_dir, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out), "--data-dir", str(data_dir)]) == 0
    results = json.load(open(out / "results.json"))
    variants = results["variants"]
    assert list(variants) == list(demo.QUICK_VARIANTS)
    n = demo.QUICK.input_length
    assert variants["parallel_adapter"]["k"] == n
    assert variants["coda_r3_k_to_all"]["k"] == -(-n // 3)
    assert variants["parallel_adapter"]["encoder_speedup"] == 1.0
    for r in variants.values():
        assert 0.0 <= r["accuracy"] <= 100.0 and r["encoder_seconds"] > 0
        assert 0.0 <= r["token_accuracy"] <= 1.0
        assert np.isclose(r["encoder_speedup"],
                          variants["parallel_adapter"]["encoder_seconds"] / r["encoder_seconds"])
    # the router adds d_model parameters per encoder layer; first_k adds none
    d, layers = demo.QUICK.d_model, demo.QUICK.num_encoder_layers
    assert (variants["coda_r3_k_to_all"]["trainable_params"]
            - variants["parallel_adapter"]["trainable_params"]) == d * layers
    assert variants["first_k_r5_k_to_k"]["trainable_params"] == \
        variants["parallel_adapter"]["trainable_params"]
    table = open(out / "results.md").read()
    assert all(f"| {name} |" in table for name in variants)
    for f in ("speed_quality.png", "routing_coda_r3_k_to_all.png"):
        assert os.path.getsize(out / f) > 1000
    assert not os.path.exists(out / "routing_parallel_adapter.png")


def test_results_table_layout():
    summary = {"settings": {"input_length": 8, "finetune_steps": 2}, "chance_accuracy": 0.25,
               "variants": {"parallel_adapter": dict(k=8, accuracy=50.0, token_accuracy=0.75,
                                                     encoder_speedup=1.0,
                                                     end_to_end_speedup=1.0,
                                                     trainable_params=1234)}}
    table = demo.results_table(summary)
    assert "| parallel_adapter | 8 | 50.0 | 0.750 | 1.00x | 1.00x | 1,234 |" in table
    assert "chance = 25.0%" in table
