"""The paper's language tasks (section 6 / Table 8 / Table 9) as seqio tasks over TFDS.

    coda_mnli      glue/mnli          accuracy      (validation = validation_matched; also
                                                    validation_matched / validation_mismatched)
    coda_rte       super_glue/rte     accuracy
    coda_boolq     super_glue/boolq   accuracy
    coda_squad     squad/v1.1         EM / F1
    coda_record    super_glue/record  EM / F1 (max over answers, one example per query)
    coda_xsum      xsum               ROUGE-1 / ROUGE-2 / ROUGE-Lsum
    coda_c4_span_corruption  c4/en    (pretraining: T5 span corruption, noise 0.15, mean span 3)

TFDS data is read, never downloaded: a missing dataset raises MissingTfdsDataError at once, with
the command that prepares it. Input lengths are Table 8's (the 98th percentile of the training
inputs); the paper does not list decoding lengths, ours are in TASK_FEATURE_LENGTHS.
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional

import seqio

from coda_flax.tasks import metrics, preprocessors
from coda_flax.tasks.features import TASK_FEATURE_LENGTHS, output_features  # noqa: F401
from coda_flax.tasks.registry import add_task
from coda_flax.tasks.span_corruption import span_corruption
from coda_flax.tasks.tfds_source import TfdsSource
from coda_flax.tasks.vocab import get_vocabulary

# TFDS names with the versions that tensorflow-datasets 4.9 builds (seqio requires a version;
# register_paper_tasks(tfds_names={...}) overrides, e.g. {"coda_c4_span_corruption": "c4/en:3.0.1"}
# for T5's prepared copy of C4).
TFDS_NAMES = {
    "coda_mnli": "glue/mnli:2.0.0",
    "coda_rte": "super_glue/rte:1.0.2",
    "coda_boolq": "super_glue/boolq:1.0.2",
    "coda_squad": "squad/v1.1:3.0.0",
    "coda_record": "super_glue/record:1.0.2",
    "coda_xsum": "xsum:1.1.0",
    "coda_c4_span_corruption": "c4/en:3.1.0",
}
PAPER_TASKS = tuple(TFDS_NAMES)
_FINETUNE_SPLITS = {"train": "train", "validation": "validation"}
_MNLI_SPLITS = {"train": "train", "validation": "validation_matched",
                "validation_matched": "validation_matched",
                "validation_mismatched": "validation_mismatched"}

LABEL_NAMES = {
    "coda_mnli": ("entailment", "neutral", "contradiction"),
    "coda_rte": ("entailment", "not_entailment"),
    "coda_boolq": ("False", "True"),
}


def _token_preprocessors():
    return [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim]


def register_paper_tasks(vocab=None, tfds_data_dir: Optional[str] = None, *,
                         include_pretraining: bool = True,
                         tfds_names: Optional[Mapping[str, str]] = None) -> list[str]:
    """Registers the paper's tasks (names in PAPER_TASKS) with `vocab` (a seqio.Vocabulary, a
    SentencePiece model path, or None for $CODA_VOCAB) reading TFDS data from tfds_data_dir
    (default: $TFDS_DATA_DIR or ~/tensorflow_datasets). Nothing is read until a dataset is asked
    for. Returns the registered names."""
    vocabulary = get_vocabulary(vocab)
    tfds_names = {**TFDS_NAMES, **(tfds_names or {})}
    features = output_features(vocabulary)
    names = []

    def source(task, splits=None):
        return TfdsSource(tfds_names[task], tfds_data_dir=tfds_data_dir,
                          splits=splits or _FINETUNE_SPLITS)

    for task, benchmark, splits in (("coda_mnli", "mnli", _MNLI_SPLITS),
                                    ("coda_rte", "rte", None), ("coda_boolq", "boolq", None)):
        add_task(task, source=source(task, splits), output_features=features,
                 preprocessors=[seqio.map_over_dataset(functools.partial(
                     preprocessors.glue, benchmark_name=benchmark, label_names=LABEL_NAMES[task])),
                     *_token_preprocessors()],
                 postprocess_fn=metrics.strip_postprocessor, metric_fns=[metrics.accuracy])
        names.append(task)

    add_task("coda_squad", source=source("coda_squad"), output_features=features,
             preprocessors=[seqio.map_over_dataset(preprocessors.squad), *_token_preprocessors()],
             postprocess_fn=metrics.qa_postprocessor, metric_fns=[metrics.squad])
    names.append("coda_squad")

    add_task("coda_record", source=source("coda_record"), output_features=features,
             preprocessors=[preprocessors.record, *_token_preprocessors()],
             postprocess_fn=metrics.record_postprocessor, metric_fns=[metrics.record])
    names.append("coda_record")

    add_task("coda_xsum", source=source("coda_xsum", {"train": "train", "validation": "validation",
                                                      "test": "test"}),
             output_features=features,
             preprocessors=[seqio.map_over_dataset(preprocessors.summarize),
                            *_token_preprocessors()],
             postprocess_fn=metrics.strip_postprocessor, metric_fns=[metrics.rouge])
    names.append("coda_xsum")

    if include_pretraining:
        add_task("coda_c4_span_corruption", source=source("coda_c4_span_corruption"),
                 output_features=features,
                 preprocessors=span_corruption_preprocessors("text"), metric_fns=[])
        names.append("coda_c4_span_corruption")
    return names


def span_corruption_preprocessors(text_key: str = "text") -> list:
    """rekey(text -> targets), tokenize, cache placeholder, span_corruption, append EOS (T5's
    c4_v220_span_corruption pipeline)."""
    return [
        functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": text_key}),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        span_corruption,
        seqio.preprocessors.append_eos_after_trim,
    ]
