"""The vocabularies of the T5X integration, one function each, shared by the gin files and the
tasks modules so that T5X's `verify_matching_vocabs` (model vocabulary == task vocabulary)
holds by construction. Needs seqio, not T5X.

    vocabulary()          T5's SentencePiece model cc_all.32000 + 100 extra ids (32100 ids), or
                          the model in $CODA_VOCAB: t5x/model.gin's VOCABULARY and the paper tasks
                          of coda_flax.t5x.tasks
    offline_vocabulary()  the offline Shakespeare tasks' vocabulary (coda_flax.t5x.offline_tasks):
                          tiny_offline.gin's VOCABULARY
    pix2struct_vocabulary()  the Pix2Struct tasks' (t5x/pix2struct_task.gin's VOCABULARY): as
                          `coda train` reads them, Pix2Struct's SentencePiece model at `path`
                          without extra ids, or seqio.ByteVocabulary() when no path is given
"""

from __future__ import annotations

import os

from coda_flax.tasks.vocab import DEFAULT_EXTRA_IDS, VOCAB_ENV_VAR, get_vocabulary

# T5's public SentencePiece model (32000 pieces); seqio adds the 100 sentinels on top. (The
# cc_all.32000.100extra model has the sentinels inside the model file: the same ids, but a
# different seqio.Vocabulary, which verify_matching_vocabs rejects.)
T5_VOCAB = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"

__all__ = ["T5_VOCAB", "vocabulary", "offline_vocabulary", "pix2struct_vocabulary",
           "continuous_vocabulary"]


def vocabulary(path: str | None = None):
    """seqio.SentencePieceVocabulary(path or $CODA_VOCAB or T5_VOCAB, extra_ids=100)."""
    return get_vocabulary(path or os.environ.get(VOCAB_ENV_VAR) or T5_VOCAB,
                          extra_ids=DEFAULT_EXTRA_IDS)


def offline_vocabulary():
    """The vocabulary of the offline tasks that coda_flax.t5x.offline_tasks registers (the
    SentencePiece model prepared next to the data in $CODA_DATA_DIR); registers them."""
    from coda_flax.t5x import offline_tasks

    return offline_tasks.VOCABULARY


def pix2struct_vocabulary(path: str | None = None):
    """The coda_pix2struct_* tasks' vocabulary, as `coda train` registers them: the SentencePiece
    model at `path` (Pix2Struct's: its ids are the checkpoint's, so no extra ids), else
    seqio.ByteVocabulary()."""
    if path:
        return get_vocabulary(path, extra_ids=0)
    import seqio

    return seqio.ByteVocabulary()


def continuous_vocabulary():
    """The vocabulary of float-vector task inputs (coda_flax.tasks.features.
    continuous_output_features: patches, frames), which T5X's verify_matching_vocabs compares
    with the model's input_vocabulary."""
    import seqio

    from coda_flax.tasks._tf import tf
    return seqio.ContinuousFeature(dtype=tf.float32, rank=2, add_eos=False).vocabulary
