"""The long-input chain task "who ended with it?" (coda_flax.datasets.multi_needle) on a synthetic
corpus (no downloads): placement, needles, stratification, determinism, the floors against a
brute-force enumeration, the cache keys and the seqio task."""

import collections
import itertools
import math
import os
import re

import pytest

from corpus_helpers import NEEDLE_RE, needle_fixtures, strata_by_hand
from coda_flax.datasets import multi_needle as mn
from coda_flax.datasets import needle, shakespeare

N, M = 192, 3
corpus, sp, scenes = needle_fixtures("chain_data")


@pytest.fixture(scope="module")
def records(scenes, sp):
    return mn.build_chain_examples(scenes, sp.encode, input_length=N, num_needles=M,
                                   num_train=160, num_validation=48, seed=3)


def _strata(sp):
    return strata_by_hand(sp, mn.CHAIN_PROMPT, N, M)


def test_every_needle_once_in_its_stratum_and_in_the_window(records, sp):
    spans = _strata(sp)
    starts = collections.defaultdict(list)
    last_edge_slot = collections.Counter()
    for r in records:
        ids = sp.encode(r["text"])
        assert len(ids) == r["num_tokens"] <= N - 1                       # room for EOS
        assert r["text"].startswith(mn.CHAIN_PROMPT + " ")
        chain = r["chain"]
        assert len(set(chain)) == M + 1 and r["target"] == chain[-1]
        edges = {(chain[j], chain[j + 1]) for j in range(M)}
        assert {NEEDLE_RE.fullmatch(s).group(1, 4) for s in r["needles"]} == edges
        assert len({NEEDLE_RE.fullmatch(s).group(3) for s in r["needles"]}) == 1  # one object
        for j, (s, a, b) in enumerate(zip(r["needles"], r["needle_starts"], r["needle_ends"])):
            assert r["text"].count(s) == 1                                 # exactly once
            assert ids[a:b] == sp.encode(" " + s) and b <= N - 1            # in the window
            assert spans[j][0] <= a <= spans[j][1]                         # its stratum
            starts[j].append(a)
        filler = r["text"]
        for s in r["needles"]:
            filler = filler.replace(s, " ")
        assert not re.search("|".join(needle.NAMES), filler, re.I)         # needles: only hints
        # names: the chain's ends once, its middle names twice
        counts = collections.Counter(re.findall("|".join(needle.NAMES), r["text"]))
        assert counts == collections.Counter(chain[:1] + chain[-1:] + 2 * chain[1:-1])
        last = f" to {chain[-1]}."
        last_edge_slot[[s.endswith(last) for s in r["needles"]].index(True)] += 1
    for j, (lo, hi) in enumerate(spans):                 # offsets cover each stratum
        assert min(starts[j]) <= lo + 4 and max(starts[j]) >= hi - 4
    # the chain's order is shuffled in the text: its last edge stands in every slot
    assert set(last_edge_slot) == set(range(M)) and min(last_edge_slot.values()) >= 30


def test_answers_stratified_and_validation_filler_from_validation_scenes(records, scenes):
    val = [r["target"] for r in records if r["split"] == "validation"]
    train = [r["target"] for r in records if r["split"] == "train"]
    assert len(val) == 48 and len(train) == 160
    assert collections.Counter(val) == {n: 6 for n in needle.NAMES}
    assert collections.Counter(train) == {n: 20 for n in needle.NAMES}
    lines = needle.filler_lines(scenes, needle.NAMES)
    val_words = {w for scene in lines["validation"] for line in scene for w in line.split()}
    train_only = {w for s in lines["train"] for line in s for w in line.split()} - val_words
    train_words = set()
    for r in records:
        text = r["text"]
        for s in r["needles"]:
            text = text.replace(s, " ")
        words = set(text.split()[len(mn.CHAIN_PROMPT.split()):])
        if r["split"] == "validation":
            assert words <= val_words and not words & train_only
        else:
            train_words |= words
    assert train_words & train_only                       # train filler: the train scenes


def test_deterministic_by_seed(records, scenes, sp):
    again = mn.build_chain_examples(scenes, sp.encode, input_length=N, num_needles=M,
                                    num_train=160, num_validation=48, seed=3)
    other = mn.build_chain_examples(scenes, sp.encode, input_length=N, num_needles=M,
                                    num_train=160, num_validation=48, seed=4)
    assert again == records
    assert [r["text"] for r in other] != [r["text"] for r in records]


def _brute_force_truncation(num_names, m):
    """{s: the Bayes-optimal accuracy seeing the first s needles in text order}, by
    enumerating every chain and every text order (all equally likely)."""
    by_obs = collections.defaultdict(collections.Counter)
    for chain in itertools.permutations(range(num_names), m + 1):
        edges = [(chain[j], chain[j + 1]) for j in range(m)]
        for order in itertools.permutations(edges):
            for s in range(m + 1):
                by_obs[(s, order[:s])][chain[-1]] += 1
    out = {}
    for s in range(m + 1):
        groups = [c for (t, _), c in by_obs.items() if t == s]
        out[s] = sum(max(c.values()) for c in groups) / sum(sum(c.values()) for c in groups)
    return out


@pytest.mark.parametrize("num_names,m", [(4, 2), (5, 3), (6, 2)])
def test_truncation_bound_equals_brute_force(num_names, m):
    brute = _brute_force_truncation(num_names, m)
    for s in range(m + 1):
        # s needles start before k = 25, the others after it
        recs = [{"needle_starts": [10 * j if j < s else 30 + 10 * j for j in range(m)]}]
        assert mn.truncation_bound_at(recs, 25, num_names) == pytest.approx(brute[s])
    assert brute[m] == 1.0 and brute[0] == pytest.approx(1 / num_names)


def test_truncation_bound_window_is_ceil_n_over_r():
    # n = 100, r = 3: k = 34, a needle starting at 33 is seen, one at 34 is not
    recs = [{"needle_starts": [33, 60, 90]}, {"needle_starts": [34, 60, 90]}]
    assert mn.truncation_bound(recs, 3, 100, num_names=8) == pytest.approx((1 / 3 + 1 / 8) / 2)
    assert mn.truncation_bound(recs, 1, 100, num_names=8) == 1.0


@pytest.mark.parametrize("m", [1, 2, 3])
def test_bag_of_words_bound_is_one_half_by_enumeration(m, records):
    names, verbs = "ABCDE", ("gave", "sent")
    by_bag = collections.defaultdict(collections.Counter)
    for chain in itertools.permutations(names, m + 1):
        for vs in itertools.product(verbs, repeat=m):
            # words and punctuation apart, as SentencePiece splits letters from '.'
            words = re.findall(r"\w+|[^\w\s]", " ".join(
                f"{chain[j]} {v} the ring to {chain[j + 1]}." for j, v in enumerate(vs)))
            by_bag[frozenset(collections.Counter(words).items())][chain[-1]] += 1
    total = sum(sum(c.values()) for c in by_bag.values())
    assert sum(max(c.values()) for c in by_bag.values()) / total == 0.5
    assert mn.bag_of_words_bound(records) == 0.5


def test_floors_on_hand_made_records():
    recs = [{"text": "q: Brutus gave the ring to Hector. Hector sent the ring to Cassio.",
             "target": "Cassio"},
            {"text": "q: Brutus gave the ring to Hector. Brutus sent the ring to Cassio.",
             "target": "Cassio"},                  # Brutus twice: only Hector, Cassio once
            {"text": "q: Hamlet gave the ring to Hector. Hector cried Hamlet, Cassio.",
             "target": "Hamlet"}]                  # Cassio is the only name said once
    assert mn.bag_of_words_bound(recs) == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert mn.majority_floor(recs) == pytest.approx(2 / 3)


def test_bad_settings_are_clear_errors(scenes, sp):
    with pytest.raises(ValueError, match="no room for 3 needles"):
        mn.build_chain_examples(scenes, sp.encode, input_length=40, num_train=2,
                                num_validation=2)
    with pytest.raises(ValueError, match="needs 4 distinct names"):
        mn.build_chain_examples(scenes, sp.encode, input_length=N, num_train=2,
                                num_validation=2, names=("Hamlet", "Brutus", "Hector"))
    with pytest.raises(ValueError, match="num_needles must be >= 1"):
        mn.build_chain_examples(scenes, sp.encode, input_length=N, num_needles=0, num_train=2,
                                num_validation=2)
    long_word = "".join("qxzjvkw"[i * i % 7] for i in range(60))   # > 50 tokens: no draw fits
    with pytest.raises(ValueError, match="never kept every needle inside its stratum"):
        mn.build_chain_examples([{"split": "train", "text": "A: " + " ".join([long_word] * 5)}],
                                sp.encode, input_length=N, num_train=1, num_validation=0)


def test_prepared_through_the_cache_and_registered_as_a_seqio_task(corpus, sp):
    from coda_flax import tasks
    root, vocab = corpus
    logs = []
    kw = dict(input_length=N, num_needles=M, num_train=16, num_validation=16)
    stats = mn.prepare_chain(str(root), vocab, log=logs.append, **kw)
    assert os.path.basename(stats["dir"]).startswith("chain-")
    assert mn.prepare_chain(str(root), vocab, log=logs.append, **kw)["dir"] == stats["dir"]
    assert "already prepared" in logs[-1]
    keys = {os.path.basename(mn.cache.dataset_dir(str(root), "shakespeare/chain",
                                                  mn.chain_settings(vocab, **dict(kw, **change))))
            for change in ({}, {"input_length": 2 * N}, {"num_needles": 2}, {"seed": 1},
                           {"num_train": 17}, {"num_validation": 8})}
    assert len(keys) == 6 and os.path.basename(stats["dir"]) in keys
    recs = {r["id"]: r for r in shakespeare.read_jsonl(mn.chain_path(str(root)))}
    val = [r for r in recs.values() if r["split"] == "validation"]
    # the stored floors, re-derived here by hand
    assert stats["floors"]["majority"] == pytest.approx(1 / 8)      # 16 = 2 per name
    assert stats["floors"]["bag_of_words"] == 0.5
    for r_ in (1, 3, 16):
        k = math.ceil(N / r_)
        seen = [sum(a < k for a in r["needle_starts"]) for r in val]
        expect = sum(1 / (M - s + 1) if s else 1 / 8 for s in seen) / len(val)
        assert stats["floors"]["truncation"][str(r_)] == pytest.approx(expect)
    bounds = [stats["floors"]["truncation"][str(r_)] for r_ in mn.FLOOR_RATES]
    assert bounds[0] == 1.0 and bounds == sorted(bounds, reverse=True) and bounds[-1] < 0.5
    tasks.register_offline_tasks(str(root), vocab)
    task = tasks.get_task_or_mixture("coda_shakespeare_chain")
    exs = list(task.get_dataset({"inputs": N, "targets": 8}, split="validation", shuffle=False,
                                num_epochs=1).as_numpy_iterator())
    assert len(exs) == 16
    for ex in exs:
        r = recs[ex["id"].decode()]
        assert ex["inputs"][-1] == 1 and len(ex["inputs"]) == r["num_tokens"] + 1
        for s, a, b in zip(r["needles"], r["needle_starts"], r["needle_ends"]):
            assert ex["inputs"][a:b].tolist() == sp.encode(" " + s)
        assert ex["targets_pretokenized"].decode() == r["target"] == r["chain"][-1]


@pytest.mark.parametrize("n", [512, 1024])
def test_long_inputs_fill_the_window_and_spread_the_needles(scenes, sp, n):
    recs = mn.build_chain_examples(scenes, sp.encode, input_length=n, num_needles=4,
                                   num_train=0, num_validation=64, seed=0)
    third = math.ceil(n / 3)
    for r in recs:
        assert n - 12 <= len(sp.encode(r["text"])) == r["num_tokens"] <= n - 1
        assert r["needle_starts"] == sorted(r["needle_starts"]) and r["needle_starts"][-1] >= n / 2
    # first_k at r = 3 sees some needles but never all four of them
    seen = [sum(a < third for a in r["needle_starts"]) for r in recs]
    assert max(seen) < 4 and min(seen) >= 1
