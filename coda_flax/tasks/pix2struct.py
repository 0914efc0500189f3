"""seqio tasks on the TFRecords that Pix2Struct's own preprocessing writes (Table 6's datasets).

google-research/pix2struct's preprocessing/convert_{ocrvqa,docvqa,screen2words}.py write
tf.train.Examples with "image" (PNG bytes; for VQA the question is already rendered as a header
above the image, Pix2Struct section 2.5), "id" and "parse" (every answer / reference summary):

    <data_dir>/ocrvqa/processed/{train,val,test}.tfr*           OCR-VQA        exact match, ANLS
    <data_dir>/docvqa/processed/{train,val,test}.tfr*           DocVQA         ANLS, exact match
    <data_dir>/screen2words/processed/{train,dev,test}.tfr*     Screen2Words   CIDEr

(data_dir is Pix2Struct's $PIX2STRUCT_DIR/data). Tasks: coda_pix2struct_ocrvqa / _docvqa /
_screen2words. inputs: Pix2Struct patches [max_patches, 2 + 16*16*3] (Table 8: 4096 for all
three; coda_flax.frontends.patches, which matches Pix2StructImageProcessor); targets: the first
"parse" (Pix2Struct samples one at random for training; the first keeps evaluation
deterministic), "answers": all of them, for the metrics. The targets' vocabulary must be the
model's: Pix2Struct's SentencePiece model (seqio.SentencePieceVocabulary of its
sentencepiece.model) for a converted Pix2Struct checkpoint.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

import seqio

from coda_flax.datasets.vision import MissingVisionDataError
from coda_flax.tasks import metrics
from coda_flax.tasks._tf import tf
from coda_flax.tasks.features import continuous_output_features
from coda_flax.tasks.registry import add_task
from coda_flax.tasks.vision import tf_patchify

DATA_DIR_ENV_VAR = "CODA_PIX2STRUCT_DATA_DIR"
MAX_PATCHES = 4096                   # Table 8: input length 4096 for OCR-VQA, DocVQA, Screen2Words
TARGET_LENGTH = 128
PIX2STRUCT_TASKS = {
    "coda_pix2struct_ocrvqa": dict(
        subdir="ocrvqa/processed", metric_fns=[metrics.exact_match, metrics.anls],
        splits={"train": "train.tfr*", "validation": "val.tfr*", "test": "test.tfr*"}),
    "coda_pix2struct_docvqa": dict(
        subdir="docvqa/processed", metric_fns=[metrics.anls, metrics.exact_match],
        splits={"train": "train.tfr*", "validation": "val.tfr*", "test": "test.tfr*"}),
    "coda_pix2struct_screen2words": dict(
        subdir="screen2words/processed", metric_fns=[metrics.cider],
        splits={"train": "train.tfr*", "validation": "dev.tfr*", "test": "test.tfr*"}),
}
FEATURE_DESCRIPTION = {       # pix2struct/tasks.py
    "id": tf.io.FixedLenFeature([], tf.string, default_value="no-id"),
    "image": tf.io.FixedLenFeature([], tf.string),
    "parse": tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
}


def data_dir_of(data_dir: Optional[str] = None) -> str:
    """data_dir, else $CODA_PIX2STRUCT_DATA_DIR, else $PIX2STRUCT_DIR/data ("" when none)."""
    if data_dir:
        return data_dir
    if os.environ.get(DATA_DIR_ENV_VAR):
        return os.environ[DATA_DIR_ENV_VAR]
    return os.path.join(os.environ["PIX2STRUCT_DIR"], "data") if os.environ.get(
        "PIX2STRUCT_DIR") else ""


def split_files(name: str, split: str, data_dir: Optional[str] = None) -> list[str]:
    """The TFRecord files of a task's split; MissingVisionDataError naming the pattern and the
    Pix2Struct script that writes them when there are none."""
    spec = PIX2STRUCT_TASKS[name]
    root = data_dir_of(data_dir)
    pattern = os.path.join(root, spec["subdir"], spec["splits"][split])
    files = sorted(glob.glob(pattern)) if root else []
    if not files:
        dataset = spec["subdir"].split("/")[0]
        raise MissingVisionDataError(
            f"{name}: no TFRecords match {pattern if root else spec['subdir'] + '/...'} "
            f"({'data_dir ' + repr(root) if root else 'no data_dir given'}). Write them with "
            f"Pix2Struct's preprocessing (python -m pix2struct.preprocessing.convert_{dataset} "
            f"--data_dir=<raw {dataset} data>; it writes <raw dir>/processed/) and pass the "
            f"directory holding {dataset}/processed/ as data_dir= or ${DATA_DIR_ENV_VAR}.")
    return files


def _source(name: str, data_dir: Optional[str]) -> seqio.FunctionDataSource:
    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        files = tf.data.Dataset.from_tensor_slices(split_files(name, split, data_dir))
        if shuffle_files:
            files = files.shuffle(1024, seed=seed)
        ds = files.interleave(tf.data.TFRecordDataset, cycle_length=1)
        return ds.map(lambda r: tf.io.parse_single_example(r, FEATURE_DESCRIPTION))
    return seqio.FunctionDataSource(dataset_fn, splits=tuple(PIX2STRUCT_TASKS[name]["splits"]))


@seqio.map_over_dataset
def _answers(ex):
    """"parse" -> "answers" (all) and "targets" (the first)."""
    parse = ex["parse"]
    first = tf.cond(tf.size(parse) > 0, lambda: parse[0], lambda: tf.constant(""))
    return {"id": ex["id"], "image": ex["image"], "answers": parse, "targets": first}


def _patches(max_patches: int, patch_size: int):
    @seqio.map_over_dataset
    def fn(ex):
        image = tf.io.decode_image(ex["image"], channels=3, expand_animations=False)
        return dict({k: v for k, v in ex.items() if k != "image"},
                    inputs=tf_patchify(image, max_patches, patch_size))
    return fn


def register_pix2struct_tasks(data_dir: Optional[str] = None, *, vocabulary=None,
                              max_patches: int = MAX_PATCHES, patch_size: int = 16,
                              tasks=tuple(PIX2STRUCT_TASKS)) -> list[str]:
    """Registers the coda_pix2struct_* tasks (module docstring); returns their names.

    data_dir: the directory holding {ocrvqa,docvqa,screen2words}/processed/ (default
    $CODA_PIX2STRUCT_DATA_DIR, then $PIX2STRUCT_DIR/data); nothing is read until a dataset is
    asked for. vocabulary: of the targets (default seqio.ByteVocabulary(); Pix2Struct's
    SentencePiece for converted Pix2Struct checkpoints). max_patches / patch_size: the
    encoder's input length and ModelConfig.patch_size."""
    unknown = set(tasks) - set(PIX2STRUCT_TASKS)
    if unknown:
        raise ValueError(f"unknown Pix2Struct tasks {sorted(unknown)}; known: "
                         f"{sorted(PIX2STRUCT_TASKS)}.")
    features = continuous_output_features(
        seqio.ByteVocabulary() if vocabulary is None else vocabulary)
    for name in tasks:
        add_task(name, source=_source(name, data_dir), output_features=features,
                 preprocessors=[_answers, seqio.preprocessors.tokenize,
                                _patches(max_patches, patch_size), seqio.CacheDatasetPlaceholder(),
                                seqio.preprocessors.append_eos_after_trim],
                 postprocess_fn=metrics.answers_postprocessor,
                 metric_fns=PIX2STRUCT_TASKS[name]["metric_fns"])
    return list(tasks)


def feature_lengths(max_patches: int = MAX_PATCHES) -> dict[str, int]:
    """The task_feature_lengths of every coda_pix2struct_* task."""
    return {"inputs": max_patches, "targets": TARGET_LENGTH}
