"""SentencePiece vocabularies for the seqio tasks.

T5's public SentencePiece model (gs://t5-data/vocabs/cc_all.32000/sentencepiece.model) cannot be
downloaded everywhere, so every task takes its vocabulary explicitly: a `seqio.Vocabulary`, a path
to a SentencePiece model, or (default) the path in the environment variable `CODA_VOCAB`.

`train_sentencepiece` trains a T5-compatible model on local text: unigram, pad=0, eos=1, unk=2, no
bos; seqio adds the 100 sentinels <extra_id_0..99> on top (ids vocab_size-1 downwards), exactly as
for T5's own vocabulary.
"""

from __future__ import annotations

import os
from typing import Iterable, Union

VOCAB_ENV_VAR = "CODA_VOCAB"
DEFAULT_EXTRA_IDS = 100
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def train_sentencepiece(text_files: Union[str, Iterable[str]], model_prefix: str,
                        vocab_size: int = 8000, *, character_coverage: float = 1.0,
                        model_type: str = "unigram", input_sentence_size: int = 2_000_000,
                        num_threads: int = 2,
                        seed_sentencepiece_size: int = 1_000_000, seed: int = 0) -> str:
    """Trains a T5-compatible SentencePiece model; returns the path of `<model_prefix>.model`.

    text_files: one or more plain-text files, one sentence (or line) per line.
    vocab_size is a soft limit (hard_vocab_limit=False): tiny corpora get a smaller vocabulary
    instead of an error. The 100 sentinel ids are not part of it; seqio adds them.
    """
    import sentencepiece as spm

    files = [text_files] if isinstance(text_files, (str, os.PathLike)) else list(text_files)
    if not files:
        raise ValueError("train_sentencepiece: no text files given")
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"train_sentencepiece: text file not found: {f}")
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(seed)  # deterministic sentence sampling / shuffling
    spm.SentencePieceTrainer.train(
        input=",".join(str(f) for f in files),
        model_prefix=str(model_prefix),
        vocab_size=int(vocab_size),
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        hard_vocab_limit=False,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=num_threads,
        minloglevel=2,
    )
    return f"{model_prefix}.model"


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
