"""T5 span corruption (Raffel et al. 2020, section 3.1.4), the pretraining objective of the paper's
text models ("We use the same data and procedure described in T5", appendix B).

A re-implementation of t5.data.preprocessors (t5 itself is not installable next to these pins):
random_spans_helper, random_spans_noise_mask, noise_span_to_unique_sentinel,
nonnoise_span_to_unique_sentinel, select_random_chunk, reduce_concat_tokens, split_tokens, denoise
and span_corruption, with the same algorithms and defaults (noise_density=0.15,
mean_noise_span_length=3). Layout of one example (sentinels s0 = vocab_size-1, s1 = vocab_size-2):

    tokens   a b c d e f g h i            (noise: c d, g)
    inputs   a b s0 e f s1 h i            (+ EOS)
    targets  s0 c d s1 g s2               (+ EOS)

Randomness uses seqio's stateless seeds (seqio.map_over_dataset(num_seeds=...)), so a seqio Task
with a fixed seed is reproducible.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional, Sequence

import seqio

from coda_flax.tasks._tf import tf

AUTOTUNE = tf.data.AUTOTUNE


def random_spans_helper(inputs_length: int, noise_density: float = 0.15,
                        mean_noise_span_length: float = 3.0, extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1):
    """Returns (tokens_length, targets_length): how many raw tokens to cut so that the corrupted
    inputs (non-noise tokens + one sentinel per span + EOS) fit exactly `inputs_length`, and the
    resulting targets length (noise tokens + sentinels + EOS). 512 -> (568, 114), as in T5."""

    def lengths(tokens_length):
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return (num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1,
                num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1)

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def _random_segmentation(num_items, num_segments, seed):
    """Partitions num_items into num_segments non-empty random segments; returns their lengths."""
    first_in_segment = tf.pad(
        seqio.stateless_shuffle(
            tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32), seed),
        [[1, 0]])
    segment_id = tf.cumsum(first_in_segment)
    return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)


def random_spans_noise_mask(length, noise_density: float, seeds,
                            mean_noise_span_length: float = 3.0):
    """Boolean noise mask [length] made of alternating non-noise / noise spans (T5's algorithm).

    round(length * noise_density) noise tokens (at least 1, at most length-1) are split into
    round(num_noise / mean_noise_span_length) (>= 1) spans of random lengths; the non-noise tokens
    into as many spans; the sequence starts with non-noise. seeds: two int32 [2] seeds.
    """
    if noise_density == 0.0:
        return tf.zeros([length], tf.bool)
    orig_length = length
    length = tf.maximum(length, 2)
    num_noise_tokens = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    num_noise_tokens = tf.minimum(tf.maximum(num_noise_tokens, 1), length - 1)
    num_noise_spans = tf.cast(
        tf.round(tf.cast(num_noise_tokens, tf.float32) / mean_noise_span_length), tf.int32)
    num_noise_spans = tf.maximum(num_noise_spans, 1)
    num_nonnoise_tokens = length - num_noise_tokens
    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, seeds[0])
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, seeds[1])
    interleaved = tf.reshape(tf.stack([nonnoise_span_lengths, noise_span_lengths], axis=1),
                             [num_noise_spans * 2])
    span_starts = tf.cumsum(interleaved)[:-1]
    span_start_indicator = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts,
                                                        length)
    span_num = tf.cumsum(span_start_indicator)
    is_noise = tf.equal(span_num % 2, 1)
    return is_noise[:orig_length]


def sentinel_id(vocabulary) -> int:
    """Id of the first sentinel <extra_id_0>: the last id of the vocabulary (T5 convention)."""
    return vocabulary.vocab_size - 1


def noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary, seeds=None):
    """Replaces each noise span by one sentinel (s0, s1, ... = vocab_size-1, vocab_size-2, ...)."""
    del seeds
    prev_token_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
    first_noise_tokens = tf.logical_and(noise_mask, tf.logical_not(prev_token_is_noise))
    subsequent_noise_tokens = tf.logical_and(noise_mask, prev_token_is_noise)
    sentinel = sentinel_id(vocabulary) + 1 - tf.cumsum(tf.cast(first_noise_tokens, tokens.dtype))
    tokens = tf.where(first_noise_tokens, sentinel, tokens)
    return tf.boolean_mask(tokens, tf.logical_not(subsequent_noise_tokens))


def nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocabulary, seeds=None):
    return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), vocabulary, seeds)


def select_random_chunk(dataset: tf.data.Dataset, output_features=None, max_length: int = 65536,
                        feature_key: str = "targets",
                        passthrough_feature_keys: Optional[Sequence[str]] = None, **unused_kwargs):
    """Keeps one random aligned chunk of <= max_length tokens per document; drops empty ones."""
    passthrough = list(passthrough_feature_keys or [])

    @seqio.map_over_dataset(num_seeds=1)
    def _chunk(x, seed):
        tokens = x[feature_key]
        n_tokens = tf.shape(tokens)[0]
        num_segments = tf.cast(
            tf.math.ceil(tf.cast(n_tokens, tf.float32) / tf.cast(max_length, tf.float32)), tf.int32)
        start = max_length * tf.random.stateless_uniform([], maxval=num_segments, dtype=tf.int32,
                                                         seed=seed)
        end = tf.minimum(start + max_length, n_tokens)
        out = {feature_key: tokens[start:end]}
        out.update({k: x[k] for k in passthrough})
        return out

    dataset = dataset.filter(lambda x: tf.not_equal(tf.size(x[feature_key]), 0))
    return _chunk(dataset)


def reduce_concat_tokens(dataset: tf.data.Dataset, feature_key: str = "targets",
                         batch_size: int = 128, **unused_kwargs):
    """Concatenates the tokens of batch_size consecutive examples (fewer, longer documents)."""
    dataset = dataset.map(lambda x: {feature_key: x[feature_key]}, num_parallel_calls=AUTOTUNE)
    dataset = dataset.padded_batch(batch_size, padded_shapes={feature_key: [-1]})

    def _concat(x):
        tokens = tf.reshape(x[feature_key], [-1])
        # strip the padding (id 0)
        return {feature_key: tf.boolean_mask(tokens, tf.cast(tokens, tf.bool))}

    return dataset.map(_concat, num_parallel_calls=AUTOTUNE)


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = "targets", **unused_kwargs):
    """Splits every token sequence into consecutive segments of max_tokens_per_segment tokens
    (the last one shorter)."""
    length = int(max_tokens_per_segment)

    def _split(x):
        tokens = x[feature_key]
        n_tokens = tf.shape(tokens)[0]
        num_segments = (n_tokens + length - 1) // length
        padded = tf.pad(tokens, [[0, num_segments * length - n_tokens]])
        lengths = tf.minimum(length, n_tokens - tf.range(num_segments) * length)
        return {feature_key: tf.reshape(padded, [num_segments, length]), "_len": lengths}

    dataset = dataset.map(_split, num_parallel_calls=AUTOTUNE).unbatch()
    return dataset.map(lambda x: {feature_key: x[feature_key][:x["_len"]]},
                       num_parallel_calls=AUTOTUNE)


def denoise(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
            noise_density: float = 0.15,
            noise_mask_fn: Callable = random_spans_noise_mask,
            inputs_fn: Callable = noise_span_to_unique_sentinel,
            targets_fn: Optional[Callable] = nonnoise_span_to_unique_sentinel,
            passthrough_feature_keys: Optional[Sequence[str]] = None,
            input_feature_key: str = "inputs", **unused_kwargs):
    """Builds (inputs, targets) from the token sequence in "targets" with a random noise mask."""
    passthrough = list(passthrough_feature_keys or [])
    vocabulary = output_features["targets"].vocabulary
    if (input_feature_key in output_features
            and vocabulary != output_features[input_feature_key].vocabulary):
        raise ValueError("denoise: inputs and targets must share a vocabulary")

    @seqio.map_over_dataset(num_seeds=2)
    def _denoise(features, seeds):
        tokens = features["targets"]
        noise_mask = noise_mask_fn(tf.size(tokens), noise_density, seeds=seeds)
        out = {input_feature_key: inputs_fn(tokens, noise_mask, vocabulary),
               "targets": targets_fn(tokens, noise_mask, vocabulary) if targets_fn else tokens}
        out.update({k: features[k] for k in passthrough})
        return out

    return _denoise(dataset)


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    mean_noise_span_length: float = 3.0, noise_density: float = 0.15,
                    input_feature_key: str = "inputs",
                    merge_examples_to_reduce_padding: bool = True, **unused_kwargs):
    """T5's span_corruption preprocessor: tokenized documents in "targets" -> corrupted examples
    whose inputs (with EOS) fill sequence_length["inputs"] exactly (the last piece of each
    document may be shorter). Use it after seqio.preprocessors.tokenize and before
    seqio.preprocessors.append_eos_after_trim."""
    tokens_length, targets_length = random_spans_helper(
        sequence_length[input_feature_key], noise_density, mean_noise_span_length)
    if sequence_length.get("targets") is not None and sequence_length["targets"] < targets_length:
        raise ValueError(
            f"span_corruption: targets length {sequence_length['targets']} is shorter than the "
            f"{targets_length} that inputs length {sequence_length[input_feature_key]} produces")
    ds = select_random_chunk(dataset, output_features, max_length=65536, feature_key="targets")
    if merge_examples_to_reduce_padding:
        ds = reduce_concat_tokens(ds, feature_key="targets", batch_size=128)
    ds = split_tokens(ds, max_tokens_per_segment=tokens_length, feature_key="targets")
    return denoise(ds, output_features, noise_density=noise_density,
                   noise_mask_fn=functools.partial(random_spans_noise_mask,
                                                   mean_noise_span_length=mean_noise_span_length),
                   input_feature_key=input_feature_key)


def reconstruct_from_span_corruption(inputs: Sequence[int], targets: Sequence[int],
                                     first_sentinel: int, eos_id: int = 1) -> list[int]:
    """Inverse of the corruption (for tests and inspection): puts the target spans back in place
    of their sentinels. Sentinels are ids in (first_sentinel - 100, first_sentinel]."""
    inputs = [t for t in inputs if t != eos_id and t != 0]
    targets = [t for t in targets if t != eos_id and t != 0]

    def is_sentinel(t):
        return first_sentinel - 100 < t <= first_sentinel

    spans, current = {}, None
    for t in targets:
        if is_sentinel(t):
            current = t
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out = []
    for t in inputs:
        out.extend(spans.get(t, []) if is_sentinel(t) else [t])
    return out
