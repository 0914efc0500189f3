"""Training a T5-compatible SentencePiece vocabulary on local text (unigram, pad=0, eos=1,
unk=2, no bos), for the corpus builders (shakespeare.py) and the seqio tasks
(coda_flax.tasks.vocab, which adds the 100 sentinel ids on top when it loads one).
"""

from __future__ import annotations

import os
from typing import Iterable, Union

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
