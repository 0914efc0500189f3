"""seqio tasks of coda_flax: the paper's TFDS-backed language tasks and offline Shakespeare tasks.

    from coda_flax import tasks
    tasks.register_paper_tasks(vocab="/path/spiece.model", tfds_data_dir=...)  # coda_mnli, ...
    tasks.register_offline_tasks(data_dir, vocab_path)  # coda_shakespeare_{span_corruption,...}
    task = tasks.get_task_or_mixture("coda_mnli")
    ds = task.get_dataset(tasks.TASK_FEATURE_LENGTHS["coda_mnli"], split="validation")

Image tasks (vision: easy-VQA, rendered documents, OCR-VQA / DocVQA / Screen2Words from local
copies; vision_data prepares the offline ones) and speech tasks (speech: offline Debian /
espeak-ng audio, LibriSpeech from a local copy; speech_data prepares them) read float vectors
through features.ContinuousEncDecFeatureConverter.

Modules: preprocessors (T5 text-to-text formats), span_corruption (T5 pretraining objective),
metrics, tfds_source (read-only TFDS with clear errors), paper / offline (registration),
shakespeare (offline corpus: download, parser, JSONL; no TensorFlow), vocab (SentencePiece),
registry (lookup). Attributes are imported lazily so that `coda_flax.tasks.shakespeare` and
`coda_flax.tasks.vocab` work without importing TensorFlow.
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
    "prepare_shakespeare": "shakespeare",
    "register_speech_tasks": "speech",
    "SPEECH_TASKS": "speech",
    "CharVocabulary": "speech",
    "prepare_offline_speech": "speech_data",
    "MissingSpeechDataError": "speech_data",
    "register_vision_tasks": "vision",
    "VISION_TASKS": "vision",
    "prepare_vision_data": "vision_data",
    "MissingVisionDataError": "vision_data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"coda_flax.tasks.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'coda_flax.tasks' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
