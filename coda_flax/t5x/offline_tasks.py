"""Offline seqio tasks for T5X's MIXTURE_OR_TASK_MODULE (no TFDS, no downloads at run time):
importing this registers them.

    python -m t5x.train ... --gin_file=tiny_offline.gin \\
        --gin.MIXTURE_OR_TASK_MODULE="'coda_flax.t5x.offline_tasks'" \\
        --gin.MIXTURE_OR_TASK_NAME="'coda_shakespeare_play'"

Registers coda_shakespeare_play, coda_shakespeare_speaker and coda_shakespeare_span_corruption
(coda_flax.tasks.offline) over the corpus prepared in $CODA_DATA_DIR (default
~/.cache/coda_flax/data; `python scripts/prepare_data.py` prepares it) with the SentencePiece model
prepared next to it. `VOCABULARY` is that vocabulary (+ 100 extra ids); tiny_offline.gin gives it
to the model through `coda_flax.t5x.offline_vocabulary()`, so the model's and the tasks'
vocabularies match. Needs seqio, not T5X.
"""

from __future__ import annotations

import os

import seqio

from coda_flax.tasks.offline import register_offline_tasks

__all__ = ["REGISTERED", "VOCABULARY", "DATA_DIR"]

DATA_DIR = os.environ.get("CODA_DATA_DIR")          # None: coda_flax's default data directory
REGISTERED = register_offline_tasks(DATA_DIR)
VOCABULARY = seqio.get_mixture_or_task(REGISTERED[0]).output_features["targets"].vocabulary
