"""seqio tasks of the speech models (paper section 6: CoDA on a speech encoder with a CTC head).

    coda_speech_offline   the offline corpus of coda_flax.datasets.speech (Debian asterisk
                          prompts + pocketsphinx test clips + optional espeak-ng sentences);
                          splits train / validation
    coda_librispeech      LibriSpeech from a local copy: train (train-clean-100 + train-clean-360
                          + train-other-500, those present), validation (dev-clean), dev_other,
                          test_clean, test_other

Examples: "inputs" float32 [frames, 1 + 80] (column 0 the 1-based frame index, then log-mel;
coda_flax.frontends.audio), "targets" int32 character ids of CharVocabulary without EOS (CTC
labels), "targets_pretokenized" the transcript (WER / CER are computed on it), plus "id", "speaker",
"source". Read them with coda_flax.tasks.features.ContinuousEncDecFeatureConverter. Examples
longer than the requested feature lengths are dropped (truncating audio or transcript would
make the CTC label wrong), so evaluate long utterances with longer lengths (LibriSpeech: up to
~35 s = 3500 frames, ~600 characters).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np
import seqio

from coda_flax.tasks import metrics
from coda_flax.datasets import librispeech as ls
from coda_flax.datasets import provenance
from coda_flax.datasets import speech as sd
from coda_flax.datasets import transcripts
from coda_flax.datasets.cache import AmbiguousDatasetError
from coda_flax.tasks._tf import tf
from coda_flax.tasks.features import TASK_FEATURE_LENGTHS, continuous_output_features
from coda_flax.tasks.registry import add_task

SPEECH_TASKS = ("coda_speech_offline", "coda_librispeech")
# inputs: 10 ms frames; targets: characters (lengths in coda_flax.tasks.features: offline 1600
# frames / 320 characters, LibriSpeech Table 8's 3200 frames / 600 characters at ~15 per second).
SPEECH_TASK_FEATURE_LENGTHS = {name: TASK_FEATURE_LENGTHS[name] for name in SPEECH_TASKS}
OFFLINE_SPLITS = ("train", "validation")


class CharVocabulary(seqio.Vocabulary):
    """Characters of English transcripts for CTC: id 0 = padding and CTC blank, 1 = space,
    2 = apostrophe, 3..28 = a..z (vocab_size 29). No EOS, no UNK: use add_eos=False.

    Encoding lowercases; every character outside the alphabet (digits, punctuation, hyphens,
    accented letters) becomes a space, runs of spaces collapse and the ends are stripped (the
    data pipeline already spells numbers and strips accents: datasets.transcripts.normalize_transcript).
    Decoding drops ids 0 and any id outside the vocabulary.
    """

    ALPHABET = transcripts.ALPHABET

    def __init__(self):
        super().__init__(extra_ids=0)

    @property
    def eos_id(self) -> Optional[int]:
        return None

    @property
    def unk_id(self) -> Optional[int]:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return len(self.ALPHABET) + 1

    def normalize(self, s: str) -> str:
        """What encode keeps of a string: lowercase alphabet, single spaces, stripped."""
        s = s.decode("utf-8") if isinstance(s, bytes) else str(s)
        out = "".join(c if c in self.ALPHABET else " " for c in s.lower())
        return " ".join(out.split())

    def _encode(self, s: str) -> list[int]:
        return [self.ALPHABET.index(c) + 1 for c in self.normalize(s)]

    def _decode(self, ids) -> str:
        n = len(self.ALPHABET)
        return "".join(self.ALPHABET[int(i) - 1] for i in ids if 0 < int(i) <= n)

    def _encode_tf(self, s):
        s = tf.strings.lower(s, encoding="utf-8")
        s = tf.strings.strip(tf.strings.regex_replace(s, "[^a-z']+", " "))
        codes = tf.strings.unicode_decode(s, "UTF-8")  # ASCII only at this point

        def to_ids(c):
            return tf.where(c == ord(" "), 1, tf.where(c == ord("'"), 2, c - ord("a") + 3))

        if isinstance(codes, tf.RaggedTensor):
            return tf.ragged.map_flat_values(to_ids, codes)
        return tf.cast(to_ids(codes), tf.int32)

    def _decode_tf(self, ids):
        table = tf.constant([""] + list(self.ALPHABET))
        ids = tf.cast(ids, tf.int32)
        valid = (ids > 0) & (ids < len(table))
        chars = tf.gather(table, tf.where(valid, ids, 0))
        return tf.strings.reduce_join(chars, axis=-1)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocabulary) and other.ALPHABET == self.ALPHABET

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.ALPHABET))


def speech_output_features(vocabulary: Optional[seqio.Vocabulary] = None) -> dict:
    """Float frames in, CTC character labels (no EOS) out."""
    return continuous_output_features(vocabulary or CharVocabulary(), add_eos=False)


# ----------------------------------------------------------------------------- sources

def _signature(feature_dim: int) -> dict:
    return {"inputs": tf.TensorSpec([None, feature_dim], tf.float32),
            "targets": tf.TensorSpec([], tf.string), "id": tf.TensorSpec([], tf.string),
            "speaker": tf.TensorSpec([], tf.string), "source": tf.TensorSpec([], tf.string)}


def _checked(features: np.ndarray, record: dict, feature_dim: int) -> np.ndarray:
    if features.ndim != 2 or features.shape[1] != feature_dim:
        raise ValueError(f"features of {record['id']} have shape {features.shape}, expected "
                         f"[frames, {feature_dim}]; rebuild the cache (prepare_speech_data.py "
                         "--force) or register the tasks with the matching feature_dim.")
    return features.astype(np.float32, copy=False)


def _generator_dataset(records_fn, load_fn, feature_dim: int, split: str, shuffle: bool,
                       seed: Optional[int]) -> tf.data.Dataset:
    records = records_fn(split)  # raised here, eagerly, so missing data gives a clear error

    def gen():
        for ex in sd.iterate_examples(records, load_fn, shuffle=shuffle, seed=seed):
            ex["inputs"] = _checked(ex["inputs"], ex, feature_dim)
            yield ex

    return tf.data.Dataset.from_generator(gen, output_signature=_signature(feature_dim))


@functools.lru_cache(maxsize=8)
def _offline_by_split(manifest: str, mtime: float) -> dict:
    del mtime  # cache key only
    by_split = {s: [] for s in OFFLINE_SPLITS}
    for r in sd.read_jsonl(manifest):
        by_split.setdefault(r["split"], []).append(r)
    return by_split


def _offline_root(data_dir: Optional[str]):
    """sd.speech_dir, or the AmbiguousDatasetError it raised (raised when the data is read)."""
    try:
        return sd.speech_dir(data_dir)
    except AmbiguousDatasetError as e:
        return e


def offline_source(data_dir: Optional[str] = None,
                   feature_dim: int = sd.FEATURE_DIM) -> seqio.FunctionDataSource:
    """The offline manifest (<data_dir>/speech/manifest.jsonl) as a seqio source; features are
    read from the precomputed .npy files."""
    root = _offline_root(data_dir)
    manifest = os.path.join(root, "manifest.jsonl") if isinstance(root, str) else ""

    def records(split):
        if not isinstance(root, str):        # several prepared settings: which one?
            raise root
        if not os.path.exists(manifest):
            sd.read_manifest(data_dir)  # raises MissingSpeechDataError with the fix
        return _offline_by_split(manifest, os.path.getmtime(manifest)).get(split, [])

    def load(record):
        return np.load(os.path.join(root, record["features"]))

    def dataset_fn(split, shuffle_files=False, seed=None):
        return _generator_dataset(records, load, feature_dim, split, shuffle_files, seed)

    counts = None
    if os.path.exists(manifest):
        by_split = _offline_by_split(manifest, os.path.getmtime(manifest))
        counts = {s: len(by_split.get(s, [])) for s in OFFLINE_SPLITS}
    return seqio.FunctionDataSource(dataset_fn, splits=OFFLINE_SPLITS, num_input_examples=counts)


def librispeech_source(librispeech_dir: Optional[str] = None, data_dir: Optional[str] = None,
                       feature_dim: int = sd.FEATURE_DIM,
                       cache_features: bool = True) -> seqio.FunctionDataSource:
    """LibriSpeech read from its published layout (librispeech_dir or $CODA_LIBRISPEECH_DIR,
    resolved when a dataset is asked for); features from the cache of prepare_librispeech, else
    computed from the .flac files (and cached when cache_features)."""
    cache = ls.librispeech_cache_dir(data_dir) if cache_features else None

    def records(split):
        root = ls.find_librispeech(librispeech_dir)
        return ls.librispeech_records(root, split)

    def dataset_fn(split, shuffle_files=False, seed=None):
        return _generator_dataset(records, functools.partial(ls.librispeech_features,
                                                             cache_dir=cache),
                                  feature_dim, split, shuffle_files, seed)

    return seqio.FunctionDataSource(dataset_fn, splits=tuple(ls.LIBRISPEECH_SPLITS))


# ----------------------------------------------------------------------------- preprocessors

def filter_by_length(dataset: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
    """Drops examples with more frames or target characters than the feature lengths (seqio
    would otherwise truncate them and the CTC labels would no longer match the audio)."""
    if not sequence_length:
        return dataset
    max_inputs = sequence_length.get("inputs")
    max_targets = sequence_length.get("targets")

    def keep(ex):
        ok = tf.constant(True)
        if max_inputs:
            ok &= tf.shape(ex["inputs"])[0] <= max_inputs
        if max_targets:
            ok &= tf.shape(ex["targets"])[0] <= max_targets
        return ok

    return dataset.filter(keep)


def drop_empty_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """CTC needs at least one label."""
    return dataset.filter(lambda ex: tf.size(ex["targets"]) > 0)


def speech_preprocessors() -> list:
    return [seqio.preprocessors.tokenize, drop_empty_targets, filter_by_length]


def register_speech_tasks(data_dir: Optional[str] = None, librispeech_dir: Optional[str] = None,
                          *, vocabulary: Optional[seqio.Vocabulary] = None,
                          feature_dim: int = sd.FEATURE_DIM,
                          cache_librispeech_features: bool = True) -> list[str]:
    """Registers coda_speech_offline (the corpus prepared under <data_dir>/speech, data_dir
    default $CODA_DATA_DIR or ~/.cache/coda_flax/data; bound to its dataset folder,
    coda_flax.datasets.provenance) and coda_librispeech (librispeech_dir or $CODA_LIBRISPEECH_DIR).
    Nothing is read until a dataset is asked for; missing data then raises
    datasets.speech.MissingSpeechDataError naming the fix. Returns the registered names."""
    features = speech_output_features(vocabulary)
    common = dict(output_features=features, preprocessors=speech_preprocessors(),
                  postprocess_fn=metrics.strip_postprocessor, metric_fns=[metrics.wer,
                                                                          metrics.cer])
    add_task("coda_speech_offline", source=offline_source(data_dir, feature_dim), **common)
    root = _offline_root(data_dir)
    provenance.bind("coda_speech_offline", [root] if isinstance(root, str) else [])
    add_task("coda_librispeech",
             source=librispeech_source(librispeech_dir, data_dir, feature_dim,
                                       cache_librispeech_features), **common)
    return list(SPEECH_TASKS)


MissingSpeechDataError = sd.MissingSpeechDataError

__all__ = ["SPEECH_TASKS", "SPEECH_TASK_FEATURE_LENGTHS", "CharVocabulary",
           "speech_output_features", "register_speech_tasks", "offline_source",
           "librispeech_source", "filter_by_length", "MissingSpeechDataError"]
