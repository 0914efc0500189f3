"""SentencePiece vocabularies for the seqio tasks.

T5's public SentencePiece model (gs://t5-data/vocabs/cc_all.32000/sentencepiece.model) cannot be
downloaded everywhere, so every task takes its vocabulary explicitly: a `seqio.Vocabulary`, a path
to a SentencePiece model, or (default) the path in the environment variable `CODA_VOCAB`.

`train_sentencepiece` (coda_flax.datasets.sentencepiece, where the corpus builders call it) trains
a T5-compatible model on local text; seqio adds the 100 sentinels <extra_id_0..99> on top (ids
vocab_size-1 downwards), exactly as for T5's own vocabulary.
"""

from __future__ import annotations

import os

from coda_flax.datasets.sentencepiece import train_sentencepiece  # noqa: F401 (public here)

VOCAB_ENV_VAR = "CODA_VOCAB"
DEFAULT_EXTRA_IDS = 100


def get_vocabulary(vocab=None, *, extra_ids: int = DEFAULT_EXTRA_IDS):
    """A seqio.Vocabulary from `vocab`: a Vocabulary, a model path, or None ($CODA_VOCAB)."""
    import seqio

    if isinstance(vocab, seqio.Vocabulary):
        return vocab
    path = vocab if vocab is not None else os.environ.get(VOCAB_ENV_VAR)
    if not path:
        raise ValueError(
            f"No vocabulary given and ${VOCAB_ENV_VAR} is not set. Pass a SentencePiece model path "
            "(e.g. T5's cc_all.32000/sentencepiece.model copied locally), "
            f"set ${VOCAB_ENV_VAR}, or "
            "train one with coda_flax.tasks.vocab.train_sentencepiece (scripts/prepare_data.py "
            "trains one on the offline Shakespeare corpus).")
    path = os.fspath(path)
    if "://" not in path and not os.path.exists(path):
        raise FileNotFoundError(f"SentencePiece model not found: {path}")
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
