"""Sequence lengths and output features shared by all coda_flax tasks."""

from __future__ import annotations

import seqio

from coda_flax.tasks._tf import tf
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
    # Speech (coda_flax.tasks.speech): 10 ms log-mel frames, CTC characters. LibriSpeech: Table
    # 8's 3200 frames (32 s; longer utterances are dropped, never cut) and ~15 characters / s.
    "coda_speech_offline": {"inputs": 1600, "targets": 320},
    "coda_librispeech": {"inputs": 3200, "targets": 600},
    # Images (coda_flax.tasks.vision): inputs = max patches (the offline tasks small enough for
    # CPU runs: a 256 x 256 page is 16 x 16 patches; Table 8's 4096 for the paper's tasks),
    # targets = bytes + EOS (easy-VQA answers <= 9 bytes, transcriptions <= 24).
    "coda_easy_vqa": {"inputs": 256, "targets": 16},
    "coda_rendered_docs": {"inputs": 256, "targets": 32},
    "coda_rendered_words": {"inputs": 256, "targets": 8},
    "coda_ocrvqa": {"inputs": 4096, "targets": 128},
    "coda_docvqa": {"inputs": 4096, "targets": 128},
    "coda_screen2words": {"inputs": 4096, "targets": 128},
}


def output_features(vocabulary) -> dict:
    """T5's default output features: inputs and targets with EOS, one shared vocabulary."""
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


class ContinuousEncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """EncDecFeatureConverter for encoders that read vectors instead of token ids.

    Task feature "inputs" is float32 [length, dim]: image patches (Pix2Struct layout: row, column,
    pixels; coda_flax.frontends.patches) or audio frames (frame index, log-mel;
    coda_flax.frontends.audio). Column 0 is a 1-based position, so padded rows (all zeros) are recognised as padding by the model.
    "targets" are token ids as usual. Unpacked only.
    """

    _FS = seqio.FeatureConverter.FeatureSpec
    TASK_FEATURES = dict(seqio.EncDecFeatureConverter.TASK_FEATURES,
                         inputs=_FS(dtype=tf.float32, rank=2))
    MODEL_FEATURES = dict(seqio.EncDecFeatureConverter.MODEL_FEATURES,
                          encoder_input_tokens=_FS(dtype=tf.float32, rank=2))

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError("ContinuousEncDecFeatureConverter does not pack; use pack=False.")
        super().__init__(pack=False, **kwargs)


def continuous_output_features(vocabulary, add_eos: bool = True) -> dict:
    """Output features of image / audio tasks: float vectors in, token ids out."""
    return {
        "inputs": seqio.ContinuousFeature(dtype=tf.float32, rank=2, add_eos=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=add_eos),
    }
