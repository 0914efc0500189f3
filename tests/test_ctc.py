"""coda_flax.ctc: the optax-based CTC loss against torch.nn.functional.ctc_loss and a brute-force
sum over every alignment (T <= 5, V = 3); greedy decoding against itertools.groupby; prefix beam
search against brute-force labelling probabilities."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coda_flax.ctc import ctc_greedy_decode, ctc_loss, ctc_prefix_beam_search


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _collapse(path, blank=0):
    return tuple(k for k, _ in itertools.groupby(path) if k != blank)


def _brute_force_labelling_logprobs(log_probs, blank=0):
    """{labelling: log p} summing p(path) over all V^T paths."""
    t, v = log_probs.shape
    probs = {}
    for path in itertools.product(range(v), repeat=t):
        p = math.exp(sum(log_probs[i, c] for i, c in enumerate(path)))
        key = _collapse(path, blank)
        probs[key] = probs.get(key, 0.0) + p
    return {k: math.log(p) for k, p in probs.items() if p > 0}


def _brute_force_loss(logits, labels, blank=0):
    table = _brute_force_labelling_logprobs(_log_softmax(logits), blank)
    return -table.get(tuple(labels), -math.inf)


def _random_case(rng, b=4, t=5, v=3, max_labels=3):
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * 2.0
    lengths = rng.integers(1, t + 1, size=b)
    lengths[0] = t
    label_lengths = rng.integers(1, max_labels + 1, size=b)
    labels = np.zeros((b, max_labels), np.int32)
    for i in range(b):
        label_lengths[i] = min(label_lengths[i], lengths[i])
        seq = rng.integers(1, v, size=label_lengths[i])
        # keep it feasible: frames >= labels + repeats
        while len(seq) + sum(seq[1:] == seq[:-1]) > lengths[i]:
            seq = seq[:-1]
        label_lengths[i] = len(seq)
        labels[i, :len(seq)] = seq
    frame_mask = np.arange(t)[None] < lengths[:, None]
    label_mask = np.arange(max_labels)[None] < label_lengths[:, None]
    return logits, frame_mask, labels, label_mask


@pytest.mark.parametrize("seed", range(4))
def test_ctc_loss_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    logits, frame_mask, labels, label_mask = _random_case(rng)
    got = np.asarray(ctc_loss(logits, frame_mask, labels, label_mask))
    for i in range(len(logits)):
        t, n = frame_mask[i].sum(), label_mask[i].sum()
        ref = _brute_force_loss(logits[i, :t], labels[i, :n])
        np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-4)


def test_ctc_loss_matches_torch():
    import torch
    rng = np.random.default_rng(7)
    b, t, v, n = 6, 40, 12, 10
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    in_len = rng.integers(25, t + 1, size=b)
    lab_len = rng.integers(1, n + 1, size=b)
    labels = np.where(np.arange(n)[None] < lab_len[:, None], rng.integers(1, v, size=(b, n)), 0)
    frame_mask = np.arange(t)[None] < in_len[:, None]
    ours = np.asarray(ctc_loss(logits, frame_mask, labels))  # label_mask from labels != 0
    log_probs = torch.log_softmax(torch.tensor(logits), -1).transpose(0, 1)  # [T, b, V]
    ref = torch.nn.functional.ctc_loss(log_probs, torch.tensor(labels, dtype=torch.long),
                                       torch.tensor(in_len), torch.tensor(lab_len), blank=0,
                                       reduction="none").numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


def test_ctc_loss_masks_and_conventions():
    rng = np.random.default_rng(3)
    logits, frame_mask, labels, label_mask = _random_case(rng, b=3, t=5)
    base = np.asarray(ctc_loss(logits, frame_mask, labels, label_mask))
    # padded frames do not matter
    noisy = np.where(frame_mask[..., None], logits, 1e3 * rng.normal(size=logits.shape))
    np.testing.assert_allclose(ctc_loss(noisy, frame_mask, labels, label_mask), base, rtol=1e-5)
    # labels given with holes (valid = True) are compacted; None = labels != 0
    spread = np.zeros((3, 6), np.int32)
    spread_mask = np.zeros((3, 6), bool)
    for i in range(3):
        seq = labels[i][label_mask[i]]
        spread[i, 1:2 * len(seq):2] = seq
        spread_mask[i, 1:2 * len(seq):2] = True
    np.testing.assert_allclose(ctc_loss(logits, frame_mask, spread, spread_mask), base,
                               rtol=1e-5)
    np.testing.assert_allclose(ctc_loss(logits, frame_mask, labels), base, rtol=1e-5)
    # another blank id: relabel the classes
    perm = np.array([2, 0, 1])  # class c of the old layout is column perm[c]
    logits_b = np.empty_like(logits)
    logits_b[..., perm] = logits
    got = ctc_loss(logits_b, frame_mask, np.where(label_mask, perm[labels], 0), label_mask,
                   blank_id=2)
    np.testing.assert_allclose(got, base, rtol=1e-5)
    # jit and gradients
    grad = jax.grad(lambda x: ctc_loss(x, frame_mask, labels, label_mask).sum())(
        jnp.asarray(logits))
    assert np.isfinite(np.asarray(grad)).all()
    assert np.allclose(np.asarray(grad)[~frame_mask], 0.0)
    jitted = jax.jit(ctc_loss)(logits, frame_mask, labels, label_mask)
    np.testing.assert_allclose(jitted, base, rtol=1e-5)
    with pytest.raises(ValueError, match="logits"):
        ctc_loss(logits[0], frame_mask[0], labels[0], label_mask[0])


def test_ctc_loss_infeasible_is_large_but_finite():
    logits = np.zeros((1, 2, 3), np.float32)
    loss = float(ctc_loss(logits, None, np.array([[1, 1]]), None)[0])  # needs 3 frames
    assert np.isfinite(loss) and loss > 1e4


def _greedy_reference(logits, mask, blank=0):
    out = []
    for row, m in zip(np.argmax(logits, -1), mask):
        out.append([k for k, _ in itertools.groupby(row[m]) if k != blank])
    return out


@pytest.mark.parametrize("seed", range(3))
def test_greedy_decode_matches_groupby(seed):
    rng = np.random.default_rng(seed)
    b, t, v = 5, 30, 4
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    logits[..., 0] += 0.5  # plenty of blanks
    lengths = rng.integers(0, t + 1, size=b)
    mask = np.arange(t)[None] < lengths[:, None]
    mask[-1] = rng.random(t) < 0.7  # a mask with holes: repeats merge across them
    ids, lens = jax.jit(ctc_greedy_decode)(logits, mask)
    ids, lens = np.asarray(ids), np.asarray(lens)
    assert ids.shape == (b, t) and ids.dtype == np.int32
    for i, ref in enumerate(_greedy_reference(logits, mask)):
        assert lens[i] == len(ref)
        assert ids[i, :lens[i]].tolist() == ref
        assert (ids[i, lens[i]:] == 0).all()


def test_greedy_decode_examples():
    def one_hot(path, v=4):
        return np.eye(v, dtype=np.float32)[np.array(path)][None]

    ids, lens = ctc_greedy_decode(one_hot([1, 1, 0, 1, 2, 2, 0, 0, 3]))
    assert np.asarray(ids)[0, :4].tolist() == [1, 1, 2, 3] and int(lens[0]) == 4
    ids, lens = ctc_greedy_decode(one_hot([0, 0, 0]))
    assert int(lens[0]) == 0 and np.asarray(ids).sum() == 0
    ids, lens = ctc_greedy_decode(one_hot([2, 2, 1, 1]), blank_id=1)
    assert np.asarray(ids)[0, :2].tolist() == [2, 0] and int(lens[0]) == 1


@pytest.mark.parametrize("seed", range(3))
def test_prefix_beam_search_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    t, v = 5, 3
    log_probs = _log_softmax(rng.normal(size=(t, v)) * 1.5)
    table = _brute_force_labelling_logprobs(log_probs)
    exact = ctc_prefix_beam_search(log_probs, beam_width=1000)
    assert len(exact) == len(table)
    for labels, lp in exact:
        assert abs(lp - table[labels]) < 1e-9
    best = max(table, key=table.get)
    assert exact[0][0] == best
    small = ctc_prefix_beam_search(log_probs, beam_width=3)
    assert len(small) <= 3 and small[0][1] <= table[best] + 1e-9
    # consistent with the CTC loss of the best labelling
    labels = np.array([list(best) or [0]])
    loss = float(ctc_loss(log_probs[None].astype(np.float32), None, labels, labels > 0)[0])
    assert abs(loss + table[best]) < 1e-3


def test_prefix_beam_search_length_and_blank():
    log_probs = np.log(np.array([[0.1, 0.9, 0.0 + 1e-12], [0.9, 0.05, 0.05],
                                 [0.1, 0.8, 0.1], [0.9, 0.05, 0.05]]))
    assert ctc_prefix_beam_search(log_probs, 4)[0][0] == (1, 1)
    assert ctc_prefix_beam_search(log_probs, 4, length=2)[0][0] == (1,)
    with pytest.raises(ValueError):
        ctc_prefix_beam_search(log_probs[0])
