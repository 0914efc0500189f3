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


def _text(x) -> str:
    if isinstance(x, (bytes, np.bytes_)):
        return bytes(x).decode("utf-8")
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return _text(x.item())
    return str(x)


# ------------------------------------------------------------------ classification

def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict:
    """Exact-match accuracy of the (stripped) label strings, in percent."""
    if len(targets) != len(predictions):
        raise ValueError("Number of targets and predictions must match.")
    if not targets:
        return {"accuracy": 0.0}
    correct = [_text(t).strip() == _text(p).strip() for t, p in zip(targets, predictions)]
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
    return _normalize_answer(_text(answer), punc_chars=string.punctuation, punc_repl="")


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
        return [_text(a) for a in np.asarray(example["answers"]).reshape(-1)]
    return _text(answer)


def record_postprocessor(answer, example=None, is_target: bool = False):
    """{"value", "group"}: the answer (targets: all answers) and the (passage, query) index."""
    group = None
    if example is not None and "idx/passage" in example:
        group = (int(np.asarray(example["idx/passage"])), int(np.asarray(example["idx/query"])))
    if is_target and example is not None and "answers" in example:
        value = [_text(a) for a in np.asarray(example["answers"]).reshape(-1)]
        return {"value": value, "group": group}
    return {"value": _text(answer), "group": group}


def strip_postprocessor(output, example=None, is_target: bool = False):
    del example, is_target
    return _text(output).strip()


# ------------------------------------------------------------------ summarisation

def rouge(targets: Sequence[str], predictions: Sequence[str],
          score_keys: Sequence[str] = ("rouge1", "rouge2", "rougeLsum")) -> dict:
    """ROUGE F-measures (rouge-score package, no stemming, as T5), averaged over examples.

    As in T5, " . " gets a newline after it so that rougeLsum sees sentences. T5 reports the
    bootstrap-aggregated mid value; the plain mean used here is its point estimate."""
    from rouge_score import rouge_scorer

    def prepare(summary):
        return _text(summary).replace(" . ", " .\n")

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
