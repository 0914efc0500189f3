"""Data and input errors name what is wrong: a damaged data file (file, line, column, field), an
empty training split (task and split), a typo'd macro inside a gin file, `coda infer` INPUTS
that are not a list of strings or are longer than INPUT_LENGTH; a model setting of the wrong
type."""

import json
import os
import re

import numpy as np
import pytest

from corpus_helpers import prepared_corpus
from coda_flax import CodaConfig, tiny_config
from coda_flax.checkpoints import expected_shapes, save_checkpoint, unflatten_params
from coda_flax.cli import main
from coda_flax.datasets.records import read_jsonl


def test_a_damaged_jsonl_line_is_named_by_file_line_and_column(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"text": "a", "split": "train"}).encode()
    path.write_bytes(good + b"\n\n" + b'{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{path} line 3: byte 0xe9 at column 14 is not UTF-8"):
        read_jsonl(str(path))
    path.write_bytes(good + b'\n{"text": "a",}\n')
    with pytest.raises(ValueError, match=rf"{path} line 2: malformed JSON \(Expecting property "
                                         r"name enclosed in double quotes, column 14\)"):
        read_jsonl(str(path))
    path.write_bytes(good + b"\n[1, 2]\n")
    with pytest.raises(ValueError, match=rf"{path} line 2: a JSON list, not an object"):
        read_jsonl(str(path))
    path.write_bytes(good + b"\n\n" + good + b"\n")
    assert read_jsonl(str(path)) == [{"text": "a", "split": "train"}] * 2


def test_a_failed_jsonl_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    from coda_flax.datasets.records import write_jsonl
    path = tmp_path / "data.jsonl"
    assert write_jsonl(str(path), [{"a": 1}, {"a": 2}]) == 2

    def records():
        yield {"a": 3}
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        write_jsonl(str(path), records())
    assert read_jsonl(str(path)) == [{"a": 1}, {"a": 2}]
    assert os.listdir(tmp_path) == ["data.jsonl"]


def test_a_record_without_a_field_is_named(tmp_path):
    from coda_flax.tasks.offline import _load_columns
    path = tmp_path / "data.jsonl"
    path.write_text('{"inputs": "a", "targets": "b"}\n{"inputs": "c"}\n')
    with pytest.raises(ValueError, match=rf"{path}: record 2 .* has no field 'targets'"):
        _load_columns(str(path), 0.0, ("inputs", "targets"))


def test_an_empty_training_split_is_one_line_naming_task_and_split(monkeypatch):
    import seqio
    import tensorflow as tf

    from coda_flax.train import run
    empty = tf.data.Dataset.from_tensor_slices({"x": np.zeros((3, 2), np.int32)})  # < a batch
    monkeypatch.setattr(seqio, "get_dataset", lambda *a, **k: empty)
    batches = run.seqio_batches("coda_toy", {"inputs": 8, "targets": 4}, 4, "train")
    with pytest.raises(ValueError, match="task 'coda_toy' split 'train' has no training batch: "
                                         "fewer than batch_size=4 examples"):
        batches(0)


def test_a_typod_macro_reference_in_a_gin_file_is_named(tmp_path):
    from coda_flax.train.gin_config import GinConfigError, parse_gin
    gin_file = tmp_path / "typo.gin"
    gin_file.write_text("include 'runs/finetune.gin'\ntrain.train_steps = %TRAIN_STEPZ\n")
    with pytest.raises(GinConfigError, match=r"gin macro\(s\) %TRAIN_STEPZ are referenced but "
                                             r"never set .*TRAIN_STEPS"):
        parse_gin(["models/tiny.gin", str(gin_file)],
                  ["MODEL_DIR='/x'", "MIXTURE_OR_TASK_NAME='t'", "TASK_FEATURE_LENGTHS={}"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    vocab = prepared_corpus(root)
    config = tiny_config(CodaConfig(reduction=4, adapter_dim=8), vocab_size=400)
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(np.float32)
              for k, s in expected_shapes(config).items()}
    path = str(root / "final")
    save_checkpoint(path, unflatten_params(params), config)
    return path, vocab


def _infer(checkpoint, tmp_path, inputs, *extra):
    path, vocab = checkpoint
    return main(["infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{path}'",
                 f"--gin.INPUTS={inputs}", f"--gin.OUTPUT_PATH='{tmp_path / 'out.jsonl'}'",
                 f"--gin.VOCAB_PATH='{vocab}'", "--gin.INPUT_LENGTH=4", "--gin.TARGET_LENGTH=2",
                 *extra])


@pytest.mark.parametrize("inputs", ["'a string'", "[]", "['ok', 3]"])
def test_infer_refuses_inputs_that_are_not_a_non_empty_list_of_strings(checkpoint, tmp_path,
                                                                       capsys, inputs):
    assert _infer(checkpoint, tmp_path, inputs) == 1
    err = capsys.readouterr().err
    assert f"coda infer: error: SettingError: INPUTS={inputs}: must be a non-empty list of " \
           f"strings (sets infer.inputs)" in err
    assert not os.path.exists(tmp_path / "out.jsonl")


def test_infer_refuses_inputs_longer_than_input_length_and_reports_them_when_allowed(
        checkpoint, tmp_path, capsys):
    from coda_flax.train.run import _truncation
    long = "the king the queen the lord the lady the sword"
    assert _infer(checkpoint, tmp_path, f"['{long}', 'king']") == 1
    err = capsys.readouterr().err
    assert ("1 of 2 inputs are longer than input_length 4 tokens (EOS included; the longest "
            "has") in err and "infer.allow_truncation=True" in err
    examples = [{"inputs": np.ones(n, np.int32)} for n in (3, 9, 5, 4)]
    _truncation(examples, 4, allow=True)
    assert ("[infer] 2 of 4 inputs are longer than input_length 4 tokens (EOS included; the "
            "longest has 9): truncated to 4 tokens." in capsys.readouterr().err)


@pytest.mark.parametrize("owner, field, value", [
    ("ModelConfig", "d_model", "64"), ("ModelConfig", "num_heads", 2.0),
    ("ModelConfig", "num_encoder_layers", True), ("CodaConfig", "adapter_dim", "8"),
    ("CodaConfig", "lora_rank", 1.5), ("CodaConfig", "num_routed", "16")])
def test_a_setting_of_the_wrong_type_is_named_with_its_type(owner, field, value):
    build = {"ModelConfig": tiny_config, "CodaConfig": CodaConfig}[owner]
    with pytest.raises(TypeError, match=rf"^{owner}: {field}.* must be an integer >= \d, got "
                                        rf"{re.escape(repr(value))} \({type(value).__name__}\)"):
        build(**{field: value})


def test_a_reduction_that_is_not_a_number_is_refused():
    for bad in ("3", True, None):
        with pytest.raises(ValueError, match=r"^CodaConfig: reduction must be a number >= 1"):
            CodaConfig(reduction=bad)
