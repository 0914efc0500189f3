"""The gin-driven CLI end to end on an offline task built from a synthetic play corpus."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("seqio")
pytest.importorskip("gin")

from corpus_helpers import prepared_corpus  # noqa: E402
from coda_flax.cli import main  # noqa: E402

TINY = ["--gin.model_config.vocab_size=400", "--gin.model_config.d_model=32",
        "--gin.model_config.num_heads=2", "--gin.model_config.head_dim=16",
        "--gin.model_config.d_ff=64"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, prepared_corpus(root)


def _train(model_dir, data, vocab, steps, extra=()):
    return main(["train", "--gin_file=gin/models/tiny.gin",
                 "--gin_file=gin/models/variants/coda_k_to_all.gin",
                 "--gin_file=gin/runs/finetune.gin", *TINY,
                 f"--gin.MODEL_DIR='{model_dir}'", f"--gin.DATA_DIR='{data}'",
                 f"--gin.VOCAB_PATH='{vocab}'",
                 "--gin.MIXTURE_OR_TASK_NAME='coda_shakespeare_play'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
                 f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8", "--gin.LEARNING_RATE=0.02",
                 "--gin.train.trainable='all'", "--gin.train.log_every=1",
                 "--gin.train.eval_max_examples=8", "--gin.train.eval_batch_size=8",
                 "--gin.train.progress=False", *extra])


def test_train_cli_loss_falls_then_eval_and_infer_write_results(corpus, tmp_path):
    data, vocab = corpus
    run = tmp_path / "run"
    assert _train(run, data, vocab, steps=40) == 0
    rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert [r for r in rows if r["split"] == "eval"][0]["num_examples"] == 8
    config = open(run / "config.gin").read()
    assert "MIXTURE_OR_TASK_NAME = 'coda_shakespeare_play'" in config
    assert "REDUCTION = 3" in config and "CodaConfig.reduction = %REDUCTION" in config
    out = tmp_path / "eval"
    assert main(["eval", "--gin_file=gin/runs/eval.gin", f"--gin.CHECKPOINT_PATH='{run}/final'",
                 "--gin.MIXTURE_OR_TASK_NAME='coda_shakespeare_play'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
                 f"--gin.EVAL_OUTPUT_DIR='{out}'", f"--gin.DATA_DIR='{data}'",
                 f"--gin.VOCAB_PATH='{vocab}'", "--gin.BATCH_SIZE=8"]) == 0
    results = json.load(open(out / "eval_results.json"))
    assert {"accuracy", "loss_per_token", "token_accuracy"} <= set(results)
    assert os.path.getsize(out / "predictions_validation.jsonl") > 0
    pred = tmp_path / "pred.jsonl"
    assert main(["infer", "--gin_file=gin/runs/infer.gin", f"--gin.CHECKPOINT_PATH='{run}/final'",
                 "--gin.INPUTS=['shakespeare play: LORD A0 the king']",
                 f"--gin.OUTPUT_PATH='{pred}'", f"--gin.VOCAB_PATH='{vocab}'",
                 "--gin.INPUT_LENGTH=64", "--gin.TARGET_LENGTH=8"]) == 0
    assert json.loads(open(pred).readline())["input"].startswith("shakespeare play")


def test_unknown_task_and_missing_gin_file_are_clear(corpus, tmp_path):
    data, vocab = corpus
    with pytest.raises(Exception, match="coda_shakespeare_play"):      # lists registered names
        _train(tmp_path / "x", data, vocab, 1, ["--gin.MIXTURE_OR_TASK_NAME='coda_shakespear'"])
    with pytest.raises(FileNotFoundError, match="gin file"):
        main(["train", "--gin_file=gin/runs/nope.gin"])
