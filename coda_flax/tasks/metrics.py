"""Metrics and postprocessors of the paper's tasks (Table 9: accuracy for MNLI / RTE / BoolQ, F1
(and EM) for SQuAD and ReCoRD, ROUGE-2 for XSum), following t5.evaluation.metrics / qa_utils.

seqio calls metric_fns(targets, predictions) on postprocessed strings and
postprocess_fn(decoded, example=..., is_target=...). All scores are percentages.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Mapping, Sequence

import numpy as np


def majority_floor(targets) -> tuple[str, float]:
    """(the most frequent answer, its share): the accuracy of always predicting it."""
    targets = list(targets)
    if not targets:
        raise ValueError("majority_floor of an empty list")
    values, counts = np.unique(np.asarray(targets, dtype=object).astype(str), return_counts=True)
    return str(values[np.argmax(counts)]), float(counts.max() / len(targets))


def as_text(x) -> str:
    """A seqio field as text: bytes (what tf.data yields), a 0-d array of them, or anything
    str() reads."""
    if isinstance(x, (bytes, np.bytes_)):
        return bytes(x).decode("utf-8")
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return as_text(x.item())
    return str(x)


# ------------------------------------------------------------------ classification

def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict:
    """Exact-match accuracy of the (stripped) label strings, in percent."""
    if len(targets) != len(predictions):
        raise ValueError("Number of targets and predictions must match.")
    if not targets:
        return {"accuracy": 0.0}
    correct = [as_text(t).strip() == as_text(p).strip() for t, p in zip(targets, predictions)]
    return {"accuracy": 100.0 * float(np.mean(correct))}


# ------------------------------------------------------------------ QA (SQuAD / ReCoRD)

def _normalize_answer(text: str, punc_chars: str, punc_repl: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    text = text.lower()
    to_replace = set(punc_chars)
    text = "".join(punc_repl if ch in to_replace else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_squad(answer: str) -> str:
    """Normalisation of the official SQuAD evaluation script (as t5.evaluation.qa_utils)."""
    return _normalize_answer(as_text(answer), punc_chars=string.punctuation, punc_repl="")


def _exact_match_score(target: str, prediction: str) -> float:
    return float(target == prediction)


def _f1_score(target: str, prediction: str) -> float:
    prediction_tokens, target_tokens = prediction.split(), target.split()
    common = collections.Counter(prediction_tokens) & collections.Counter(target_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(target_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict:
    """EM and token F1, each the max over a question's reference answers (pre-normalised text)."""
    if len(targets) != len(predictions):
        raise ValueError("Number of targets and predictions must match.")
    if not targets:
        return {"em": 0.0, "f1": 0.0}
    em = np.mean([max(_exact_match_score(t, p) for t in ts) for p, ts in zip(predictions, targets)])
    f1 = np.mean([max(_f1_score(t, p) for t in ts) for p, ts in zip(predictions, targets)])
    return {"em": 100.0 * float(em), "f1": 100.0 * float(f1)}


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict:
    """SQuAD EM / F1 with the official normalisation; targets are lists of reference answers."""
    targets = [[normalize_squad(t) for t in ([u] if isinstance(u, (str, bytes)) else u)]
               for u in targets]
    predictions = [normalize_squad(p) for p in predictions]
    return qa_metrics(targets, predictions)


def deduplicate_metric(metric_fn: Callable, group_key: str = "group", value_key: str = "value"):
    """Wraps a metric to see one example per group (ReCoRD: one per query, although training-style
    preprocessing made one example per answer)."""

    def _deduplicated(targets: Sequence[Mapping[str, Any]],
                      predictions: Sequence[Mapping[str, Any]]):
        seen, dedup_targets, dedup_predictions = set(), [], []
        for targ, pred in zip(targets, predictions):
            group = targ[group_key]
            if group in seen:
                continue
            seen.add(group)
            dedup_targets.append(targ[value_key])
            dedup_predictions.append(pred[value_key] if isinstance(pred, Mapping) else pred)
        return metric_fn(dedup_targets, dedup_predictions)

    _deduplicated.__name__ = f"deduplicated_{getattr(metric_fn, '__name__', 'metric')}"
    return _deduplicated


record = deduplicate_metric(squad)
record.__doc__ = "ReCoRD: max-over-answers EM / F1 (SQuAD normalisation), one example per query."


def qa_postprocessor(answer, example=None, is_target: bool = False):
    """Predictions: the decoded answer; targets: all reference answers of the example."""
    if is_target and example is not None and "answers" in example:
        return [as_text(a) for a in np.asarray(example["answers"]).reshape(-1)]
    return as_text(answer)


def record_postprocessor(answer, example=None, is_target: bool = False):
    """{"value", "group"}: the answer (targets: all answers) and the (passage, query) index."""
    group = None
    if example is not None and "idx/passage" in example:
        group = (int(np.asarray(example["idx/passage"])), int(np.asarray(example["idx/query"])))
    if is_target and example is not None and "answers" in example:
        value = [as_text(a) for a in np.asarray(example["answers"]).reshape(-1)]
        return {"value": value, "group": group}
    return {"value": as_text(answer), "group": group}


def strip_postprocessor(output, example=None, is_target: bool = False):
    del example, is_target
    return as_text(output).strip()


# ------------------------------------------------------------------ summarisation

def rouge(targets: Sequence[str], predictions: Sequence[str],
          score_keys: Sequence[str] = ("rouge1", "rouge2", "rougeLsum")) -> dict:
    """ROUGE F-measures (rouge-score package, no stemming, as T5), averaged over examples.

    As in T5, " . " gets a newline after it so that rougeLsum sees sentences. T5 reports the
    bootstrap-aggregated mid value; the plain mean used here is its point estimate."""
    from rouge_score import rouge_scorer

    def prepare(summary):
        return as_text(summary).replace(" . ", " .\n")

    if len(targets) != len(predictions):
        raise ValueError("Number of targets and predictions must match.")
    scorer = rouge_scorer.RougeScorer(rouge_types=list(score_keys))
    totals = {k: 0.0 for k in score_keys}
    for target, prediction in zip(targets, predictions):
        scores = scorer.score(target=prepare(target), prediction=prepare(prediction))
        for k in score_keys:
            totals[k] += scores[k].fmeasure
    n = max(len(targets), 1)
    return {k: 100.0 * v / n for k, v in totals.items()}


# ------------------------------------------------------------------ vision (Pix2Struct tasks)
# OCR-VQA: exact match; DocVQA: ANLS; Screen2Words: CIDEr (CoDA Table 6, Pix2Struct Table 2).
# Targets may be one string or a list of acceptable answers / reference captions per example.

def _references(target) -> list[str]:
    if isinstance(target, (str, bytes, np.bytes_)):
        return [as_text(target)]
    refs = [as_text(t) for t in np.asarray(target, dtype=object).reshape(-1)]
    if not refs:
        raise ValueError("an example has no reference answers (unlabelled split?).")
    return refs


def _check_lengths(targets, predictions) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"Number of targets ({len(targets)}) and predictions "
                         f"({len(predictions)}) must match.")


def normalize_vqa(text) -> str:
    """Lowercase, strip, collapse whitespace (the DocVQA / InfographicVQA scripts' normalisation)."""
    return " ".join(as_text(text).strip().lower().split())


def exact_match(targets: Sequence[Any], predictions: Sequence[Any],
                normalize: bool = True) -> dict:
    """Percentage of predictions equal to one of their example's answers.

    normalize=True compares normalize_vqa() forms (lowercase / strip / single spaces);
    Pix2Struct's own exact_match compares the raw strings: pass normalize=False for that."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"exact_match": 0.0}
    norm = normalize_vqa if normalize else as_text
    hits = [any(norm(t) == norm(p) for t in _references(ts)) for ts, p in zip(targets, predictions)]
    return {"exact_match": 100.0 * float(np.mean(hits))}


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of characters)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(targets: Sequence[Any], predictions: Sequence[Any], threshold: float = 0.5) -> dict:
    """Average Normalized Levenshtein Similarity (Biten et al. 2019, DocVQA; in percent).

    Per question: NL = levenshtein(answer, prediction) / max(len(answer), len(prediction)) on
    normalize_vqa() strings, score = max over answers of 1 - NL, set to 0 when it is below
    1 - threshold (NL > threshold). As the official DocVQA / InfographicVQA scripts and
    Pix2Struct: NL = threshold exactly keeps 1 - threshold (the paper writes NL < threshold)."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"anls": 0.0}
    scores = []
    for ts, p in zip(targets, predictions):
        p = normalize_vqa(p)
        best = 0.0
        for t in _references(ts):
            t = normalize_vqa(t)
            length = max(len(t), len(p))
            nl = levenshtein(t, p) / length if length else 0.0
            best = max(best, 1.0 - nl if nl <= threshold else 0.0)
        scores.append(best)
    return {"anls": 100.0 * float(np.mean(scores))}


_PTB_PUNCTUATION = {"''", "'", "``", "`", "\"", "(", ")", "{", "}", "-LRB-", "-RRB-", "-LCB-",
                    "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_PTB_TOKEN = re.compile(r"n't\b|'(?:s|re|ve|ll|d|m)\b|[^\W_]+(?:[.\-/'][^\W_]+)*|\.\.\.|--|\S")


def caption_tokens(text) -> list[str]:
    """Lowercased word tokens with punctuation removed: an approximation, without Java, of
    coco-caption's PTBTokenizer pipeline (Stanford PTB tokenizer, -lowerCase, then its
    punctuation list dropped). Contractions split as PTB does ("don't" -> "do n't")."""
    text = as_text(text).lower()
    text = re.sub(r"(\w)(n't)\b", r"\1 \2", text)
    text = re.sub(r"(\w)('(?:s|re|ve|ll|d|m))\b", r"\1 \2", text)
    return [t for t in _PTB_TOKEN.findall(text) if t not in _PTB_PUNCTUATION]


def _ngrams(tokens: Sequence[str], n: int) -> collections.Counter:
    counts = collections.Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i:i + k])] += 1
    return counts


def cider(targets: Sequence[Any], predictions: Sequence[Any], n: int = 4, sigma: float = 6.0,
          tokenize: bool = True) -> dict:
    """CIDEr-D (Vedantam et al. 2015) as coco-caption's pycocoevalcap.cider computes it, x100.

    Per example: n-gram (1..n) tf-idf vectors, idf = log(N) - log(max(1, df)) with df counted
    over the N examples' reference sets; for each n the clipped cosine
    sum_g min(v_hyp[g], v_ref[g]) v_ref[g] / (|v_hyp| |v_ref|), times the Gaussian length penalty
    exp(-(l_hyp - l_ref)^2 / (2 sigma^2)), averaged over n and over the references, times 10.
    As coco-caption, the lengths l are counted in bigrams (its counts2vec adds term frequencies
    when the n-gram index is 1; the difference equals the difference in words whenever both
    captions are non-empty), and an n with a zero vector scores 0.

    Scale: coco-caption reports that number (e.g. 1.102); Pix2Struct's metrics.cider and the
    papers (CoDA Table 6: Screen2Words 110.2) multiply it by 100, so this returns 100x. The
    idf needs a corpus: with a single example every weight is log(1) - log(1) = 0 and CIDEr is 0.
    tokenize: caption_tokens() (lowercase, no punctuation); False splits on whitespace only."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"cider": 0.0}
    split = caption_tokens if tokenize else (lambda s: as_text(s).split())
    refs = [[_ngrams(split(r), n) for r in _references(ts)] for ts in targets]
    hyps = [_ngrams(split(p), n) for p in predictions]
    doc_freq = collections.Counter()
    for ref_set in refs:
        doc_freq.update({g for r in ref_set for g in r})
    log_n = np.log(float(len(refs)))

    def vectorize(counts):
        vec = [dict() for _ in range(n)]
        norm = np.zeros(n)
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            vec[k][g] = tf * (log_n - np.log(max(1.0, doc_freq[g])))
            norm[k] += vec[k][g] ** 2
            if k == 1:
                length += tf
        return vec, np.sqrt(norm), length

    def similarity(hyp, ref):
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        val = np.zeros(n)
        for k in range(n):
            val[k] = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= np.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
        return val

    scores = []
    for hyp_counts, ref_set in zip(hyps, refs):
        hyp = vectorize(hyp_counts)
        total = sum(similarity(hyp, vectorize(r)) for r in ref_set)
        scores.append(10.0 * float(np.mean(total)) / len(ref_set))
    return {"cider": 100.0 * float(np.mean(scores))}


def answers_postprocessor(output, example=None, is_target: bool = False):
    """Predictions: the decoded text, stripped. Targets: the example's "answers" (all acceptable
    answers / reference captions), or its decoded target when it has none."""
    if is_target and example is not None and "answers" in example:
        answers = [as_text(a) for a in np.asarray(example["answers"]).reshape(-1)]
        if answers:
            return answers
    return as_text(output).strip()


# ------------------------------------------------------------------ speech recognition

def edit_distance(reference: Sequence[Any], hypothesis: Sequence[Any]) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two sequences,
    row by row in numpy: the insertion chain of a row is a running minimum."""
    ref_ids = {tok: i for i, tok in enumerate(dict.fromkeys(list(reference) + list(hypothesis)))}
    ref = np.array([ref_ids[t] for t in reference], np.int64)
    hyp = np.array([ref_ids[t] for t in hypothesis], np.int64)
    steps = np.arange(len(hyp) + 1)
    row = steps.copy()
    for r in ref:
        diag = row[:-1] + (hyp != r)
        tmp = np.concatenate([[row[0] + 1], np.minimum(diag, row[1:] + 1)])
        row = np.minimum.accumulate(tmp - steps) + steps
    return int(row[-1])


def _edit_rate(targets: Sequence[Any], predictions: Sequence[Any], split) -> float:
    if len(targets) != len(predictions):
        raise ValueError("Number of targets and predictions must match.")
    edits = words = 0
    for t, p in zip(targets, predictions):
        ref, hyp = split(as_text(t)), split(as_text(p))
        edits += edit_distance(ref, hyp)
        words += len(ref)
    return 100.0 * edits / words if words else (0.0 if edits == 0 else float("inf"))


def wer(targets: Sequence[Any], predictions: Sequence[Any]) -> dict:
    """Corpus word error rate in percent: total word edits / total reference words (as jiwer;
    words are whitespace-separated, compared case-sensitively)."""
    return {"wer": _edit_rate(targets, predictions, str.split)}


def cer(targets: Sequence[Any], predictions: Sequence[Any]) -> dict:
    """Corpus character error rate in percent: character edits (spaces included) / reference
    characters, after stripping the ends (as jiwer.cer)."""
    return {"cer": _edit_rate(targets, predictions, lambda s: list(s.strip()))}
