"""Saved models are verified on load: flipped bits in `final/` or a training checkpoint are
refused naming the array; `coda eval|infer|visualize` refuse a damaged `final/`; a non-finite
evaluation loss is an error."""

import gc
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings

import numpy as np
import pytest

import train_helpers as th
from corpus_helpers import prepared_corpus
from coda_flax import CodaConfig, tiny_config
from coda_flax.checkpoints import (expected_shapes, flatten_params, load_checkpoint,
                                   save_checkpoint, unflatten_params)
from coda_flax.checkpoints.integrity import IntegrityError, array_digest, tree_digests
from coda_flax.checkpoints.native import read_orbax_tree
from coda_flax.cli import main


def test_array_digest_is_the_sha256_of_dtype_shape_and_bytes():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    want = hashlib.sha256(b"<f4(2, 3)" + x.tobytes()).hexdigest()
    assert array_digest(x) == want
    assert array_digest(x.T) == hashlib.sha256(b"<f4(3, 2)" + x.T.copy().tobytes()).hexdigest()
    assert tree_digests({"a": {"b": x}, "c": [x]}) == {"a/b": want, "c/0": want}


def _params(vocab_size=64):
    """Random values of the shapes a tiny CoDA config expects (no model, no compilation)."""
    config = tiny_config(CodaConfig(reduction=4, adapter_dim=8), vocab_size=vocab_size)
    rng = np.random.default_rng(0)
    flat = {k: rng.normal(size=s).astype(np.float32) for k, s in expected_shapes(config).items()}
    return config, unflatten_params(flat)


def _files(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names]
    return sorted(out)


def _flip(path, rng):
    data = bytearray(open(path, "rb").read())
    i = int(rng.integers(len(data)))
    data[i] ^= 1 << int(rng.integers(8))
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    config, params = _params(vocab_size=400)
    path = str(tmp_path_factory.mktemp("ck") / "final")
    save_checkpoint(path, params, config)
    return path, flatten_params(params)


def test_every_flip_that_changes_a_value_in_final_is_refused_naming_that_array(final, tmp_path):
    src, original = final
    rng = np.random.default_rng(0)
    files = [f for f in _files(os.path.join(src, "params")) if os.sep + "d" + os.sep in f]
    biggest = max(files, key=os.path.getsize)
    changed_any = 0
    for trial in range(14):
        damaged = str(tmp_path / f"t{trial}")
        shutil.copytree(src, damaged)
        target = biggest if trial % 3 else files[int(rng.integers(len(files)))]
        _flip(damaged + target[len(src):], rng)
        try:                                   # the reference: orbax alone, no digests
            raw = flatten_params(read_orbax_tree(os.path.join(damaged, "params")))
            changed = [k for k in original if original[k].tobytes() != raw[k].tobytes()]
        except ValueError:
            changed = None                     # unreadable: must be refused as well
        if changed == []:
            load_checkpoint(damaged)           # a flip that changes no value passes
            continue
        changed_any += 1
        with pytest.raises(IntegrityError) as e:
            load_checkpoint(damaged)
        assert damaged in str(e.value), str(e.value)
        if changed is not None:                # the array named is one that changed
            named = re.search(r"array (\S+) does not match", str(e.value))
            assert named and named.group(1) in changed, (str(e.value), changed)
    assert changed_any >= 8


def test_a_config_without_digests_is_read_with_a_warning_and_an_edited_digest_is_refused(
        final, tmp_path):
    src, original = final
    path = str(tmp_path / "old")
    shutil.copytree(src, path)
    cfg = json.load(open(os.path.join(path, "config.json")))
    name = sorted(cfg["params_sha256"])[3]
    cfg["params_sha256"][name] = "0" * 64
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(IntegrityError, match=f"array {name} does not match its saved sha256"):
        load_checkpoint(path)
    del cfg["params_sha256"]
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.warns(UserWarning, match="records no params_sha256"):
        _, params = load_checkpoint(path)
    assert flatten_params(params)[name].tobytes() == original[name].tobytes()


@pytest.mark.parametrize("damage", ["values", "chunk_header"])
def test_a_damaged_training_checkpoint_is_set_aside_naming_the_array(tmp_path, damage):
    trainer = th.trainer(tmp_path, total_steps=2, checkpoint_every=1)
    state = trainer.init_state(th.SHAPES)
    for step in (1, 2):                        # checkpoints as the loop writes them
        trainer.save(dict(state, step=step), data_position=step)
    target = _biggest(tmp_path / "checkpoints" / "2" / "state")
    if damage == "values":   # 16 bytes at 3 places (OCDBT files hold bytes no read needs)
        _overwrite(target, places=3)
    else:                    # the first chunk's zstd frame: tensorstore itself cannot decode it
        _overwrite(target, at=[0])
    trainer.checkpoints.reload()
    with pytest.warns(UserWarning) as record:
        restored, position = trainer.restore_latest(state)
    text = " ".join(str(w.message) for w in record)
    array = r"(trainable|frozen|opt_state|rng)/\S+"
    found = {"values": rf"(array {array} does not match|cannot read array {array})",
             "chunk_header": rf"cannot read array {array}"}[damage]
    assert re.search(rf"step 2 .*cannot be read \(IntegrityError: \S+/2/state: {found}", text), text
    assert "TensorStore(" not in text                  # one line, without tensorstore's spec
    assert restored["step"] == 1 and position == 1
    assert [d.split("-")[0] for d in os.listdir(tmp_path / "unusable_checkpoints")] == ["2"]
    trainer.checkpoints.close()


def _biggest(root):
    """The largest array data file of an orbax (OCDBT) directory."""
    return max((f for f in _files(root) if os.sep + "d" + os.sep in f), key=os.path.getsize)


def _overwrite(path, places=1, at=None):
    """16 bytes overwritten at `places` evenly spaced offsets (1: the middle), or at `at`."""
    blob = bytearray(open(path, "rb").read())
    for at in at or [len(blob) * i // (places + 1) for i in range(1, places + 1)]:
        blob[at:at + 16] = bytes(range(200, 216))[:len(blob) - at]
    with open(path, "wb") as f:
        f.write(bytes(blob))


def test_an_undecodable_chunk_in_final_names_its_array_and_leaves_no_late_tracebacks(
        final, tmp_path, monkeypatch):
    src, original = final
    path = str(tmp_path / "damaged")
    shutil.copytree(src, path)
    target = _biggest(os.path.join(path, "params"))
    _overwrite(target, at=range(0, os.path.getsize(target), 16))  # every chunk in the file
    late = []
    monkeypatch.setattr(sys, "unraisablehook", late.append)
    with pytest.raises(IntegrityError) as e:
        load_checkpoint(path)
    named = re.search(r"params: cannot read array ([^\s:]+)", str(e.value))
    assert named and named.group(1) in original, str(e.value)
    assert "TensorStore(" not in str(e.value)
    time.sleep(0.5)                           # reads still running when the error came back
    load_checkpoint(src)                      # the next restore runs orbax's event loop again
    gc.collect()
    assert not [i for i in late if "orbax" in repr(i.object)], [repr(i.object) for i in late]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, prepared_corpus(root)


def _damage(src, tmp_path):
    path = str(tmp_path / "damaged")
    shutil.copytree(src, path)
    _overwrite(_biggest(os.path.join(path, "params")))
    return path


def _error_line(capsys, prefix):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith(prefix)]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_eval_infer_and_visualize_refuse_a_damaged_final_naming_the_array(
        final, corpus, tmp_path, capsys):
    data, vocab = corpus
    damaged = _damage(final[0], tmp_path)
    array = r"array (token_embedder|encoder|decoder)/\S+ does not match its saved sha256"
    eval_args = ["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{damaged}'",
                 "--gin.MIXTURE_OR_TASK_NAME='coda_shakespeare_play'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
                 f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'e'}'", f"--gin.DATA_DIR='{data}'",
                 f"--gin.VOCAB_PATH='{vocab}'", "--gin.BATCH_SIZE=8",
                 "--gin.evaluate.max_examples=8"]
    assert main(eval_args) == 1
    assert re.search(array, _error_line(capsys, "coda eval: error: IntegrityError"))
    assert not os.path.exists(tmp_path / "e" / "eval_results.json")
    assert main(["infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{damaged}'",
                 "--gin.INPUTS=['shakespeare play: LORD A0 the king']",
                 f"--gin.OUTPUT_PATH='{tmp_path / 'p.jsonl'}'", f"--gin.VOCAB_PATH='{vocab}'",
                 "--gin.INPUT_LENGTH=32", "--gin.TARGET_LENGTH=4"]) == 1
    assert re.search(array, _error_line(capsys, "coda infer: error: IntegrityError"))
    assert main(["visualize", "--checkpoint", damaged, "--text", "the king",
                 "--vocab", str(vocab), "--output", str(tmp_path / "v")]) != 0
    assert re.search(array, capsys.readouterr().err)



class _Vocab:
    def decode(self, ids):
        return " ".join(map(str, ids))


class _Task:
    """The parts of a seqio task that evaluate_params reads: two examples, no metrics."""
    name = "toy"
    output_features = {"inputs": type("F", (), {"vocabulary": _Vocab()})(),
                       "targets": type("F", (), {"vocabulary": _Vocab()})()}

    def get_dataset(self, lengths, split, shuffle, num_epochs):
        rows = [{"inputs": np.array([5, 6, 1], np.int32), "targets": np.array([7, 1], np.int32)}
                for _ in range(2)]
        return type("D", (), {"as_numpy_iterator": lambda self: iter(rows)})()


class _NanModel:
    """A model whose teacher-forced loss is NaN (what a NaN parameter gives)."""
    config = type("C", (), {"vocab_size": 16})()
    eos_id = 1

    def eval_fn(self, params, batch):
        return 0.0, {"cross_ent_loss": params["w"] * 0 + np.nan, "weight_sum": 2.0}

    def predict_batch(self, params, batch):
        return batch["decoder_target_tokens"]


def test_a_non_finite_evaluation_loss_is_an_error_not_a_metric():
    from coda_flax.train.run import evaluate_params
    with pytest.raises(FloatingPointError, match="evaluation loss on task 'toy' split "
                                                 "'validation' is nan"):
        evaluate_params(_NanModel(), {"w": np.float32(1.0)}, _Task(), {"inputs": 4, "targets": 2},
                        batch_size=2)
