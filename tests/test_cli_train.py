"""The gin-driven CLI end to end on an offline task built from a synthetic play corpus."""

import json
import os
import re
import socket

import numpy as np
import pytest

from corpus_helpers import prepared_corpus
from train_helpers import sigterm_after
from coda_flax.cli import main
from coda_flax.resources import GIN_DIR

TINY = ["--gin.model_config.vocab_size=400", "--gin.model_config.d_model=32",
        "--gin.model_config.num_heads=2", "--gin.model_config.head_dim=16",
        "--gin.model_config.d_ff=64"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, prepared_corpus(root)


def _train(model_dir, data, vocab, steps, extra=()):
    return main(["train", "--gin_file=models/tiny.gin",         # packaged gin files by name
                 "--gin_file=variants/coda_k_to_all.gin",
                 "--gin_file=runs/finetune.gin", *TINY,
                 f"--gin.MODEL_DIR='{model_dir}'", f"--gin.DATA_DIR='{data}'",
                 f"--gin.VOCAB_PATH='{vocab}'",
                 "--gin.MIXTURE_OR_TASK_NAME='coda_shakespeare_play'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
                 f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8", "--gin.LEARNING_RATE=0.02",
                 "--gin.train.trainable='all'", "--gin.train.log_every=1",
                 "--gin.train.eval_max_examples=8", "--gin.train.eval_batch_size=8",
                 "--gin.train.progress=False", *extra])


def test_train_cli_loss_falls_then_eval_and_infer_write_results(corpus, tmp_path, capsys):
    data, vocab = corpus
    run = tmp_path / "run"
    sigterm_after(run / "metrics.jsonl", 3)            # preempted, then resumed
    assert _train(run, data, vocab, steps=40) == 143
    saved = int(re.search(r"saved step (\d+) in", capsys.readouterr().err).group(1))
    assert 3 <= saved < 40 and os.path.isdir(run / "checkpoints" / str(saved))
    assert not os.path.exists(run / "LOCK")
    assert _train(run, data, vocab, steps=40) == 0
    rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 41))
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert [r for r in rows if r["split"] == "eval"][0]["num_examples"] == 8
    config = open(run / "config.gin").read()
    assert "MIXTURE_OR_TASK_NAME = 'coda_shakespeare_play'" in config
    assert "REDUCTION = 3" in config and "CodaConfig.reduction = %REDUCTION" in config
    out = tmp_path / "eval"
    assert main(["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{run}/final'",
                 "--gin.MIXTURE_OR_TASK_NAME='coda_shakespeare_play'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
                 f"--gin.EVAL_OUTPUT_DIR='{out}'", f"--gin.DATA_DIR='{data}'",
                 f"--gin.VOCAB_PATH='{vocab}'", "--gin.BATCH_SIZE=8"]) == 0
    results = json.load(open(out / "eval_results.json"))
    assert {"accuracy", "loss_per_token", "token_accuracy"} <= set(results)
    printed = capsys.readouterr().out                      # `coda eval` prints its metrics
    assert "coda eval: metrics" in printed
    assert re.search(r"loss_per_token\s+%.4f" % results["loss_per_token"], printed)
    assert os.path.getsize(out / "predictions_validation.jsonl") > 0
    pred = tmp_path / "pred.jsonl"
    # gin/runs/infer.gin: the repository path of earlier versions still finds the packaged file
    assert main(["infer", "--gin_file=gin/runs/infer.gin", f"--gin.CHECKPOINT_PATH='{run}/final'",
                 "--gin.INPUTS=['shakespeare play: LORD A0 the king']",
                 f"--gin.OUTPUT_PATH='{pred}'", f"--gin.VOCAB_PATH='{vocab}'",
                 "--gin.INPUT_LENGTH=64", "--gin.TARGET_LENGTH=8"]) == 0
    assert json.loads(open(pred).readline())["input"].startswith("shakespeare play")


def _one_error_line(capsys, mode):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith(f"coda {mode}: error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_errors_are_one_line_and_name_the_fix(corpus, tmp_path, capsys):
    data, vocab = corpus
    assert _train(tmp_path / "x", data, vocab, 1,
                  ["--gin.MIXTURE_OR_TASK_NAME='coda_shakespear'"]) == 1
    line = _one_error_line(capsys, "train")                # lists the registered names
    assert "unknown task or mixture 'coda_shakespear'" in line and "coda_shakespeare_play" in line
    assert main(["train", "--gin_file=runs/nope.gin"]) == 1
    line = _one_error_line(capsys, "train")
    assert "gin file(s) not found: ['runs/nope.gin']" in line and GIN_DIR in line
    # a misspelled macro is an error (before anything is written), unless allowed
    assert _train(tmp_path / "typo", data, vocab, 1, ["--gin.TRAIN_STEPZ=3"]) == 1
    assert re.search(r"unknown gin macro\(s\) TRAIN_STEPZ \(set on the command line\).*"
                     r"TRAIN_STEPS", _one_error_line(capsys, "train"))
    assert not os.path.exists(tmp_path / "typo")
    from coda_flax.train.gin_config import GinConfigError
    with pytest.raises(GinConfigError, match="TRAIN_STEPZ"):              # --debug: raised
        _train(tmp_path / "typo", data, vocab, 1, ["--gin.TRAIN_STEPZ=3", "--debug"])
    # a required macro left unset is named (it was "<object object at 0x...>")
    assert main(["eval", "--gin_file=runs/eval.gin", "--gin.CHECKPOINT_PATH='/nowhere'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
                 f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'e'}'"]) == 1
    assert ("MIXTURE_OR_TASK_NAME must be set: add --gin.MIXTURE_OR_TASK_NAME="
            in _one_error_line(capsys, "eval"))
    # a damaged checkpoint: one line
    assert main(["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{tmp_path}'",
                 "--gin.MIXTURE_OR_TASK_NAME='coda_shakespeare_play'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
                 f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'e'}'", f"--gin.DATA_DIR='{data}'",
                 f"--gin.VOCAB_PATH='{vocab}'"]) == 1
    assert "config.json not found" in _one_error_line(capsys, "eval")


def test_a_second_run_in_the_same_model_dir_is_refused(corpus, tmp_path, capsys):
    data, vocab = corpus
    run = tmp_path / "run"
    run.mkdir()
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": "2026-12-01T09:00:00+00:00"}         # this process: alive
    (run / "LOCK").write_text(json.dumps(holder))
    assert _train(run, data, vocab, 1) == 1
    line = _one_error_line(capsys, "train")
    assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in line
    assert sorted(os.listdir(run)) == ["LOCK"]                 # nothing written


@pytest.mark.parametrize("command", [["demo", "--quick"], ["compare", "easy_vqa", "--quick"]])
def test_demo_does_not_create_a_data_dir_it_was_not_asked_to(command, tmp_path, capsys):
    missing = tmp_path / "nonexistent" / "dir"
    assert main([*command, "--output", str(tmp_path / "out"), "--data-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"coda {command[0]}: error" in err and "is not an existing directory" in err
    assert not os.path.exists(tmp_path / "nonexistent") and not os.path.exists(tmp_path / "out")


def test_gin_dir_flag_prints_the_packaged_folder(capsys):
    from coda_flax.cli.train import main as train_main
    assert train_main(["--gin-dir"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == GIN_DIR and os.path.isfile(os.path.join(out, "runs", "finetune.gin"))
