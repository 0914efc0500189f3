"""The routing task "who got it?" (its examples): a one-sentence needle at a random offset in
real filler text.

    who got it: <Shakespeare lines ...> Brutus gave the crown to Hector. <... Shakespeare lines>
    -> Hector

The needle names a giver and a receiver from NAMES (never both the same) and always starts past
the first `min_offset` tokens (default ceil(n / 3): past the k tokens that truncation, first_k,
keeps at r = 3 and r = 5); everything else is real text from the Shakespeare corpus, with every
line that mentions one of the names left out, so the needle is the only evidence.

Why this task needs learned routing (and not only the decoder): T5 has no absolute position
embeddings, and the decoder's cross-attention has no position bias. A token that no encoder layer
routes is a function of its identity only (embedding + position-wise adapters), so the decoder
sees the unrouted tokens as a bag. "Brutus gave the crown to Hector" and "Hector gave the crown
to Brutus" are the same bag: without a frozen layer processing the needle (relative-position
attention), the best possible accuracy is 50% (pick one of the two names), while the majority
floor is 1 / len(NAMES). A router that sends the needle through the frozen layers can reach 100%.

The other question, "who gave it?" (target: the giver; QUESTIONS), is built the same way into its
own files. The demo pretrains its backbone on it (mixed with span corruption, its needle anywhere
in the input) and finetunes on "who got it?": the backbone learns who did what to whom, as a
pretrained T5 does from its data, and the adaptation asks the other question with the needle
where truncation never sees it.

Files (datasets of coda_flax.datasets.cache: <data_dir>/shakespeare/needle-<key>/ and
needle_gave-<key>/, key = a hash of the settings below and of the vocabulary's and corpus'
hashes, each with a manifest.json):
    needle.jsonl       id, split, text (the whole input), target (the receiver), giver,
                       receiver, needle_start / needle_end (token offsets of the needle sentence
                       in the tokenised input, without EOS), num_tokens
    needle_stats.json  the settings it was built with and the counts
    needle_gave.jsonl, needle_gave_stats.json    the same for "who gave it?" (target: the giver)
Splits follow the corpus (the filler of validation examples comes from validation scenes) and
are stratified: every receiver appears equally often in each split.
Pure Python + SentencePiece (no TensorFlow); the seqio task is registered in tasks.offline.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from typing import Callable, Optional, Sequence

from coda_flax.datasets import cache
from coda_flax.datasets.fetch import default_data_dir
from coda_flax.datasets.records import read_jsonl, write_jsonl
from coda_flax.datasets.shakespeare import CORPUS_SUBDIR

NEEDLE_FILE = "needle.jsonl"
NEEDLE_STATS = "needle_stats.json"
NEEDLE_FORMAT_VERSION = 2
# question -> (prompt, the record field that answers it)
QUESTIONS = {"got": ("who got it:", "receiver"), "gave": ("who gave it:", "giver")}
PROMPT = QUESTIONS["got"][0]
# question -> (examples file, stats file)
NEEDLE_FILES = {"got": (NEEDLE_FILE, NEEDLE_STATS),
                "gave": ("needle_gave.jsonl", "needle_gave_stats.json")}
# question -> its dataset (coda_flax.datasets.cache): <data_dir>/shakespeare/needle[_gave]-<key>
NEEDLE_DATASETS = {"got": "shakespeare/needle", "gave": "shakespeare/needle_gave"}


def _question(question: str) -> tuple[str, str]:
    """(prompt, answer field) of a question; a ValueError naming the choices otherwise."""
    if question not in QUESTIONS:
        raise ValueError(f"unknown question {question!r}; choose one of {sorted(QUESTIONS)}")
    return QUESTIONS[question]
# single pieces in the demo's 2000-piece Shakespeare vocabulary
NAMES = ("Hamlet", "Antonio", "Rosalind", "Falstaff", "Brutus", "Caesar", "Cassio", "Hector")
OBJECTS = ("the crown", "a letter", "the ring", "a sword", "the key", "a purse")
VERBS = ("gave", "sent", "sold", "threw", "lent", "passed")


def needle_sentence(giver: str, receiver: str, verb: str, obj: str) -> str:
    return f"{giver} {verb} {obj} to {receiver}."


def longest_needle(encode: Callable[[str], list], names: Sequence[str]) -> int:
    """Tokens of the longest needle sentence over every giver, receiver, verb and object."""
    return max(len(encode(" " + needle_sentence(g, r, v, o)))
               for g in names for r in names for v in VERBS for o in OBJECTS)


def word_token_counter(encode: Callable[[str], list]) -> Callable[[str], int]:
    """word -> its token count, cached. SentencePiece splits at spaces, so a text's tokens are
    the concatenation of its words' tokens. The counts seen so far are in `tokens.cache`."""
    cache: dict = {}

    def tokens(word: str) -> int:
        if word not in cache:
            cache[word] = len(encode(" " + word))
        return cache[word]
    tokens.cache = cache
    return tokens


def filler_lines(scenes: Sequence[dict], names: Sequence[str]) -> dict:
    """{split: [list of lines of one scene, ...]} without the lines that mention a name."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE)
    out = {"train": [], "validation": []}
    for scene in scenes:
        lines = [line.split(": ", 1)[-1].strip() for line in scene["text"].split("\n")]
        lines = [line for line in lines if line and not pattern.search(line)]
        if lines and scene.get("split", "train") in out:
            out[scene["split"]].append(lines)
    return out


def build_needle_examples(scenes: Sequence[dict], encode: Callable[[str], list], *,
                          input_length: int, num_train: int, num_validation: int,
                          min_offset: Optional[int] = None, names: Sequence[str] = NAMES,
                          question: str = "got", seed: int = 0) -> list[dict]:
    """The examples of both splits (see the module docstring).

    question: "got" (who got it? -> the receiver) or "gave" (who gave it? -> the giver); the
    target name is stratified over the splits.
    encode: text -> token ids (the task's SentencePiece model, without EOS). input_length: the
    encoder length n; inputs take at most n - 1 tokens (EOS is appended). min_offset: the first
    token of the needle is at an offset >= this (default ceil(n / 3); 0: anywhere after the
    prompt); offsets are drawn
    uniformly from [min_offset, n - 1 - needle length]."""
    if len(names) < 2:
        raise ValueError(f"need at least two names, got {list(names)}")
    prompt, answer = _question(question)
    prompt_len = len(encode(prompt))
    min_offset = math.ceil(input_length / 3) if min_offset is None else int(min_offset)
    if min_offset == 0:                                    # anywhere after the prompt
        min_offset = prompt_len
    longest = longest_needle(encode, names)
    if not prompt_len <= min_offset <= input_length - 1 - longest:
        raise ValueError(f"input_length={input_length} leaves no room for a needle of up to "
                         f"{longest} tokens at offset >= {min_offset} (prompt: {prompt_len} "
                         f"tokens); use a longer input or a smaller min_offset.")
    filler = filler_lines(scenes, names)
    tokens = word_token_counter(encode)
    rng = random.Random(seed)
    out = []
    for split, count in (("train", num_train), ("validation", num_validation)):
        if count and not filler[split]:
            raise ValueError(f"no filler text for split {split!r} (no scenes in that split).")
        for i in range(count):
            target = names[i % len(names)]                       # stratified
            other = rng.choice([n for n in names if n != target])
            giver, receiver = (other, target) if answer == "receiver" else (target, other)
            needle = needle_sentence(giver, receiver, rng.choice(VERBS), rng.choice(OBJECTS))
            needle_len = len(encode(" " + needle))
            target_offset = rng.randint(min_offset, input_length - 1 - needle_len)
            while True:                                   # a rare overshoot: another start
                scene = rng.choice(filler[split])
                start = rng.randrange(len(scene))
                words = [w for line in scene[start:] + scene[:start] for w in line.split()]
                while len(words) < 4 * input_length:               # short scenes: wrap around
                    words += words
                before, used, j = [], prompt_len, 0
                while used < target_offset:
                    before.append(words[j])
                    used += tokens(words[j])
                    j += 1
                if used + needle_len > input_length - 1 and before:   # the last word overshot
                    used -= tokens(before.pop())
                    j -= 1
                if min_offset <= used <= input_length - 1 - needle_len:
                    break
            needle_start, needle_end = used, used + needle_len
            after, total = [], needle_end
            while total + tokens(words[j]) <= input_length - 1:
                after.append(words[j])
                total += tokens(words[j])
                j += 1
            text = " ".join([prompt, *before, needle, *after])
            out.append({"id": f"{split}/{i}", "split": split, "text": text, "target": target,
                        "giver": giver, "receiver": receiver, "needle": needle,
                        "needle_start": needle_start,
                        "needle_end": needle_end, "num_tokens": total})
    rng.shuffle(out)
    return out


def needle_path(data_dir: Optional[str] = None, question: str = "got",
                vocab_model: Optional[str] = None) -> str:
    """The examples file of the only needle dataset of `question` prepared under data_dir (with
    vocab_model, when given); AmbiguousDatasetError naming them when several settings were
    prepared (pass the folder prepare_needle returned); when there is none, the pattern of the
    folder it would be in."""
    _question(question)
    where = {"vocab": cache.label(os.path.dirname(os.path.abspath(vocab_model)))} \
        if vocab_model else None
    found = cache.find_one(data_dir, NEEDLE_DATASETS[question], f"needle ({question})", where)
    group = os.path.join(data_dir or default_data_dir(), CORPUS_SUBDIR)
    folder = found or os.path.join(group, NEEDLE_DATASETS[question].split("/")[-1] + "-*")
    return os.path.join(folder, NEEDLE_FILES[question][0])

def vocabulary_scenes(vocab_model: str) -> tuple[dict, str]:
    """(the manifest of vocab_model's prepared vocabulary folder, the scenes.jsonl of the corpus
    it was trained on); a clear error when either was not prepared."""
    vocab_dir = os.path.dirname(os.path.abspath(vocab_model))
    vocab = cache.read_manifest(vocab_dir)
    if vocab is None:
        raise FileNotFoundError(
            f"{vocab_model} is not in a prepared vocabulary folder (no {cache.MANIFEST} next to "
            f"it): prepare the corpus and its vocabulary with coda_flax.datasets.shakespeare."
            f"prepare_shakespeare (scripts/prepare_data.py) and pass its 'vocab_model'.")
    root = os.path.join(os.path.dirname(vocab_dir), vocab["settings"]["corpus"].split("/")[-1])
    path = os.path.join(root, "scenes.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: prepare the Shakespeare corpus first "
                                f"(coda_flax.datasets.shakespeare.prepare_shakespeare / "
                                f"scripts/prepare_data.py).")
    return vocab, path



def prepare_needle(data_dir: Optional[str], vocab_model: str, *, input_length: int,
                   num_train: int = 8000, num_validation: int = 400,
                   min_offset: Optional[int] = None, question: str = "got", seed: int = 0,
                   force: bool = False, log: Callable[[str], None] = print) -> dict:
    """The needle examples of `question`, tokenised with vocab_model (a vocabulary that
    shakespeare.prepare_shakespeare prepared), as a dataset of coda_flax.datasets.cache:
    <data_dir>/shakespeare/needle-<key>/needle.jsonl ("gave": needle_gave-<key>/...), key = a
    hash of the settings, the vocabulary's and the corpus' hashes. Built once, reused while the
    files match the manifest. Returns the statistics (stats.json) plus "dir" and "hash"."""
    import sentencepiece as spm

    vocab, scenes_path = vocabulary_scenes(vocab_model)
    vocab_dir = os.path.dirname(os.path.abspath(vocab_model))
    settings = {"format_version": NEEDLE_FORMAT_VERSION, "vocab": cache.label(vocab_dir),
                "vocab_hash": vocab["hash"], "input_length": input_length,
                "num_train": num_train, "num_validation": num_validation,
                "min_offset": math.ceil(input_length / 3) if min_offset is None else min_offset,
                "seed": seed, "names": list(NAMES), "question": question}
    prompt = _question(question)[0]
    file_name, stats_name = NEEDLE_FILES[question]

    def build(out_dir):
        sp = spm.SentencePieceProcessor(model_file=vocab_model)
        records = build_needle_examples(read_jsonl(scenes_path), sp.encode,
                                        input_length=input_length, num_train=num_train,
                                        num_validation=num_validation,
                                        min_offset=settings["min_offset"], question=question,
                                        seed=seed)
        path = os.path.join(out_dir, file_name)
        write_jsonl(path, records)
        val = [r for r in records if r["split"] == "validation"]
        share = sum((r["needle_end"] - r["needle_start"]) / (r["num_tokens"] + 1)
                    for r in val) / max(1, len(val))
        cache.write_json(os.path.join(out_dir, stats_name),
                         dict(settings, vocab_model=os.path.abspath(vocab_model),
                              examples=len(records), validation=len(val),
                              evidence_share_of_input=share))
        log(f"[data] needle task ({prompt}): {len(records)} examples ({len(val)} validation) "
            f"-> {path}")
        return {"rows": {"train": len(records) - len(val), "validation": len(val)}}

    manifest = cache.prepare(data_dir, NEEDLE_DATASETS[question], settings, build, force=force,
                             log=log)
    with open(os.path.join(manifest["dir"], stats_name)) as f:
        return dict(json.load(f), dir=manifest["dir"], hash=manifest["hash"])


__all__ = ["NAMES", "PROMPT", "QUESTIONS", "build_needle_examples", "prepare_needle", "needle_path",
           "needle_sentence"]
