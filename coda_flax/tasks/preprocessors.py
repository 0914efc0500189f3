"""Text-to-text preprocessors for the paper's language tasks (T5's formats, Raffel et al. 2020,
appendix D), re-implemented from t5.data.preprocessors (t5 is not installable next to these pins).

    MNLI   "mnli hypothesis: H premise: P"                 -> entailment|neutral|contradiction
    RTE    "rte hypothesis: H premise: P"                  -> entailment|not_entailment
    BoolQ  "boolq passage: P question: Q"                  -> False|True
    SQuAD  "question: Q context: C" (punctuation padded)   -> first answer
    ReCoRD "record query: Q entities: E1, E2 passage: P"   -> one example per answer
    XSum   "summarize: D"                                  -> summary

GLUE-style inputs join the text features in sorted key order, as T5's `glue` preprocessor does.
"""

from __future__ import annotations

from typing import Optional, Sequence

from coda_flax.tasks._tf import tf

AUTOTUNE = tf.data.AUTOTUNE


def glue(x, benchmark_name: str, label_names: Sequence[str],
         feature_names: Optional[Sequence[str]] = None, id_key: str = "idx"):
    """One GLUE/SuperGLUE classification example -> {"inputs", "targets", "idx"} (T5 format).

    Label -1 (unlabeled test sets) becomes the target "<unk>"."""
    feature_keys = list(feature_names) if feature_names else sorted(
        set(x.keys()).difference(["label", id_key]))
    parts = [benchmark_name]
    for key in feature_keys:
        parts += [f"{key}:", x[key]]
    label = tf.cast(x["label"], tf.int32)
    target = tf.cond(tf.equal(label, -1), lambda: tf.constant("<unk>"),
                     lambda: tf.gather(tf.constant(list(label_names)), tf.maximum(label, 0)))
    return {"inputs": tf.strings.join(parts, separator=" "), "targets": target, "idx": x[id_key]}


def pad_punctuation(text):
    """Spaces around every non-word character, whitespace collapsed (T5's SQuAD formatting)."""
    text = tf.strings.regex_replace(text, r"(\W)", r" \1 ")
    return tf.strings.regex_replace(text, r"\s+", " ")


def _string_join(parts):
    return tf.strings.regex_replace(tf.strings.join(parts, separator=" "), r"\s+", " ")


def squad(x, include_context: bool = True):
    """SQuAD v1.1 -> "question: Q context: C" / first answer; all answers kept for the metric."""
    a = pad_punctuation(x["answers"]["text"])
    q = pad_punctuation(x["question"])
    c = pad_punctuation(x["context"])
    inputs = (_string_join(["question:", q, "context:", c]) if include_context
              else _string_join(["squad trivia question:", q]))
    return {"inputs": inputs, "targets": a[0], "id": x["id"], "context": c, "question": q,
            "answers": a}


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """ReCoRD (T5's `record` preprocessor): one example per answer (an unanswered example gives one
    with target "<unk>"); "@highlight" bullets of the passage become sentences; the query keeps its
    "@placeholder"; all answers and the (passage, query) index are passed through for the metric."""

    def process_answers(x):
        answers = x["answers"]
        num_answers = tf.size(answers)
        n = tf.maximum(num_answers, 1)
        targets = tf.cond(num_answers > 0, lambda: answers, lambda: tf.constant(["<unk>"]))

        def dup(t):
            return tf.tile(tf.expand_dims(t, 0),
                           tf.concat([[n], tf.ones_like(tf.shape(t))], axis=0))

        return {
            "passage": dup(x["passage"]), "query": dup(x["query"]),
            "entities": dup(x["entities"]), "answers": dup(answers),
            "targets": targets,
            "idx/passage": dup(x["idx"]["passage"]), "idx/query": dup(x["idx"]["query"]),
        }

    def to_text(x):
        passage = tf.strings.regex_replace(x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
        passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
        inputs = tf.strings.join(["record query:", x["query"], "entities:",
                                  tf.strings.reduce_join(x["entities"], separator=", "),
                                  "passage:", passage], separator=" ")
        return {"inputs": inputs, "targets": x["targets"], "answers": x["answers"],
                "idx/passage": x["idx/passage"], "idx/query": x["idx/query"]}

    dataset = dataset.map(process_answers, num_parallel_calls=AUTOTUNE).unbatch()
    return dataset.map(to_text, num_parallel_calls=AUTOTUNE)


def summarize(x, article_key: str = "document", summary_key: str = "summary"):
    """XSum -> "summarize: D" / summary (T5's `summarize`)."""
    return {"inputs": tf.strings.join(["summarize:", x[article_key]], separator=" "),
            "targets": x[summary_key]}
