"""Vision metrics (coda_flax.tasks.metrics): exact match, ANLS (DocVQA) and CIDEr-D
(coco-caption), against hand-computed cases and values from pycocoevalcap 1.2."""

import math

import numpy as np
import pytest

from coda_flax.tasks import metrics as M


# ----------------------------------------------------------------------------- exact match

def test_exact_match_normalises_and_accepts_answer_lists():
    targets = ["Yes", ["Paris", "paris, france"], b"the Cat", "blue"]
    predictions = [" yes ", "PARIS,  France", "the  cat", "red"]
    assert M.exact_match(targets, predictions) == {"exact_match": 75.0}
    assert M.exact_match(targets, predictions, normalize=False)["exact_match"] == 0.0
    assert M.exact_match([np.array([b"a", b"b"])], ["b"])["exact_match"] == 100.0
    assert M.exact_match([], []) == {"exact_match": 0.0}
    with pytest.raises(ValueError, match="must match"):
        M.exact_match(["a"], [])


# ----------------------------------------------------------------------------- ANLS

def test_levenshtein():
    assert M.levenshtein("kitten", "sitting") == 3
    assert M.levenshtein("", "abc") == 3
    assert M.levenshtein("flaw", "lawn") == 2
    assert M.levenshtein("same", "same") == 0


@pytest.mark.parametrize("target, prediction, score", [
    ("hello", "hello", 1.0),
    ("hello", "helo", 0.8),                       # NL = 1/5
    ("Hello World", " hello   world ", 1.0),     # lowercase, whitespace collapsed
    ("abcd", "abef", 0.5),                        # NL = 0.5 = threshold: kept (official script)
    ("abcd", "axyz", 0.0),                        # NL = 0.75 > 0.5: 0
    ("1/3/2000", "1/3/200", 7 / 8),
    ("", "", 1.0),
])
def test_anls_single_answers(target, prediction, score):
    assert M.anls([target], [prediction])["anls"] == pytest.approx(100 * score)


def test_anls_takes_the_best_answer_and_averages():
    targets = [["Dr. Smith", "smith"], ["$ 12.50"], ["Tuesday"]]
    predictions = ["smith", "$12.50", "Tusday"]
    # 1.0 (second answer); NL("$ 12.50", "$12.50") = 1/7 -> 6/7; NL(tuesday, tusday) = 1/7
    want = 100 * (1 + 6 / 7 + 6 / 7) / 3
    assert M.anls(targets, predictions)["anls"] == pytest.approx(want)
    assert M.anls(targets, predictions, threshold=0.1)["anls"] == pytest.approx(100 / 3)
    # NL(tuesday, monday) = 4/7 > 0.5 -> 0
    assert M.anls([["Tuesday"]], ["Monday"])["anls"] == 0.0


def test_missing_answers_raise():
    with pytest.raises(ValueError, match="no reference"):
        M.anls([[]], ["x"])


# ----------------------------------------------------------------------------- CIDEr

def test_caption_tokens():
    assert M.caption_tokens("Don't STOP, the music! (live)") == ["do", "n't", "stop", "the",
                                                                 "music", "live"]
    assert M.caption_tokens("e-mail 3.5 it's") == ["e-mail", "3.5", "it", "'s"]


def test_cider_identical_candidates_in_a_two_document_corpus():
    """Each candidate equals its only reference and no n-gram is shared between the two
    documents: idf = log 2 for every n-gram, the cosines are 1 for every n <= length and there
    is no length penalty, so CIDEr = 10 * min(len, 4) / 4 per document (x100 returned)."""
    refs = [["a b"], ["c d e f g"]]
    score = M.cider(refs, ["a b", "c d e f g"])["cider"]
    assert score == pytest.approx(100 * (10 * 2 / 4 + 10 * 4 / 4) / 2)


def test_cider_hand_computed_partial_match():
    """Candidate "a b" against the reference "a b c" (other document "d e"): every idf weight is
    w = log 2. Unigrams: clipped dot 2 w^2, norms sqrt(2) w and sqrt(3) w -> 2 / sqrt(6); bigrams:
    {ab} vs {ab, bc} -> 1 / sqrt(2); tri/4-grams: 0. Lengths in bigrams (coco-caption): 1 vs 2 ->
    penalty exp(-1 / 72)."""
    doc1 = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    doc2 = 10 * 2 / 4
    got = M.cider([["a b c"], ["d e"]], ["a b", "d e"], tokenize=False)["cider"]
    assert got == pytest.approx(100 * (doc1 + doc2) / 2)


def test_cider_shared_ngrams_get_zero_weight_and_single_example_scores_zero():
    # "a" is in both documents: idf log 2 - log 2 = 0, so only "b" / "c" (and bigrams) count
    got = M.cider([["a b"], ["a c"]], ["a b", "a c"], tokenize=False)["cider"]
    assert got == pytest.approx(100 * 10 * 2 / 4)
    assert M.cider([["a b c"]], ["a b c"])["cider"] == 0.0       # N = 1: all idf weights 0


# Values computed with pycocoevalcap 1.2 (coco-caption's Cider, CIDEr-D) on this corpus.
COCO_REFS = [["a login screen of an app", "login page with email and password",
              "screen to sign in to the app"],
             ["list of songs in a music app", "music player showing a playlist"],
             ["settings page of the app", "screen showing app settings options",
              "settings screen"],
             ["map with nearby restaurants", "a map showing restaurants near the user"]]
COCO_HYPS = ["login page of an app", "music app showing a list of songs", "settings page",
             "a screen with a map"]
COCO_SCORE = 2.0350795504995682      # per example: 1.842008, 2.721508, 2.205081, 1.371721


def test_cider_matches_pycocoevalcap_values():
    assert M.cider(COCO_REFS, COCO_HYPS)["cider"] == pytest.approx(100 * COCO_SCORE, rel=1e-12)


def test_cider_matches_pycocoevalcap_live():
    from pycocoevalcap.cider.cider import Cider
    rng = np.random.default_rng(0)
    vocab = "a b c d e f g h".split()
    for _ in range(5):
        n = int(rng.integers(2, 8))
        refs = [[" ".join(rng.choice(vocab, rng.integers(1, 8))) for _ in range(rng.integers(1, 4))]
                for _ in range(n)]
        hyps = [" ".join(rng.choice(vocab, rng.integers(1, 8))) for _ in range(n)]
        want, _ = Cider().compute_score({str(i): r for i, r in enumerate(refs)},
                                        {str(i): [h] for i, h in enumerate(hyps)})
        assert M.cider(refs, hyps, tokenize=False)["cider"] == pytest.approx(100 * want)


def test_answers_postprocessor():
    example = {"answers": np.array([b"red", b"dark red"])}
    assert M.answers_postprocessor(b"red ", example, is_target=True) == ["red", "dark red"]
    assert M.answers_postprocessor(b" red ", example, is_target=False) == "red"
    assert M.answers_postprocessor(b"x", {"answers": np.array([], dtype=object)},
                                   is_target=True) == "x"
