"""LibriSpeech read from its published layout (never downloaded here), for the speech tasks:

    <root>/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <root>/LibriSpeech/<split>/<speaker>/<chapter>/<utterance-id>.flac

root: an argument or $CODA_LIBRISPEECH_DIR (the directory holding LibriSpeech/, or LibriSpeech/
itself). Features are computed on first use and cached in a keyed folder of the data cache
(coda_flax.datasets.cache):

    <data_dir>/speech/librispeech-<key>/    key = a hash of FEATURE_CONFIG and FEATURE_VERSION
        features/<split>/<speaker>/<chapter>/<utterance-id>-<source>.npy
        <task split>/manifest.jsonl, stats.json                       (prepare_librispeech)

<source> is a hash of the .flac's size and modification time, so that a changed recording (or
another copy of LibriSpeech at the same path) is featurised again, never read from a stale file;
other feature settings write another folder.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional, Sequence

import numpy as np

from coda_flax.datasets import cache as data_cache
from coda_flax.datasets.records import write_jsonl
from coda_flax.datasets.speech import (FEATURE_CONFIG, SPEECH_SUBDIR, Log,
                                       MissingSpeechDataError, _atomic_save_npy, compute_features,
                                       manifest_stats)
from coda_flax.datasets.transcripts import normalize_transcript
from coda_flax.frontends.audio import SAMPLE_RATE

LIBRISPEECH_ENV_VAR = "CODA_LIBRISPEECH_DIR"
FEATURE_VERSION = 2          # bump when compute_features changes in a way FEATURE_CONFIG misses
LIBRISPEECH_SPLITS = {  # task split -> LibriSpeech directories (those present are used)
    "train": ("train-clean-100", "train-clean-360", "train-other-500"),
    "validation": ("dev-clean",),
    "dev_other": ("dev-other",),
    "test_clean": ("test-clean",),
    "test_other": ("test-other",),
}
LIBRISPEECH_LAYOUT = ("<root>/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>"
                      ".trans.txt and <utterance-id>.flac, split in train-clean-100, "
                      "train-clean-360, train-other-500, dev-clean, dev-other, test-clean, "
                      "test-other")


def _has_split_dirs(path: str) -> bool:
    names = {n for dirs in LIBRISPEECH_SPLITS.values() for n in dirs}
    return os.path.isdir(path) and any(os.path.isdir(os.path.join(path, n)) for n in names)


def find_librispeech(librispeech_dir: Optional[str] = None) -> str:
    """The LibriSpeech directory holding the split folders: librispeech_dir or
    $CODA_LIBRISPEECH_DIR, either the folder containing LibriSpeech/ or LibriSpeech/ itself."""
    given = librispeech_dir or os.environ.get(LIBRISPEECH_ENV_VAR)
    if not given:
        raise MissingSpeechDataError(
            f"no LibriSpeech directory given: pass librispeech_dir= (--librispeech-dir) or set "
            f"${LIBRISPEECH_ENV_VAR}. Expected layout: {LIBRISPEECH_LAYOUT}. Get it from "
            "https://www.openslr.org/12 (e.g. train-clean-100.tar.gz, dev-clean.tar.gz) and "
            "untar all archives into one directory.")
    for candidate in (os.path.join(given, "LibriSpeech"), given):
        if _has_split_dirs(candidate):
            return candidate
    raise MissingSpeechDataError(
        f"no LibriSpeech splits found in {given} (looked in {os.path.join(given, 'LibriSpeech')} "
        f"and {given}). Expected layout: {LIBRISPEECH_LAYOUT}. Point librispeech_dir or "
        f"${LIBRISPEECH_ENV_VAR} at the directory containing LibriSpeech/.")


def librispeech_split_dirs(root: str, split: str) -> list[str]:
    """Existing LibriSpeech directories of a task split; error if none."""
    if split not in LIBRISPEECH_SPLITS:
        raise ValueError(f"unknown LibriSpeech split '{split}'; known: "
                         f"{', '.join(LIBRISPEECH_SPLITS)}")
    dirs = [os.path.join(root, d) for d in LIBRISPEECH_SPLITS[split]
            if os.path.isdir(os.path.join(root, d))]
    if not dirs:
        raise MissingSpeechDataError(
            f"LibriSpeech split '{split}' needs one of {', '.join(LIBRISPEECH_SPLITS[split])} "
            f"under {root}; found {sorted(os.listdir(root))}. Expected layout: "
            f"{LIBRISPEECH_LAYOUT}.")
    return dirs


def read_librispeech_dir(split_dir: str) -> list[dict]:
    """Utterances of one LibriSpeech directory (e.g. .../LibriSpeech/dev-clean), sorted by id:
    {id, source, speaker, chapter, split (the LibriSpeech name), raw_transcript, transcript,
    audio (absolute .flac path)}. A transcript line without its .flac is an error."""
    out, name = [], os.path.basename(os.path.normpath(split_dir))
    for dirpath, _, files in os.walk(split_dir):
        for trans in sorted(f for f in files if f.endswith(".trans.txt")):
            with open(os.path.join(dirpath, trans), encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    utt, _, text = line.strip().partition(" ")
                    flac = os.path.join(dirpath, utt + ".flac")
                    if not os.path.exists(flac):
                        raise MissingSpeechDataError(
                            f"{os.path.join(dirpath, trans)} lists {utt} but {flac} is missing "
                            "(incomplete LibriSpeech extraction?)")
                    speaker, chapter = (utt.split("-") + ["", ""])[:2]
                    out.append({"id": utt, "source": "librispeech", "speaker": speaker,
                                "chapter": chapter, "split": name, "raw_transcript": text,
                                "transcript": librispeech_transcript(text), "audio": flac})
    if not out:
        raise MissingSpeechDataError(f"no *.trans.txt files under {split_dir}; expected layout: "
                                     f"{LIBRISPEECH_LAYOUT}")
    out.sort(key=lambda r: r["id"])
    return out


def librispeech_transcript(text: str) -> str:
    """LibriSpeech transcripts (uppercase letters, apostrophes, spaces) lowercased as they are,
    so that WER matches published numbers; anything else goes through normalize_transcript."""
    lower = " ".join(text.lower().split())
    return lower if re.fullmatch(r"[a-z' ]*", lower) else (normalize_transcript(text) or "")


def librispeech_records(root: str, split: str) -> list[dict]:
    """All utterances of a task split (train = every train-* directory present)."""
    return [r for d in librispeech_split_dirs(root, split) for r in read_librispeech_dir(d)]


def librispeech_cache_dir(data_dir: Optional[str] = None) -> str:
    """The feature cache's folder for today's feature settings (keyed by them)."""
    return data_cache.dataset_dir(data_dir, f"{SPEECH_SUBDIR}/librispeech",
                                  {"features": FEATURE_CONFIG, "version": FEATURE_VERSION})


def _source_key(audio_path: str) -> str:
    st = os.stat(audio_path)
    return data_cache.settings_key({"bytes": st.st_size, "mtime_ns": st.st_mtime_ns})[:8]


def librispeech_features(record: dict, cache_dir: Optional[str]) -> np.ndarray:
    """Features of a LibriSpeech record, from <cache_dir>/features/<split>/<speaker>/<chapter>/
    <id>-<source>.npy when cached (source: the .flac's size and mtime), else computed from the
    .flac (and cached when cache_dir is writable)."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, "features", record["split"], record["speaker"],
                            record["chapter"],
                            f"{record['id']}-{_source_key(record['audio'])}.npy")
        if os.path.exists(path):
            return np.load(path)
    from coda_flax.frontends.audio import load_waveform

    features = compute_features(load_waveform(record["audio"], SAMPLE_RATE))
    if path:
        try:
            _atomic_save_npy(path, features)
        except OSError:
            pass
    return features


def prepare_librispeech(librispeech_dir: Optional[str] = None, data_dir: Optional[str] = None,
                        *, splits: Optional[Sequence[str]] = None, log: Log = print) -> dict:
    """Precomputes the features of the LibriSpeech splits present (or `splits`) into the cache
    and writes <cache>/<task split>/manifest.jsonl with durations; returns statistics per split."""
    root = find_librispeech(librispeech_dir)
    cache = librispeech_cache_dir(data_dir)
    stats = {"librispeech_dir": root}
    for split in splits or LIBRISPEECH_SPLITS:
        try:
            records = librispeech_records(root, split)
        except MissingSpeechDataError as e:
            if splits:
                raise
            log(f"[speech] LibriSpeech {split}: skipped ({str(e).split('.')[0]})")
            continue
        out = []
        for i, r in enumerate(records):
            features = librispeech_features(r, cache)
            out.append(dict(r, num_frames=int(features.shape[0]),
                            duration=round(features.shape[0] * 0.01, 2)))
            if (i + 1) % 1000 == 0 or i + 1 == len(records):
                log(f"[speech] LibriSpeech {split}: {i + 1}/{len(records)} featurised")
        write_jsonl(os.path.join(cache, split, "manifest.jsonl"), out)
        stats[split] = manifest_stats(out)
    with open(os.path.join(cache, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    return stats


__all__ = ["LIBRISPEECH_ENV_VAR", "LIBRISPEECH_SPLITS", "find_librispeech", "librispeech_records",
           "read_librispeech_dir", "librispeech_cache_dir", "librispeech_features",
           "prepare_librispeech"]
