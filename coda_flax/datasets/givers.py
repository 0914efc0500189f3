"""The long-input routing task "who gave them?" (its examples and floors): several independent
needles spread over n = 256 to 1,024 tokens of real filler text; the answer names every giver.

    who gave them: <lines> Cassio sent the ring to Hector. <lines> Brutus lent a sword to
    Hamlet. <lines> Falstaff gave the key to Rosalind. <lines>   -> Brutus Falstaff Cassio

Each example draws 2 * num_needles distinct names from needle.NAMES and pairs them into
num_needles needles (giver -> receiver, each with its own object and verb); the target lists
the givers in the fixed order of needle.NAMES (a set, so the text order says nothing), and it
needs every needle. Each needle alone is the lookup the backbones pretrain on ("who gave it?",
needle.QUESTIONS); a model must route every needle through a frozen layer to tell its giver
from its receiver, so routing capacity matters: at r = 16 and n = 256, k = 16 tokens cannot
hold three needles of 7-9 tokens. Offsets are stratified exactly as in multi_needle (the
needles in shuffled order, needle j in text order inside stratum j); filler is real text with
every line naming anyone left out, validation filler from validation scenes. Giver sets are
stratified: each split cycles through every set of num_needles names (in a shuffled order), so
every set is the answer equally often, to within one. Deterministic by seed.

Floors (computed from the records only, by code that shares nothing with the generator;
tests/test_givers.py checks them against brute-force enumeration):
  majority_floor        the most frequent answer's share (multi_needle.majority_floor).
  bag_of_words_bound    an order-blind reader (what the decoder gets from tokens no encoder
                        layer routed) sees which names occur, and nothing of who gave: flipping
                        any needle's roles keeps the bag. With c names in the input and the m
                        givers among them, its best is 1 / C(c, m) (1 / 20 for m = 3).
  truncation_bound(r)   first_k: the first k = ceil(n / r) tokens through the frozen layers, the
                        rest as a bag. s needles starting before k show their givers; the other
                        m - s givers are any half of the 2 (m - s) names left: 1 / C(2 (m - s),
                        m - s), averaged over the examples (an upper bound: a needle that starts
                        before k counts as seen whole).

Files (a dataset of coda_flax.datasets.cache: <data_dir>/shakespeare/givers-<key>/, key = a hash
of the settings and the vocabulary's and corpus' hashes; with a manifest.json):
    givers.jsonl       id, split, text, target, givers / receivers (in needle order), needles
                       (sentences in text order), needle_starts / needle_ends (token offsets in
                       the tokenised input, without EOS), num_tokens
    givers_stats.json  the settings, the counts and the validation floors
"""

from __future__ import annotations

import itertools
import math
import random
import re
from typing import Callable, Optional, Sequence

from coda_flax.datasets.multi_needle import (FLOOR_RATES, MAX_DRAWS, majority_floor, place,
                                             prepare_task, strata, task_settings)
from coda_flax.datasets.needle import (NAMES, OBJECTS, VERBS, filler_lines, longest_needle,
                                       needle_sentence, word_token_counter)

GIVERS_PROMPT = "who gave them:"
GIVERS_FILE, GIVERS_STATS = "givers.jsonl", "givers_stats.json"
GIVERS_DATASET = "shakespeare/givers"
GIVERS_FORMAT_VERSION = 1


def answer(givers: Sequence[str], names: Sequence[str] = NAMES) -> str:
    """The target: the givers in the order of `names`, space-separated."""
    return " ".join(sorted(givers, key=list(names).index))


def build_givers_examples(scenes: Sequence[dict], encode: Callable[[str], list], *,
                          input_length: int, num_needles: int = 3, num_train: int,
                          num_validation: int, names: Sequence[str] = NAMES,
                          seed: int = 0) -> list[dict]:
    """The examples of both splits (module docstring). encode: text -> token ids (without
    EOS); inputs take at most input_length - 1 tokens."""
    if len(names) < 2 * num_needles:
        raise ValueError(f"{num_needles} needles need {2 * num_needles} distinct names, got "
                         f"{len(names)}: pass more names or fewer needles.")
    if num_needles > min(len(OBJECTS), len(VERBS)):
        raise ValueError(f"num_needles must be at most {min(len(OBJECTS), len(VERBS))} (one "
                         f"object and verb each), got {num_needles}.")
    prompt_len = len(encode(GIVERS_PROMPT))
    spans = strata(input_length, prompt_len, longest_needle(encode, names), num_needles)
    filler = filler_lines(scenes, names)
    tokens = word_token_counter(encode)
    rng = random.Random(seed)
    sets = list(itertools.combinations(names, num_needles))
    out = []
    for split, count in (("train", num_train), ("validation", num_validation)):
        if count and not filler[split]:
            raise ValueError(f"no filler text for split {split!r} (no scenes in that split).")
        cycle = rng.sample(sets, len(sets))
        for i in range(count):
            givers = rng.sample(cycle[i % len(cycle)], num_needles)          # stratified set
            receivers = rng.sample([n for n in names if n not in givers], num_needles)
            edges = [needle_sentence(g, r, v, o) for g, r, v, o in
                     zip(givers, receivers, rng.sample(VERBS, num_needles),
                         rng.sample(OBJECTS, num_needles))]
            order = rng.sample(edges, num_needles)                           # text order
            for _ in range(MAX_DRAWS):
                placed = place(rng, filler[split], order, spans, tokens, encode, prompt_len,
                               input_length, prompt=GIVERS_PROMPT)
                if placed is not None:
                    break
            else:
                raise ValueError(f"{MAX_DRAWS} draws of filler never kept every needle inside "
                                 f"its stratum (strata {spans}); use a longer input or fewer "
                                 f"needles.")
            text, starts, ends, total = placed
            out.append({"id": f"{split}/{i}", "split": split, "text": text,
                        "target": answer(givers, names), "givers": givers,
                        "receivers": receivers, "needles": order, "needle_starts": starts,
                        "needle_ends": ends, "num_tokens": total})
    rng.shuffle(out)
    return out


# ----------------------------------------------------------------------------- floors

def _names_in(text: str, names: Sequence[str]) -> set:
    return set(re.findall(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", text))


def bag_of_words_bound(records: Sequence[dict], names: Sequence[str] = NAMES) -> float:
    """The mean over records of [every answer name occurs] / C(#names occurring, m), m the
    answer's length: an order-blind reader's best (module docstring)."""
    total = 0.0
    for rec in records:
        present, want = _names_in(rec["text"], names), rec["target"].split()
        total += (set(want) <= present) / math.comb(len(present), len(want))
    return total / len(records)


def truncation_bound_at(records: Sequence[dict], k: int) -> float:
    """The mean over records of 1 / C(2 (m - s), m - s), s of the m needles starting before k."""
    total = 0.0
    for rec in records:
        hidden = sum(x >= k for x in rec["needle_starts"])
        total += 1.0 / math.comb(2 * hidden, hidden)
    return total / len(records)


def truncation_bound(records: Sequence[dict], r: float, input_length: int) -> float:
    """truncation_bound_at the window k = ceil(input_length / r)."""
    return truncation_bound_at(records, math.ceil(input_length / r))


def floors(records: Sequence[dict], input_length: int, rates: Sequence[float] = FLOOR_RATES,
           names: Sequence[str] = NAMES) -> dict:
    """{"majority", "bag_of_words", "truncation": {r: bound}} of records of one input length."""
    return {"majority": majority_floor(records),
            "bag_of_words": bag_of_words_bound(records, names),
            "truncation": {str(r): truncation_bound(records, r, input_length) for r in rates}}


# ----------------------------------------------------------------------------- the dataset

def givers_settings(vocab_model: str, *, input_length: int, num_needles: int = 3,
                    num_train: int = 4000, num_validation: int = 400, seed: int = 0) -> dict:
    """Everything that shapes the dataset (its cache key is a hash of these)."""
    return task_settings(GIVERS_FORMAT_VERSION, vocab_model, input_length=input_length,
                         num_needles=num_needles, num_train=num_train,
                         num_validation=num_validation, seed=seed)


def prepare_givers(data_dir: Optional[str], vocab_model: str, *, input_length: int = 512,
                   num_needles: int = 3, num_train: int = 4000, num_validation: int = 400,
                   seed: int = 0, force: bool = False,
                   log: Callable[[str], None] = print) -> dict:
    """The examples tokenised with vocab_model (a vocabulary prepare_shakespeare prepared), as
    the cache dataset <data_dir>/shakespeare/givers-<key>/, built once and reused while its
    files match the manifest (multi_needle.prepare_task). Returns the statistics (with the
    validation floors), "dir", "hash" and "file"."""
    settings = givers_settings(vocab_model, input_length=input_length, num_needles=num_needles,
                               num_train=num_train, num_validation=num_validation, seed=seed)
    return prepare_task(data_dir, vocab_model, settings, dataset=GIVERS_DATASET,
                        records_file=GIVERS_FILE, stats_file=GIVERS_STATS, prompt=GIVERS_PROMPT,
                        build_examples=build_givers_examples, floors_fn=floors, force=force,
                        log=log)


__all__ = ["GIVERS_PROMPT", "GIVERS_FILE", "answer", "build_givers_examples",
           "bag_of_words_bound", "truncation_bound", "truncation_bound_at", "floors",
           "givers_settings", "prepare_givers"]
