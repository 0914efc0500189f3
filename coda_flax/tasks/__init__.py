"""seqio tasks of coda_flax: the paper's TFDS-backed language tasks and offline Shakespeare tasks.

    from coda_flax import tasks
    tasks.register_paper_tasks(vocab="/path/spiece.model", tfds_data_dir=...)  # coda_mnli, ...
    tasks.register_offline_tasks(data_dir, vocab_path)  # coda_shakespeare_{span_corruption,...}
    task = tasks.get_task_or_mixture("coda_mnli")
    ds = task.get_dataset(tasks.TASK_FEATURE_LENGTHS["coda_mnli"], split="validation")

Image tasks (vision: easy-VQA, rendered documents, OCR-VQA / DocVQA / Screen2Words from local
copies) and speech tasks (speech: offline Debian / espeak-ng audio, LibriSpeech from a local
copy) read float vectors through features.ContinuousEncDecFeatureConverter. The corpora they read
are downloaded and built by coda_flax.datasets (shakespeare, speech, vision): this package only
registers tasks over them.

Modules: preprocessors (T5 text-to-text formats), span_corruption (T5 pretraining objective),
metrics, tfds_source (read-only TFDS with clear errors), paper / offline / vision / speech
(registration), pix2struct (Table 6's datasets as Pix2Struct's preprocessing writes them),
needle (the needle task's examples), vocab (SentencePiece), registry (lookup).
Attributes are imported lazily so that `coda_flax.tasks.vocab` works without importing
TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TASK_FEATURE_LENGTHS": "features",
    "output_features": "features",
    "register_paper_tasks": "paper",
    "PAPER_TASKS": "paper",
    "TFDS_NAMES": "paper",
    "register_offline_tasks": "offline",
    "OFFLINE_TASKS": "offline",
    "MissingOfflineDataError": "offline",
    "get_task_or_mixture": "registry",
    "registered_names": "registry",
    "UnknownTaskError": "registry",
    "MissingTfdsDataError": "tfds_source",
    "TfdsSource": "tfds_source",
    "train_sentencepiece": "vocab",
    "get_vocabulary": "vocab",
    "register_speech_tasks": "speech",
    "SPEECH_TASKS": "speech",
    "CharVocabulary": "speech",
    "register_vision_tasks": "vision",
    "VISION_TASKS": "vision",
    "register_pix2struct_tasks": "pix2struct",
    "PIX2STRUCT_TASKS": "pix2struct",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        path = _EXPORTS[name]
        module = importlib.import_module(f"coda_flax.tasks.{path}")
        return getattr(module, name)
    raise AttributeError(f"module 'coda_flax.tasks' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
