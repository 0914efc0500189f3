"""Table 6 in `coda reproduce` (issue 21): runnable on the public Pix2Struct-Large converted by
`coda convert`, on the coda_pix2struct_* tasks; the dry run lists the commands, and the
prerequisite check names each missing piece (TFRecords, Pix2Struct's vocabulary, the converted
checkpoint, the CoDA pretraining task) with how to provide it, and nothing once they are there."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex

import pytest

from coda_flax.cli.reproduce import main as cli_main
from coda_flax.config import CodaConfig, ModelConfig
from coda_flax.experiments import paper_tables as pt
from coda_flax.experiments import reproduce as rp
from coda_flax.experiments.prerequisites import check_prerequisites

TASKS = ("coda_pix2struct_ocrvqa", "coda_pix2struct_docvqa", "coda_pix2struct_screen2words")


@pytest.fixture(scope="module")
def table6():
    return pt.load_table(6)


def test_dry_run_lists_runnable_commands(capsys, tmp_path):
    assert cli_main(["--table", "6", "--dry-run", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NOT RUNNABLE" not in out
    assert len(re.findall(r"(?m)^\[\d+/15\] ", out)) == 15          # 5 rows x 3 columns
    commands = [shlex.split(l.strip())[1:] for l in out.splitlines() if l.startswith("  coda ")]
    train = [c for c in commands if c[0] == "train"]
    assert train and all("--gin_file=models/pix2struct_large.gin" in c for c in train)
    for task in TASKS:
        assert any(f"--gin.MIXTURE_OR_TASK_NAME='{task}'" in c for c in train)
    assert any("--gin.MIXTURE_OR_TASK_NAME='coda_pix2struct_pretraining'" in c for c in train)
    assert "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 4096, 'targets': 128}\"" in out

    assert cli_main(["--table", "6", "--dry-run", "--pretrain-steps", "0",
                     "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "coda_pix2struct_pretraining" not in out and "NOT RUNNABLE" not in out
    assert out.count("  coda eval ") == 15


def test_finetune_stage_builds_the_pix2struct_large_model(table6, tmp_path):
    import gin
    from coda_flax.train.gin_config import parse_gin
    (exp,) = rp.select(table6, rp.expand(table6, tmp_path, pretrain_steps=0), ["coda_r8.docvqa"])
    stage = exp.finetune_stage
    gin.clear_config()
    try:
        parse_gin(stage.gin_files, [f"{n} = {v}" for n, v in stage.bindings.items()])
        config = gin.get_configurable("model_config")()
        assert config == ModelConfig.from_preset(
            "pix2struct_large", coda=CodaConfig(reduction=8, attention="k_to_all"))
        assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "coda_pix2struct_docvqa"
        assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 4096, "targets": 128}
        assert gin.query_parameter("%BATCH_SIZE") == 256
        assert gin.query_parameter("%TRAIN_STEPS") == 20_000
    finally:
        gin.clear_config()


def test_prerequisites_name_what_is_missing(table6, tmp_path, monkeypatch):
    for var in ("CODA_PIX2STRUCT_DATA_DIR", "PIX2STRUCT_DIR", "CODA_VOCAB"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "out"
    with pytest.raises(rp.MissingPrerequisitesError) as err:
        rp.run_table(table6, out, only=["pa.ocrvqa", "coda_r4.screen2words"],
                     bindings=[f"DATA_DIR = '{tmp_path}/data'"])
    text = str(err.value)
    assert "nothing was run" in text
    assert f"{tmp_path}/data/ocrvqa/processed/train.tfr*" in text and "convert_ocrvqa" in text
    assert "screen2words/processed/dev.tfr*" in text                # the eval split
    assert "coda_pix2struct_pretraining" in text and "--pretrain-steps 0" in text
    assert "gs://pix2struct-data/sentencepiece.model" in text and "--gin.VOCAB_PATH" in text
    assert "--gin.INITIAL_CHECKPOINT_PATH" in text and "coda convert --hf" in text
    assert not out.exists()


def test_cli_run_with_the_readme_bindings_checks_before_running(tmp_path, capsys):
    """The README's command with the TFRecords not there: 3 tasks x (train, eval split) named,
    exit 2, nothing run."""
    ckpt, vocab = tmp_path / "pix2struct_large", tmp_path / "sentencepiece.model"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    vocab.write_bytes(b"")
    assert cli_main(["--table", "6", "--output", str(tmp_path / "runs"), "--pretrain-steps", "0",
                     f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'", f"--gin.VOCAB_PATH='{vocab}'",
                     f"--gin.DATA_DIR='{tmp_path}/data'"]) == 2
    err = capsys.readouterr().err
    assert "6 prerequisite(s) missing for the 15 unfinished experiment(s)" in err
    assert "docvqa/processed/train.tfr*" in err and "vocabulary" not in err
    assert not (tmp_path / "runs").exists()


def test_prerequisites_pass_once_data_vocabulary_and_checkpoint_are_there(table6, tmp_path):
    data = tmp_path / "data"
    for dataset, val in (("ocrvqa", "val"), ("docvqa", "val"), ("screen2words", "dev")):
        d = data / dataset / "processed"
        d.mkdir(parents=True)
        for split in ("train", val):
            (d / f"{split}.tfr-00000-of-00001").write_bytes(b"")
    vocab = tmp_path / "sentencepiece.model"
    vocab.write_bytes(b"")
    ckpt = tmp_path / "pix2struct_large"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({}))
    bindings = [f"DATA_DIR = '{data}'", f"VOCAB_PATH = '{vocab}'",
                f"INITIAL_CHECKPOINT_PATH = '{ckpt}'"]
    experiments = rp.expand(table6, tmp_path / "out", bindings, pretrain_steps=0)
    assert len(experiments) == 15
    assert check_prerequisites(table6, experiments) == []
    os.remove(data / "docvqa" / "processed" / "val.tfr-00000-of-00001")
    problems = check_prerequisites(table6, experiments)
    assert len(problems) == 1 and "docvqa/processed/val.tfr*" in problems[0]


@pytest.mark.slow
def test_tiny_table6_cell_runs_from_a_converted_pix2struct(tmp_path, capsys):
    """One Table 6 cell end to end at toy size: a random Hugging Face Pix2Struct converted with
    `coda convert`, finetuned (CoDA r = 4) on coda_pix2struct_docvqa TFRecords, evaluated."""
    pytest.importorskip("transformers")
    from test_pix2struct import _convert, make_hf_model
    from test_pix2struct_tasks import _example, _png

    import numpy as np
    from coda_flax.tasks._tf import tf

    text = dict(vocab_size=300, num_layers=1)
    vision = dict(patch_embed_hidden_size=768, num_hidden_layers=2, seq_len=32)
    hf_dir, ckpt = str(tmp_path / "hf"), str(tmp_path / "ckpt")
    make_hf_model(text, vision).save_pretrained(hf_dir)
    assert _convert(["--hf", hf_dir, "--output", ckpt]) == 0
    rng = np.random.RandomState(0)
    d = tmp_path / "data" / "docvqa" / "processed"
    d.mkdir(parents=True)
    for split in ("train", "val"):
        with tf.io.TFRecordWriter(str(d / f"{split}.tfr-00000-of-00001")) as w:
            for i in range(4):
                w.write(_example(_png(rng, 48, 64)[0], f"{split}{i}", [f"answer {i}"]))
    tiny = ["model_config.vocab_size=300", "model_config.d_model=32", "model_config.num_heads=4",
            "model_config.num_kv_heads=4", "model_config.head_dim=8", "model_config.d_ff=48",
            "model_config.num_encoder_layers=2", "model_config.num_decoder_layers=1",
            "model_config.max_patch_positions=32", "model_config.dropout_rate=0.0",
            "model_config.relative_attention_num_buckets=8",
            "CodaConfig.adapter_dim=4", "TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 12}",
            "train.progress=False", "train.k_anneal_stages=1",
            "train.eval_max_examples=2", "train.eval_batch_size=2", "evaluate.max_examples=4",
            "evaluate.batch_size=2"]
    bindings = [f"DATA_DIR='{tmp_path / 'data'}'", f"INITIAL_CHECKPOINT_PATH='{ckpt}'", *tiny]
    logs = []
    spec = copy.deepcopy(pt.load_table(6))               # toy batch and steps (eval ignores them)
    for col in spec["columns"]:
        col.update(batch_size=2, train_steps=2)
    summary = rp.run_table(spec, tmp_path / "out", bindings=bindings,
                           only=["coda_r4.docvqa"], pretrain_steps=0, check=False,
                           log=logs.append)
    assert summary["ran"] == ["coda_r4.docvqa"] and not summary["failed"], "\n".join(logs)
    results = json.load(open(tmp_path / "out" / "table6" / "coda_r4.docvqa" /
                             "eval_results.json"))
    assert results["task"] == "coda_pix2struct_docvqa" and results["num_examples"] == 4
    assert 0.0 <= results["anls"] <= 100.0
