"""The paper's seqio tasks for T5X's MIXTURE_OR_TASK_MODULE: importing this registers them.

    python -m t5x.train ... --gin.MIXTURE_OR_TASK_MODULE="'coda_flax.t5x.tasks'" \\
        --gin.MIXTURE_OR_TASK_NAME="'coda_rte'" --gin.TASK_FEATURE_LENGTHS="{'inputs': 256, 'targets': 8}"

Registers coda_mnli, coda_rte, coda_boolq, coda_squad, coda_record, coda_xsum and
coda_c4_span_corruption (coda_flax.tasks.register_paper_tasks) with the SentencePiece model in
$CODA_VOCAB, or T5's public one on GCS when it is unset, reading TFDS data from
$TFDS_DATA_DIR (prepared beforehand: nothing is downloaded). Needs seqio and tensorflow-datasets,
not T5X.
"""

from __future__ import annotations

import os

from coda_flax.tasks import register_paper_tasks
from coda_flax.tasks.vocab import VOCAB_ENV_VAR

T5_VOCAB = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"   # + 100 extra ids = 32100

REGISTERED = register_paper_tasks(os.environ.get(VOCAB_ENV_VAR) or T5_VOCAB,
                                  os.environ.get("TFDS_DATA_DIR"))
