"""Sequence lengths and output features shared by all coda_flax tasks."""

from __future__ import annotations

import seqio

from coda_flax.tasks.span_corruption import random_spans_helper

# Sequence lengths per task: inputs from Table 8; targets: ours (labels are a few tokens,
# SQuAD / ReCoRD answers short spans, XSum one-sentence summaries; span corruption as T5).
# Shakespeare (8k vocabulary): play passages ~445 tokens on average (p98 537); speaker inputs
# 359 tokens at the 98th percentile; titles <= 11 and speaker names <= 12 tokens.
TASK_FEATURE_LENGTHS = {
    "coda_mnli": {"inputs": 128, "targets": 8},
    "coda_rte": {"inputs": 256, "targets": 8},
    "coda_boolq": {"inputs": 384, "targets": 8},
    "coda_squad": {"inputs": 512, "targets": 32},
    "coda_record": {"inputs": 512, "targets": 32},
    "coda_xsum": {"inputs": 1664, "targets": 64},
    "coda_c4_span_corruption": {"inputs": 512, "targets": random_spans_helper(512)[1]},  # 114
    "coda_shakespeare_span_corruption": {"inputs": 512, "targets": random_spans_helper(512)[1]},
    "coda_shakespeare_play": {"inputs": 512, "targets": 16},
    "coda_shakespeare_speaker": {"inputs": 384, "targets": 16},
}


def output_features(vocabulary) -> dict:
    """T5's default output features: inputs and targets with EOS, one shared vocabulary."""
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }
