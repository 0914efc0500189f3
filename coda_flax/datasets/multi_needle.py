"""The long-input routing task "who ended with it?" (its examples and floors): a chain of
transfers of one object, its needle sentences spread over n = 512 to 1,024 tokens of real filler
text, in shuffled order.

    who ended with it: <lines> Cassio sent the ring to Hector. <lines> Brutus gave the ring to
    Cassio. <lines> Hector lent the ring to Hamlet. <lines>   -> Hamlet

A chain of `num_needles` needles passes one object along num_needles + 1 distinct names from
needle.NAMES; the answer is the last holder, the one receiver who never gives. The needles stand
in the text in a random order (a random permutation of the chain), so that the answer needs all
of them: a needle alone says who received, not whether that name passed the object on. Offsets
are stratified: the token range [prompt, n - 1) is cut into num_needles equal strata and needle j
(in text order) starts at a uniform random offset inside stratum j (ending before stratum j + 1
begins). Everything else is real text from the Shakespeare corpus with every line that mentions
a name left out (needle.filler_lines); validation filler comes from validation scenes. The
answer is stratified: every name is the answer equally often in each split. Deterministic by seed.

Floors (each computed from the records only, by code that shares nothing with the generator):
  majority_floor        the most frequent answer's share: exactly 1 / len(names) when the split's
                        size is a multiple of it (stratified answers).
  truncation_bound(r)   the best accuracy of a reader that sees only the first k = ceil(n / r)
                        tokens (first_k). With s needles starting before k (a prefix of the
                        needles in text order, so s says which) the posterior over the answer,
                        given the visible edges, is: the end of each visible fragment of the
                        chain with probability 1 / (num_needles - s + 1), every other name with
                        at most that. The best guess is right with probability exactly
                        1 / (num_needles - s + 1) when s >= 1 and 1 / len(names) when s = 0; the
                        bound is its mean over the examples. A needle that starts before k counts
                        as seen whole, so this is an upper bound, exact when no needle straddles k.
  bag_of_words_bound    the best accuracy of an order-blind reader (a bag of the input's words
                        and punctuation marks, which SentencePiece keeps apart, as the decoder
                        sees tokens no encoder layer routed): the bag shows which
                        names occur once (the chain's two ends, the first giver and the last
                        holder) and nothing tells them apart, since the reversed chain has the
                        same bag and the same probability: exactly 1/2. Per example it is
                        [answer occurs once] / #(names occurring once) in the input's words.

Files (a dataset of coda_flax.datasets.cache: <data_dir>/shakespeare/chain-<key>/, key = a hash
of the settings, the vocabulary's and the corpus' hashes; with a manifest.json):
    chain.jsonl        id, split, text, target, chain (names in chain order), needles (sentences
                       in text order), needle_starts / needle_ends (token offsets in the tokenised
                       input, without EOS), num_tokens
    chain_stats.json   the settings, the counts, the strata and the validation floors
Pure Python + SentencePiece (no TensorFlow); the seqio task coda_shakespeare_chain is registered
in tasks.offline.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import re
from typing import Callable, Optional, Sequence

from coda_flax.datasets import cache
from coda_flax.datasets.needle import (NAMES, OBJECTS, VERBS, filler_lines, longest_needle,
                                       needle_sentence, vocabulary_scenes,
                                       word_token_counter)
from coda_flax.datasets.records import read_jsonl, write_jsonl

CHAIN_PROMPT = "who ended with it:"
CHAIN_FILE, CHAIN_STATS = "chain.jsonl", "chain_stats.json"
CHAIN_DATASET = "shakespeare/chain"
CHAIN_FORMAT_VERSION = 1
FLOOR_RATES = (1, 2, 3, 5, 8, 16)   # the r of issue 18's sweep: their bounds go into the stats
MAX_DRAWS = 1000                    # filler draws per example before giving up


# ----------------------------------------------------------------------------- placement

def strata(input_length: int, prompt_len: int, longest: int, num_needles: int
           ) -> list[tuple[int, int]]:
    """[(first, last) allowed start of needle j in text order]: [prompt_len, n - 1 - longest]
    cut into num_needles equal parts; a needle ends before the next stratum begins. ValueError
    when a stratum is narrower than the longest needle."""
    if num_needles < 1:
        raise ValueError(f"num_needles must be >= 1, got {num_needles}.")
    lo, hi = prompt_len, input_length - 1 - longest
    bounds = [lo + (j * (hi + 1 - lo)) // num_needles for j in range(num_needles + 1)]
    out = [(bounds[j], bounds[j + 1] - longest) for j in range(num_needles - 1)]
    out.append((bounds[-2], hi))
    if any(b < a for a, b in out):
        raise ValueError(
            f"input_length={input_length} leaves no room for {num_needles} needles of up to "
            f"{longest} tokens each in its own stratum (prompt: {prompt_len} tokens); use a "
            f"longer input or fewer needles.")
    return out


def _chain(rng: random.Random, target: str, names: Sequence[str], num_needles: int) -> list:
    """num_needles + 1 distinct names ending with target."""
    return rng.sample([n for n in names if n != target], num_needles) + [target]


def build_chain_examples(scenes: Sequence[dict], encode: Callable[[str], list], *,
                         input_length: int, num_needles: int = 3, num_train: int,
                         num_validation: int, names: Sequence[str] = NAMES,
                         seed: int = 0) -> list[dict]:
    """The examples of both splits (see the module docstring). encode: text -> token ids (the
    task's SentencePiece model, without EOS); inputs take at most input_length - 1 tokens."""
    if len(names) < num_needles + 1:
        raise ValueError(f"a chain of {num_needles} needles needs {num_needles + 1} distinct "
                         f"names, got {len(names)}: pass more names or fewer needles.")
    prompt_len = len(encode(CHAIN_PROMPT))
    longest = longest_needle(encode, names)
    spans = strata(input_length, prompt_len, longest, num_needles)
    filler = filler_lines(scenes, names)
    tokens = word_token_counter(encode)
    rng = random.Random(seed)
    out = []
    for split, count in (("train", num_train), ("validation", num_validation)):
        if count and not filler[split]:
            raise ValueError(f"no filler text for split {split!r} (no scenes in that split).")
        for i in range(count):
            chain = _chain(rng, names[i % len(names)], names, num_needles)   # stratified answer
            obj = rng.choice(OBJECTS)
            edges = [needle_sentence(chain[j], chain[j + 1], rng.choice(VERBS), obj)
                     for j in range(num_needles)]
            order = rng.sample(edges, num_needles)                           # text order
            for _ in range(MAX_DRAWS):
                placed = place(rng, filler[split], order, spans, tokens, encode,
                               prompt_len, input_length)
                if placed is not None:
                    break
            else:
                raise ValueError(
                    f"{MAX_DRAWS} draws of filler never kept every needle inside its stratum "
                    f"(filler words of up to {max(tokens.cache.values(), default=0)} tokens against strata "
                    f"{spans}); use a longer input or fewer needles.")
            text, starts, ends, total = placed
            out.append({"id": f"{split}/{i}", "split": split, "text": text, "target": chain[-1],
                        "chain": chain, "needles": order, "needle_starts": starts,
                        "needle_ends": ends, "num_tokens": total})
    rng.shuffle(out)
    return out


def place(rng, scenes, order, spans, tokens, encode, prompt_len, input_length,
          prompt=CHAIN_PROMPT):
    """One draw of filler and offsets for the needle sentences `order` (text order) after
    `prompt`: (text, starts, ends, num_tokens), or None when a filler word pushed a needle out
    of its stratum (the caller draws again)."""
    scene = rng.choice(scenes)
    start = rng.randrange(len(scene))
    words = [w for line in scene[start:] + scene[:start] for w in line.split()]
    while len(words) < 4 * input_length:                           # short scenes: wrap around
        words += words
    parts, used, j, starts, ends = [prompt], prompt_len, 0, [], []
    for sentence, (first, last) in zip(order, spans):
        length = len(encode(" " + sentence))
        goal = rng.randint(first, last)          # >= used: the last needle ended by `first`
        while used < goal:
            parts.append(words[j])
            used += tokens(words[j])
            j += 1
        if not first <= used <= last or used + length > input_length - 1:
            return None
        parts.append(sentence)
        starts.append(used)
        used += length
        ends.append(used)
    while used + tokens(words[j]) <= input_length - 1:
        parts.append(words[j])
        used += tokens(words[j])
        j += 1
    return " ".join(parts), starts, ends, used


# ----------------------------------------------------------------------------- floors

def majority_floor(records: Sequence[dict]) -> float:
    """The most frequent target's share of the records."""
    counts = collections.Counter(r["target"] for r in records)
    return max(counts.values()) / len(records)


def truncation_bound(records: Sequence[dict], r: float, input_length: int,
                     num_names: int = len(NAMES)) -> float:
    """The best accuracy seeing only the first k = ceil(input_length / r) tokens: the mean over
    records of 1 / (m - s + 1) (s >= 1 needles start before k, m needles in all) or
    1 / num_names (s = 0). An upper bound, exact when no needle straddles k (module
    docstring)."""
    return truncation_bound_at(records, math.ceil(input_length / r), num_names)


def truncation_bound_at(records: Sequence[dict], k: int, num_names: int = len(NAMES)) -> float:
    """truncation_bound with the window k given in tokens."""
    total = 0.0
    for rec in records:
        m, s = len(rec["needle_starts"]), sum(x < k for x in rec["needle_starts"])
        total += 1.0 / (m - s + 1) if s else 1.0 / num_names
    return total / len(records)


def bag_of_words_bound(records: Sequence[dict], names: Sequence[str] = NAMES) -> float:
    """The mean over records of [target occurs once] / #(names occurring once) in the input's
    words: an order-blind reader's best (exactly 1/2 on this task, module docstring)."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    total = 0.0
    for rec in records:
        counts = collections.Counter(pattern.findall(rec["text"]))
        once = [name for name, c in counts.items() if c == 1]
        total += (rec["target"] in once) / len(once) if once else 0.0
    return total / len(records)


def floors(records: Sequence[dict], input_length: int, rates: Sequence[float] = FLOOR_RATES,
           names: Sequence[str] = NAMES) -> dict:
    """{"majority", "bag_of_words", "truncation": {r: bound}} of records of one input length."""
    return {"majority": majority_floor(records),
            "bag_of_words": bag_of_words_bound(records, names),
            "truncation": {str(r): truncation_bound(records, r, input_length, len(names))
                           for r in rates}}


# ----------------------------------------------------------------------------- the dataset


def task_settings(format_version: int, vocab_model: str, *, input_length: int, num_needles: int,
                  num_train: int, num_validation: int, seed: int) -> dict:
    """Everything that shapes a long-input needle dataset (its cache key is a hash of these)."""
    vocab_dir = os.path.dirname(os.path.abspath(vocab_model))
    vocab, _ = vocabulary_scenes(vocab_model)
    return {"format_version": format_version, "vocab": cache.label(vocab_dir),
            "vocab_hash": vocab["hash"], "input_length": input_length,
            "num_needles": num_needles, "num_train": num_train,
            "num_validation": num_validation, "seed": seed, "names": list(NAMES)}


def prepare_task(data_dir: Optional[str], vocab_model: str, settings: dict, *, dataset: str,
                 records_file: str, stats_file: str, prompt: str, build_examples: Callable,
                 floors_fn: Callable, force: bool, log: Callable[[str], None]) -> dict:
    """A long-input needle task (the chain's, the givers') tokenised with vocab_model as the cache
    dataset <data_dir>/<dataset>-<key>/: records_file plus stats_file with the validation floors
    (floors_fn), built once and reused while its files match the manifest. Returns the
    statistics plus "dir", "hash" and "file"."""
    import sentencepiece as spm

    _, scenes_path = vocabulary_scenes(vocab_model)
    n, m = settings["input_length"], settings["num_needles"]

    def build(out_dir):
        sp = spm.SentencePieceProcessor(model_file=vocab_model)
        records = build_examples(read_jsonl(scenes_path), sp.encode, input_length=n,
                                 num_needles=m, num_train=settings["num_train"],
                                 num_validation=settings["num_validation"],
                                 seed=settings["seed"])
        write_jsonl(os.path.join(out_dir, records_file), records)
        val = [r for r in records if r["split"] == "validation"]
        cache.write_json(os.path.join(out_dir, stats_file),
                         dict(settings, examples=len(records), validation=len(val),
                              floors=floors_fn(val, n) if val else None))
        log(f"[data] {prompt} task: {len(records)} examples ({len(val)} validation), {m} "
            f"needles in {n} tokens -> {out_dir}")
        return {"rows": {"train": len(records) - len(val), "validation": len(val)}}

    manifest = cache.prepare(data_dir, dataset, settings, build, force=force, log=log)
    with open(os.path.join(manifest["dir"], stats_file)) as f:
        return dict(json.load(f), dir=manifest["dir"], hash=manifest["hash"],
                    file=os.path.join(manifest["dir"], records_file))


def chain_settings(vocab_model: str, *, input_length: int, num_needles: int = 3,
                   num_train: int = 8000, num_validation: int = 400, seed: int = 0) -> dict:
    """Everything that shapes the chain dataset (its cache key is a hash of these)."""
    return task_settings(CHAIN_FORMAT_VERSION, vocab_model, input_length=input_length,
                         num_needles=num_needles, num_train=num_train,
                         num_validation=num_validation, seed=seed)


def prepare_chain(data_dir: Optional[str], vocab_model: str, *, input_length: int = 512,
                  num_needles: int = 3, num_train: int = 8000, num_validation: int = 400,
                  seed: int = 0, force: bool = False,
                  log: Callable[[str], None] = print) -> dict:
    """The chain examples as the cache dataset <data_dir>/shakespeare/chain-<key>/ (see
    prepare_task). Returns the statistics (with the validation floors), "dir", "hash", "file"."""
    settings = chain_settings(vocab_model, input_length=input_length, num_needles=num_needles,
                              num_train=num_train, num_validation=num_validation, seed=seed)
    return prepare_task(data_dir, vocab_model, settings, dataset=CHAIN_DATASET,
                        records_file=CHAIN_FILE, stats_file=CHAIN_STATS, prompt=CHAIN_PROMPT,
                        build_examples=build_chain_examples, floors_fn=floors, force=force,
                        log=log)


def chain_path(data_dir: Optional[str] = None, vocab_model: Optional[str] = None) -> str:
    """The examples file of the only chain dataset prepared under data_dir (with vocab_model,
    when given); AmbiguousDatasetError when several settings were prepared (pass the folder
    prepare_chain returned); when there is none, the pattern of the folder it would be in."""
    where = {"vocab": cache.label(os.path.dirname(os.path.abspath(vocab_model)))} \
        if vocab_model else None
    found = cache.find_one(data_dir, CHAIN_DATASET, "chain", where)
    if found is None:
        found = os.path.join(os.path.dirname(cache.dataset_dir(data_dir, CHAIN_DATASET, {})),
                             "chain-*")
    return os.path.join(found, CHAIN_FILE)


__all__ = ["CHAIN_PROMPT", "CHAIN_FILE", "FLOOR_RATES", "build_chain_examples", "strata", "place",
           "majority_floor", "truncation_bound", "truncation_bound_at", "bag_of_words_bound",
           "floors", "chain_settings", "prepare_chain", "chain_path"]
