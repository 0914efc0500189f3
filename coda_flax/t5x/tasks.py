"""The paper's seqio tasks for T5X's MIXTURE_OR_TASK_MODULE: importing this registers them.

    python -m t5x.train ... --gin.MIXTURE_OR_TASK_MODULE="'coda_flax.t5x.tasks'" \\
        --gin.MIXTURE_OR_TASK_NAME="'coda_rte'" --gin.TASK_FEATURE_LENGTHS="{'inputs': 256, 'targets': 8}"

Registers coda_mnli, coda_rte, coda_boolq, coda_squad, coda_record, coda_xsum and
coda_c4_span_corruption (coda_flax.tasks.register_paper_tasks) with
`coda_flax.t5x.vocabulary()`: the SentencePiece model in $CODA_VOCAB, or T5's public
cc_all.32000 one on GCS when it is unset, plus 100 extra ids (the vocabulary coda_model.gin
gives the model, so T5X's verify_matching_vocabs passes). Reads TFDS data from $TFDS_DATA_DIR
(prepared beforehand: nothing is downloaded). Needs seqio and tensorflow-datasets, not T5X.
For tasks that need no TFDS data, see coda_flax.t5x.offline_tasks.
"""

from __future__ import annotations

import os

from coda_flax.t5x.vocab import T5_VOCAB, vocabulary
from coda_flax.tasks import register_paper_tasks

__all__ = ["REGISTERED", "T5_VOCAB"]

REGISTERED = register_paper_tasks(vocabulary(), os.environ.get("TFDS_DATA_DIR"))
