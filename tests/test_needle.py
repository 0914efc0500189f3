"""The routing task "who got it?" (coda_flax.datasets.needle) on a synthetic corpus (no
downloads), and its statistics (routing_stats.evidence_share, the probes' role features)."""

import math
import os
import re

import numpy as np
import pytest

from corpus_helpers import prepared_corpus
from coda_flax.analysis import probes, routing_stats
from coda_flax.datasets import needle, shakespeare

N = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("needle_data")
    vocab = prepared_corpus(root, vocab_size=300, num_scenes=12)
    return root, vocab


@pytest.fixture(scope="module")
def sp(corpus):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=corpus[1])


@pytest.fixture(scope="module")
def records(corpus, sp):
    scenes = shakespeare.read_jsonl(os.path.join(shakespeare.corpus_dir(str(corpus[0])), "scenes.jsonl"))
    return needle.build_needle_examples(scenes, sp.encode, input_length=N, num_train=400,
                                        num_validation=48, seed=3)


def test_needle_offsets_tokens_and_targets(records, sp):
    k3 = math.ceil(N / 3)
    starts = []
    for r in records:
        ids = sp.encode(r["text"])
        assert len(ids) == r["num_tokens"] <= N - 1                  # room for EOS, no truncation
        assert ids[r["needle_start"]:r["needle_end"]] == sp.encode(" " + r["needle"])
        assert r["needle_start"] >= k3                               # never inside first_k at r=3
        assert r["text"].startswith(needle.PROMPT + " ")
        giver, receiver = r["giver"], r["target"]
        assert giver != receiver and {giver, receiver} <= set(needle.NAMES)
        assert r["needle"].startswith(giver + " ") and r["needle"].endswith(f" to {receiver}.")
        filler = r["text"].replace(r["needle"], " ")
        assert not re.search("|".join(needle.NAMES), filler)         # the needle is the only hint
        starts.append(r["needle_start"])
    starts = np.array(starts)
    longest = max(r["needle_end"] - r["needle_start"] for r in records)
    # random offsets that cover the whole allowed range past k, not one fixed place
    assert starts.min() <= k3 + 2 and starts.max() >= N - 1 - longest - 3
    assert len(set(starts.tolist())) >= (N - 1 - longest - k3) // 2
    # the receiver is not predictable from the position
    assert abs(np.corrcoef(starts, [needle.NAMES.index(r["target"]) for r in records])[0, 1]) < 0.2


def test_stratified_splits_every_receiver_in_validation(records):
    val = [r["target"] for r in records if r["split"] == "validation"]
    train = [r["target"] for r in records if r["split"] == "train"]
    assert len(val) == 48 and len(train) == 400
    assert {n: val.count(n) for n in needle.NAMES} == {n: 6 for n in needle.NAMES}
    assert set(train) == set(needle.NAMES)


def test_validation_filler_comes_from_validation_scenes(corpus, sp):
    scenes = shakespeare.read_jsonl(os.path.join(shakespeare.corpus_dir(str(corpus[0])), "scenes.jsonl"))
    lines = needle.filler_lines(scenes, needle.NAMES)
    val_words = {w for scene in lines["validation"] for line in scene for w in line.split()}
    train_only = {w for scene in lines["train"] for line in scene for w in line.split()} - val_words
    recs = needle.build_needle_examples(scenes, sp.encode, input_length=N, num_train=0,
                                        num_validation=40, seed=1)
    for r in recs:
        words = set(r["text"].replace(r["needle"], " ").split()[len(needle.PROMPT.split()):])
        assert words <= val_words and not words & train_only


def test_filler_drops_lines_that_name_a_receiver():
    scenes = [{"split": "train", "text": "A: fair day\nB: hamlet is here\nC: Brutus!\nD: gone"}]
    assert needle.filler_lines(scenes, ("Hamlet", "Brutus"))["train"] == [["fair day", "gone"]]


def test_too_short_input_is_a_clear_error(corpus, sp):
    scenes = shakespeare.read_jsonl(os.path.join(shakespeare.corpus_dir(str(corpus[0])), "scenes.jsonl"))
    with pytest.raises(ValueError, match="no room for a needle"):
        needle.build_needle_examples(scenes, sp.encode, input_length=12, num_train=2,
                                     num_validation=2)


def test_prepare_needle_registers_a_seqio_task(corpus, sp):
    from coda_flax import tasks
    root, vocab = corpus
    logs = []
    stats = needle.prepare_needle(str(root), vocab, input_length=N, num_train=40,
                                  num_validation=16, log=logs.append)
    assert stats["validation"] == 16 and stats["min_offset"] == math.ceil(N / 3)
    needle.prepare_needle(str(root), vocab, input_length=N, num_train=40, num_validation=16,
                          log=logs.append)
    assert "already prepared" in logs[-1]
    tasks.register_offline_tasks(str(root), vocab)
    task = tasks.get_task_or_mixture("coda_shakespeare_needle")
    recs = {r["id"]: r for r in shakespeare.read_jsonl(needle.needle_path(str(root)))}
    exs = list(task.get_dataset({"inputs": N, "targets": 8}, split="validation", shuffle=False,
                                num_epochs=1).as_numpy_iterator())
    assert len(exs) == 16
    for ex in exs:
        r = recs[ex["id"].decode()]
        assert ex["inputs"][-1] == 1 and len(ex["inputs"]) == r["num_tokens"] + 1
        needle_ids = ex["inputs"][r["needle_start"]:r["needle_end"]]
        assert needle_ids.tolist() == sp.encode(" " + r["needle"])
        assert ex["targets_pretokenized"].decode() == r["target"]


def test_the_gave_question_asks_for_the_giver_anywhere(corpus, sp):
    scenes = shakespeare.read_jsonl(os.path.join(shakespeare.corpus_dir(str(corpus[0])), "scenes.jsonl"))
    recs = needle.build_needle_examples(scenes, sp.encode, input_length=N, num_train=200,
                                        num_validation=16, min_offset=0, question="gave", seed=4)
    prompt = needle.QUESTIONS["gave"][0]
    prompt_len = len(sp.encode(prompt))
    for r in recs:
        assert r["text"].startswith(prompt + " ") and r["target"] == r["giver"] != r["receiver"]
        assert r["needle"].startswith(r["giver"] + " ")
        assert sp.encode(r["text"])[r["needle_start"]:r["needle_end"]] == \
            sp.encode(" " + r["needle"])
    starts = [r["needle_start"] for r in recs]
    # min_offset 0: from right after the prompt, also inside the first n / 3 tokens
    assert min(starts) <= prompt_len + 2 and sum(x < math.ceil(N / 3) for x in starts) > 20
    val = [r["target"] for r in recs if r["split"] == "validation"]
    assert {n: val.count(n) for n in needle.NAMES} == {n: 2 for n in needle.NAMES}
    with pytest.raises(ValueError, match="unknown question 'whom'"):
        needle.build_needle_examples(scenes, sp.encode, input_length=N, num_train=2,
                                     num_validation=0, question="whom")


def test_pretraining_mixture_holds_span_corruption_and_the_gave_question(corpus, sp):
    from coda_flax import tasks
    root, vocab = corpus
    needle.prepare_needle(str(root), vocab, input_length=N, num_train=40, num_validation=8,
                          min_offset=0, question="gave", seed=1, log=lambda _: None)
    assert os.path.exists(needle.needle_path(str(root), "gave"))
    tasks.register_offline_tasks(str(root), vocab)
    gave = tasks.get_task_or_mixture("coda_shakespeare_needle_gave")
    ex = next(gave.get_dataset({"inputs": N, "targets": 8}, split="validation", shuffle=False,
                               num_epochs=1).as_numpy_iterator())
    assert ex["inputs_pretokenized"].decode().startswith("who gave it:")
    mix = tasks.get_task_or_mixture("coda_shakespeare_pretrain_mix")
    assert sorted(t.name for t in mix.tasks) == ["coda_shakespeare_needle_gave",
                                                 "coda_shakespeare_span_corruption"]
    assert mix.get_rate(mix.tasks[0]) == mix.get_rate(mix.tasks[1])


def test_evidence_share_hand_computed():
    # 2 layers, 2 examples, n = 6; example 1 has one padding position
    valid = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], bool)
    spans = [(2, 4), (0, 1)]
    selected = np.array([
        [[0, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]],      # layer 0
        [[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 1]],      # layer 1: a padded position selected
    ], bool)
    out = routing_stats.evidence_share(selected, spans, valid)
    # layer 0: ex0 2 of 3 routed are needle, ex1 1 of 2; layer 1: ex0 0 of 2, ex1 0 of 2 real
    np.testing.assert_allclose(out["routed_evidence_share"], [(2 / 3 + 1 / 2) / 2, 0.0])
    np.testing.assert_allclose(out["evidence_recall"], [(2 / 2 + 1 / 1) / 2, 0.0])
    assert out["chance"] == pytest.approx((2 / 6 + 1 / 5) / 2)
    # the best a router could do with these routed counts: min(needle, routed) / routed
    np.testing.assert_allclose(out["share_ceiling"], [(2 / 3 + 1 / 2) / 2, (2 / 2 + 1 / 2) / 2])


def test_evidence_share_of_several_needles_per_example():
    """Several spans per row (the givers' three needles): their tokens pooled per example."""
    valid = np.ones((2, 8), bool)
    spans = [[(0, 2), (5, 6)], (3, 4)]                 # row 0: two needles, row 1: one
    selected = np.array([[[1, 0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0]]], bool)
    out = routing_stats.evidence_share(selected, spans, valid)
    # row 0 routes 0, 5, 6: needle tokens 0 and 5 of {0, 1, 5}; row 1 routes 3, 4: needle 3
    np.testing.assert_allclose(out["evidence_recall"], [(2 / 3 + 1 / 1) / 2])
    np.testing.assert_allclose(out["routed_evidence_share"], [(2 / 3 + 1 / 2) / 2])
    assert out["chance"] == pytest.approx((3 / 8 + 1 / 8) / 2)
    with pytest.raises(ValueError, match="span 0 = \\(5, 9\\)"):
        routing_stats.evidence_share(selected, [[(0, 1), (5, 9)], (3, 4)], valid)


def test_evidence_share_rejects_bad_shapes_and_spans():
    valid = np.ones((1, 4), bool)
    with pytest.raises(ValueError, match="shapes"):
        routing_stats.evidence_share(np.ones((2, 4), bool), [(0, 1)], valid)
    with pytest.raises(ValueError, match="outside"):
        routing_stats.evidence_share(np.ones((1, 1, 4), bool), [(3, 6)], valid)


def test_role_positions_first_giver_last_receiver():
    row = [5, 7, 9, 3, 4, 9, 2, 1]
    # span (1, 7): giver 9 first at 2, receiver 2 last at 6
    assert probes.role_positions(row, (1, 7), 9, 2) == (2, 6)
    assert probes.role_positions(row, (1, 7), 9, 9) == (2, 5)
    assert probes.role_positions(row, (3, 7), 7, 2) is None        # giver outside the span


def test_ridge_probe_separable_random_and_closed_form():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = rng.normal(size=(400, 5))
    x[:, 2] += 4.0 * (2 * y - 1)                      # one feature separates the classes
    assert probes.ridge_probe(x[:300], y[:300], x[300:], y[300:]) == 1.0
    noise = rng.normal(size=(2000, 5))
    labels = rng.integers(0, 2, 2000)
    assert abs(probes.ridge_probe(noise[:1000], labels[:1000], noise[1000:], labels[1000:])
               - 0.5) < 0.06
    # ridge -> 0: the least-squares fit of the +-1 targets (numpy's lstsq) decides the same way
    a = np.c_[x[:300], np.ones(300)]
    w = np.linalg.lstsq(a, 2.0 * y[:300] - 1, rcond=None)[0]
    expected = ((np.c_[x[300:], np.ones(100)] @ w > 0) == y[300:]).mean()
    assert probes.ridge_probe(x[:300], y[:300], x[300:], y[300:], ridge=1e-9) == expected
    with pytest.raises(ValueError, match="same d"):
        probes.ridge_probe(x[:, :3], y, x, y)


def test_role_features_pick_the_name_states():
    states = np.arange(2 * 2 * 6 * 3, dtype=np.float32).reshape(2, 2, 6, 3)   # [L, b, n, d]
    tokens = np.array([[1, 8, 4, 9, 0, 0], [8, 8, 5, 9, 9, 1]])
    x, y = probes.role_features(states, tokens, [(1, 4), (0, 5)], [8, 8], [9, 9])
    assert y.tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(x, states[:, [0, 0, 1, 1], [1, 3, 0, 4]])
    with pytest.raises(ValueError, match="single-token"):
        probes.role_features(states, tokens, [(0, 1), (2, 3)], [8, 8], [9, 9])
