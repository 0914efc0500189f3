"""The paper's seqio tasks for T5X, registered from gin (paper_task) or on import.

gin (t5x/tasks/*.gin, t5x/runs/pretrain.gin): the data directory and the dataset versions are
settings, read when T5X builds its datasets:

    MIXTURE_OR_TASK_NAME = @coda_t5x.paper_task()
    coda_t5x.paper_task:
      name = %PAPER_TASK                 # e.g. 'coda_rte'
      vocabulary = %VOCABULARY           # the model's (t5x/model.gin), so they match
      tfds_data_dir = %TFDS_DATA_DIR     # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
      tfds_names = %TFDS_NAMES           # e.g. {'coda_c4_span_corruption': 'c4/en:3.0.1'}

Import (T5X's MIXTURE_OR_TASK_MODULE = 'coda_flax.t5x.tasks'): registers coda_mnli, coda_rte,
coda_boolq, coda_squad, coda_record, coda_xsum and coda_c4_span_corruption
(coda_flax.tasks.register_paper_tasks) with `coda_flax.t5x.vocabulary()` ($CODA_VOCAB, or T5's
public cc_all.32000 model) reading $TFDS_DATA_DIR, with the default versions
(coda_flax.tasks.paper.TFDS_NAMES).

The vision tasks of Table 6 (coda_pix2struct_ocrvqa / _docvqa / _screen2words: Pix2Struct's
TFRecords under a data directory, coda_flax.tasks.pix2struct) register from gin the same way
(t5x/pix2struct_task.gin, included by t5x/tasks/{ocrvqa,docvqa,screen2words}.gin):

    MIXTURE_OR_TASK_NAME = @coda_t5x.pix2struct_task()
    coda_t5x.pix2struct_task:
      name = %PAPER_TASK                 # e.g. 'coda_pix2struct_docvqa'
      vocabulary = %VOCABULARY           # coda_t5x.pix2struct_vocabulary(VOCAB_PATH)
      data_dir = %DATA_DIR               # None: $CODA_PIX2STRUCT_DATA_DIR, $PIX2STRUCT_DIR/data
      feature_lengths = %TASK_FEATURE_LENGTHS     # inputs = max patches (Table 8: 4096)

TFDS data is read, never downloaded. Needs seqio and tensorflow-datasets, not T5X. For tasks
that need no TFDS data, see coda_flax.t5x.offline_tasks.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

from coda_flax.t5x import vocab
from coda_flax.t5x.vocab import T5_VOCAB
from coda_flax.tasks import register_paper_tasks
from coda_flax.tasks.paper import PAPER_TASKS, TFDS_NAMES
from coda_flax.tasks.pix2struct import PIX2STRUCT_TASKS, register_pix2struct_tasks

__all__ = ["REGISTERED", "T5_VOCAB", "paper_task", "pix2struct_task"]


def paper_task(name: Optional[str], vocabulary=None, tfds_data_dir: Optional[str] = None,
               tfds_names: Optional[Mapping[str, str]] = None) -> str:
    """Registers the paper's tasks with `vocabulary` (default `coda_flax.t5x.vocabulary()`),
    reading TFDS data from tfds_data_dir with the TFDS versions of tfds_names (task ->
    'name:version', over TFDS_NAMES); returns `name`, one of PAPER_TASKS."""
    if name is None:
        raise ValueError("paper_task: no task given; add a task file (--gin_file="
                         "t5x/tasks/rte.gin) or --gin.PAPER_TASK=\"'coda_rte'\".")
    if name not in PAPER_TASKS:
        raise ValueError(f"paper_task: unknown task {name!r}; the paper's tasks are "
                         f"{', '.join(PAPER_TASKS)}.")
    unknown = sorted(set(tfds_names or {}) - set(TFDS_NAMES))
    if unknown:
        raise ValueError(f"paper_task: tfds_names names unknown tasks {unknown}; give "
                         f"versions for {', '.join(TFDS_NAMES)}, e.g. "
                         f"{{'coda_c4_span_corruption': 'c4/en:3.0.1'}}.")
    register_paper_tasks(vocabulary if vocabulary is not None else vocab.vocabulary(),
                         tfds_data_dir, tfds_names=dict(tfds_names or {}))
    return name


def pix2struct_task(name: Optional[str], vocabulary=None, data_dir: Optional[str] = None,
                    feature_lengths: Optional[Mapping[str, int]] = None) -> str:
    """Registers the coda_pix2struct_* tasks with `vocabulary` (default
    `coda_flax.t5x.vocab.pix2struct_vocabulary()`), reading Pix2Struct's TFRecords under
    data_dir, with feature_lengths["inputs"] patches per image (the model's encoder length);
    returns `name`, one of PIX2STRUCT_TASKS."""
    if name not in PIX2STRUCT_TASKS:
        raise ValueError(f"pix2struct_task: unknown task {name!r}; the Pix2Struct tasks are "
                         f"{', '.join(PIX2STRUCT_TASKS)} (t5x/tasks/{{ocrvqa,docvqa,"
                         f"screen2words}}.gin set one).")
    if not feature_lengths or "inputs" not in feature_lengths:
        raise ValueError(f"pix2struct_task: feature_lengths must give 'inputs' (the patches per "
                         f"image, e.g. TASK_FEATURE_LENGTHS = {{'inputs': 4096, 'targets': "
                         f"128}}), got {feature_lengths!r}.")
    register_pix2struct_tasks(data_dir, vocabulary=(vocabulary if vocabulary is not None
                                                    else vocab.pix2struct_vocabulary()),
                              max_patches=int(feature_lengths["inputs"]))
    return name


REGISTERED = register_paper_tasks(vocab.vocabulary(), os.environ.get("TFDS_DATA_DIR"))
