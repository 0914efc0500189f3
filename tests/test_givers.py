"""The long-input task "who gave them?" (coda_flax.datasets.givers) on a synthetic corpus (no
downloads): placement, stratification, determinism, the floors against brute-force enumeration,
the cache and the seqio task."""

import collections
import itertools
import math
import os
import re

import pytest

from corpus_helpers import NEEDLE_RE, needle_fixtures, strata_by_hand
from coda_flax.datasets import givers as gv
from coda_flax.datasets import needle, shakespeare

N, M = 192, 3
corpus, sp, scenes = needle_fixtures("givers_data")


@pytest.fixture(scope="module")
def records(scenes, sp):
    return gv.build_givers_examples(scenes, sp.encode, input_length=N, num_needles=M,
                                    num_train=112, num_validation=56, seed=3)


def _strata(sp):
    return strata_by_hand(sp, "who gave them:", N, M)


def test_needles_placed_in_their_strata_and_the_target_lists_every_giver(records, sp):
    spans = _strata(sp)
    starts = collections.defaultdict(list)
    for r in records:
        ids = sp.encode(r["text"])
        assert len(ids) == r["num_tokens"] <= N - 1 and r["text"].startswith("who gave them: ")
        parsed = [NEEDLE_RE.fullmatch(s).groups() for s in r["needles"]]
        givers = [g for g, _, _, _ in parsed]
        receivers = [x for _, _, _, x in parsed]
        assert len(set(givers + receivers)) == 2 * M                   # distinct names
        assert len({v for _, v, _, _ in parsed}) == len({o for _, _, o, _ in parsed}) == M
        # the target: the givers in the order of NAMES, by hand
        assert r["target"].split() == [n for n in needle.NAMES if n in givers]
        for j, (s, a, b) in enumerate(zip(r["needles"], r["needle_starts"], r["needle_ends"])):
            assert r["text"].count(s) == 1 and ids[a:b] == sp.encode(" " + s)
            assert spans[j][0] <= a <= spans[j][1] and b <= N - 1
            starts[j].append(a)
        filler = r["text"]
        for s in r["needles"]:
            filler = filler.replace(s, " ")
        assert not re.search("|".join(needle.NAMES), filler, re.I)      # the needles only
    for j, (lo, hi) in enumerate(spans):                                 # strata covered
        assert min(starts[j]) <= lo + 6 and max(starts[j]) >= hi - 6


def test_giver_sets_stratified_and_deterministic(records, scenes, sp):
    for split, count in (("train", 112), ("validation", 56)):
        sets = collections.Counter(r["target"] for r in records if r["split"] == split)
        assert len(sets) == math.comb(8, M) and set(sets.values()) == {count // 56}
    kw = dict(input_length=N, num_needles=M, num_train=112, num_validation=56)
    assert gv.build_givers_examples(scenes, sp.encode, seed=3, **kw) == records
    other = gv.build_givers_examples(scenes, sp.encode, seed=4, **kw)
    assert [r["text"] for r in other] != [r["text"] for r in records]


def _brute_force_bag(names, m):
    """An order-blind reader's best, by enumerating every pairing of 2m of the names into m
    (giver, receiver) needles with two verbs each: the mode of the giver set per bag."""
    by_bag = collections.defaultdict(collections.Counter)
    for chosen in itertools.permutations(names, 2 * m):
        for verbs in itertools.product(("gave", "sent"), repeat=m):
            words = re.findall(r"\w+|[^\w\s]", " ".join(
                f"{chosen[2 * j]} {v} the ring to {chosen[2 * j + 1]}."
                for j, v in enumerate(verbs)))
            by_bag[frozenset(collections.Counter(words).items())][frozenset(chosen[::2])] += 1
    return sum(max(c.values()) for c in by_bag.values()) / \
        sum(sum(c.values()) for c in by_bag.values())


@pytest.mark.parametrize("m", [1, 2, 3])
def test_bag_of_words_bound_equals_brute_force(m, records):
    brute = _brute_force_bag("ABCDEF", m)
    recs = [{"text": " ".join(f"{needle.NAMES[2 * j]} gave a key to {needle.NAMES[2 * j + 1]}."
                              for j in range(m)),
             "target": " ".join(needle.NAMES[0:2 * m:2])}]
    assert gv.bag_of_words_bound(recs) == pytest.approx(brute)
    assert brute == pytest.approx(1 / math.comb(2 * m, m))
    assert gv.bag_of_words_bound(records) == pytest.approx(1 / 20)        # m = 3: C(6, 3)


def _brute_force_truncation(m, s):
    """first_k's best seeing the first s needles whole and the rest as a bag of names: by
    enumerating every assignment of the hidden names to roles."""
    hidden = list(range(2 * m))[2 * s:]     # the hidden needles' names, in any roles
    worlds = collections.Counter()
    for perm in itertools.permutations(hidden):
        worlds[frozenset(perm[::2])] += 1
    correct, total = max(worlds.values()), sum(worlds.values())
    return correct / total


@pytest.mark.parametrize("m", [2, 3, 4])
def test_truncation_bound_equals_brute_force(m):
    for s in range(m + 1):
        recs = [{"needle_starts": [10 * j if j < s else 100 + 10 * j for j in range(m)]}]
        assert gv.truncation_bound_at(recs, 50) == pytest.approx(_brute_force_truncation(m, s))
    # n = 100, r = 3: k = 34, a needle at 33 is seen, one at 34 is not
    recs = [{"needle_starts": [33, 60, 90]}, {"needle_starts": [34, 60, 90]}]
    assert gv.truncation_bound(recs, 3, 100) == pytest.approx((1 / 6 + 1 / 20) / 2)
    assert gv.truncation_bound(recs, 1, 100) == 1.0


def test_floors_on_hand_made_records():
    recs = [{"text": "q: Brutus gave the ring to Hector.", "target": "Brutus",
             "needle_starts": [2]},
            {"text": "q: Brutus gave the ring to Hector. Cassio sent a key to Hamlet.",
             "target": "Brutus Cassio", "needle_starts": [2, 40]},
            {"text": "q: Hamlet gave the ring to Hector.", "target": "Brutus",   # absent
             "needle_starts": [40]}]
    assert gv.bag_of_words_bound(recs) == pytest.approx((1 / 2 + 1 / 6 + 0) / 3)
    f = gv.floors(recs, 64, rates=(1, 2))          # r = 2: k = 32, the needles at 40 hidden
    assert f["majority"] == pytest.approx(2 / 3) and f["truncation"]["1"] == 1.0
    assert f["truncation"]["2"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)


def test_bad_settings_are_clear_errors(scenes, sp):
    with pytest.raises(ValueError, match="no room for 3 needles"):
        gv.build_givers_examples(scenes, sp.encode, input_length=40, num_train=2,
                                 num_validation=2)
    with pytest.raises(ValueError, match="need 6 distinct names"):
        gv.build_givers_examples(scenes, sp.encode, input_length=N, num_train=2,
                                 num_validation=2, names=needle.NAMES[:5])


def test_prepared_through_the_cache_and_read_as_a_seqio_task(corpus, sp):
    from coda_flax import tasks
    from coda_flax.tasks.offline import register_chain_task
    root, vocab = corpus
    logs = []
    stats = gv.prepare_givers(str(root), vocab, input_length=N, num_train=8,
                              num_validation=56, log=logs.append)
    assert os.path.basename(stats["dir"]).startswith("givers-")
    again = gv.prepare_givers(str(root), vocab, input_length=N, num_train=8,
                              num_validation=56, log=logs.append)
    assert again["dir"] == stats["dir"] and "already prepared" in logs[-1]
    val = [r for r in shakespeare.read_jsonl(stats["file"]) if r["split"] == "validation"]
    assert stats["floors"]["majority"] == pytest.approx(1 / 56)       # every set once
    for r_ in (1, 3, 16):                                              # re-derived by hand
        k = math.ceil(N / r_)
        hid = [sum(a >= k for a in r["needle_starts"]) for r in val]
        expect = sum(1 / math.comb(2 * h, h) for h in hid) / len(val)
        assert stats["floors"]["truncation"][str(r_)] == pytest.approx(expect)
    register_chain_task("test_givers_192", stats["dir"], vocab, file_name=gv.GIVERS_FILE)
    exs = list(tasks.get_task_or_mixture("test_givers_192").get_dataset(
        {"inputs": N, "targets": 8}, split="validation", shuffle=False,
        num_epochs=1).as_numpy_iterator())
    by_id = {r["id"]: r for r in val}
    assert len(exs) == 56
    for ex in exs:
        r = by_id[ex["id"].decode()]
        assert len(ex["inputs"]) == r["num_tokens"] + 1
        assert ex["targets_pretokenized"].decode() == r["target"]
