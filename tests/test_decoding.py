"""T5X model interface (issue 4): losses, CodaT5Model, greedy and beam search with the cache.

References are independent: numpy re-derivations of the losses, optax's cross-entropy, and a
cache-free greedy decoder that re-runs the whole decoder on the growing prefix every step.
Every search is jitted once (eos_id and alpha are passed as traced decoder_params), and the
random keys are unsafe_rbg keys: threefry's random-bit kernels take XLA:CPU seconds to compile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from param_helpers import perturb
from coda_flax import CodaConfig, tiny_config
from coda_flax.train import decoding, losses
from coda_flax.train.t5_model import CodaT5Model

B, N, L = 2, 9, 6            # batch, encoder length (k = 3 routed tokens at r = 3), target length
NO_EOS = 10_000              # an id the model never emits: sequences run to the full length


def _key(seed):
    return jax.random.key(seed, impl="unsafe_rbg")


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _batch(seed=0, enc_real=(N, 6), dec_real=(L, 4)):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, 64, size=(B, N))
    tgt = rng.integers(2, 64, size=(B, L))
    for row in range(B):
        enc[row, enc_real[row]:] = 0
        tgt[row, dec_real[row] - 1] = 1                     # EOS, then padding
        tgt[row, dec_real[row]:] = 0
    dec = np.concatenate([np.zeros((B, 1), tgt.dtype), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": jnp.asarray(enc, jnp.int32),
            "decoder_input_tokens": jnp.asarray(dec, jnp.int32),
            "decoder_target_tokens": jnp.asarray(tgt, jnp.int32),
            "decoder_loss_weights": jnp.asarray(tgt > 0, jnp.float32)}


class Setup:
    """A model, its parameters (adapters perturbed so that they matter) and jitted searches."""

    def __init__(self, config, params=None):
        self.model = CodaT5Model(config, z_loss=1e-3, label_smoothing=0.1,
                                 loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
        if params is None:
            shapes = {"encoder_input_tokens": (B, N), "decoder_input_tokens": (B, L)}
            init = jax.jit(lambda rng: self.model.get_initial_variables(rng, shapes))
            self.boxed = init(_key(0))["params"]
            params = perturb(meta.unbox(self.boxed), "adapter")
        self.params = params
        self.batch = _batch()
        m = self.model
        self.greedy = jax.jit(lambda p, b, eos: m.predict_batch_with_aux(
            p, b, decoder_params={"eos_id": eos}))
        # num_decodes=1 would pick greedy decoding; a decode_fn forces beam search.
        beam_model = CodaT5Model(config, decode_fn=decoding.beam_search)
        self.beam = {k: jax.jit(lambda p, b, eos, alpha, k=k: beam_model.predict_batch_with_aux(
            p, b, decoder_params={"eos_id": eos, "alpha": alpha}, num_decodes=k,
            return_all_decodes=True)) for k in (1, 4)}
        self.score = jax.jit(functools.partial(m.score_batch, return_intermediates=True))
        self.loss = jax.jit(lambda p, b: m.loss_fn(p, b, None))
        self._full = jax.jit(lambda p, b: m.module.apply(
            {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"]))

    def greedy_without_cache(self, eos_id):
        """Argmax decoding by re-running the full decoder on the prefix at every step."""
        out = np.zeros((B, L), np.int64)
        score = np.zeros(B)
        done = np.zeros(B, bool)
        for t in range(L):
            dec = np.concatenate([np.zeros((B, 1), np.int64), out[:, :-1]], axis=1)
            batch = dict(self.batch, decoder_input_tokens=jnp.asarray(dec, jnp.int32))
            logp = _log_softmax(np.asarray(self._full(self.params, batch), np.float64)[:, t])
            nxt = logp.argmax(-1)
            score += np.where(done, 0.0, logp[np.arange(B), nxt])
            out[:, t] = np.where(done, 0, nxt)
            done |= out[:, t] == eos_id
        return out, score

    @functools.cached_property
    def eos(self):
        """An EOS id that row 0's greedy decode emits at step 1 or 2 (not at step 0)."""
        ref, _ = self.greedy_without_cache(NO_EOS)
        return next(int(t) for t in ref[0, 1:3] if t not in (0, ref[0, 0]))


_SETUPS: dict[str, Setup] = {}


def setup(name: str = "coda") -> Setup:
    """Built once per module run: tiny CoDA (r = 3), or the dense T5 under it."""
    if name not in _SETUPS:
        if name == "coda":
            _SETUPS[name] = Setup(tiny_config(CodaConfig(reduction=3, adapter_dim=4)))
        else:
            _SETUPS[name] = Setup(tiny_config(), _drop(setup("coda").params,
                                                       {"adapter", "router"}))
    return _SETUPS[name]


def _drop(tree, names):
    if not isinstance(tree, dict):
        return tree
    return {k: _drop(v, names) for k, v in tree.items() if k not in names}


def _length(seq, eos_id):
    """Tokens up to and including the first EOS (the whole row when there is none)."""
    hits = np.flatnonzero(seq == eos_id)
    return int(hits[0]) + 1 if hits.size else len(seq)


def _rescore(s: Setup, sequences, eos_id, alpha):
    """log p(sequence) / brevity penalty from score_batch, over the tokens through EOS.

    sequences [B, R, L]: R decodes of each example (always 5 here: one compile)."""
    seqs = np.asarray(sequences).reshape(-1, L)
    reps = seqs.shape[0] // B
    lengths = np.array([_length(q, eos_id) for q in seqs])
    weights = (np.arange(L)[None] < lengths[:, None]).astype(np.float32)
    batch = {"encoder_input_tokens": jnp.repeat(s.batch["encoder_input_tokens"], reps, 0),
             "decoder_input_tokens": jnp.asarray(np.concatenate(
                 [np.zeros((len(seqs), 1), seqs.dtype), seqs[:, :-1]], 1), jnp.int32),
             "decoder_target_tokens": jnp.asarray(seqs, jnp.int32),
             "decoder_loss_weights": jnp.asarray(weights)}
    log_p = np.asarray(s.score(s.params, batch)[0])
    return (log_p / np.asarray(decoding.brevity_penalty(alpha, lengths))).reshape(B, reps)


# ------------------------------------------------------------------------------ losses

def _numpy_loss(logits, targets, weights, z_loss, smoothing, factor):
    """KL(q || softmax) + z_loss log(Z)^2 per token, q the smoothed one-hot."""
    logits = np.asarray(logits, np.float64)
    v = logits.shape[-1]
    q = np.full(logits.shape, smoothing / (v - 1))
    np.put_along_axis(q, np.asarray(targets)[..., None], 1.0 - smoothing, axis=-1)
    log_z = np.log(np.exp(logits).sum(-1))
    logp = logits - log_z[..., None]
    kl = (np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0) - q * logp).sum(-1)
    z = z_loss * log_z ** 2
    w = np.asarray(weights, np.float64)
    return ((kl + z) * w).sum() / factor, (z * w).sum() / factor, w.sum()


def test_cross_entropy_matches_numpy_and_optax():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 11)) * 3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, size=(2, 5)))
    weights = jnp.asarray(rng.choice([0.0, 0.5, 1.0], size=(2, 5)), jnp.float32)
    got = losses.cross_entropy_with_logits(logits, targets, weights, z_loss=1e-2,
                                           label_smoothing=0.1, loss_normalizing_factor=3.0)
    want = _numpy_loss(logits, targets, weights, 1e-2, 0.1, 3.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)

    plain = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    loss, z, wsum = losses.cross_entropy_with_logits(logits, targets, weights, z_loss=0.0)
    np.testing.assert_allclose(loss, jnp.sum(plain * weights), rtol=1e-6)
    assert float(z) == 0.0 and float(wsum) == float(weights.sum())
    onehot = jax.nn.one_hot(targets, 11)
    from_onehot = losses.cross_entropy_with_logits(logits, onehot, None, z_loss=0.0)[0]
    np.testing.assert_allclose(from_onehot, optax.softmax_cross_entropy(logits, onehot).sum(),
                               rtol=1e-6)
    # A perfect prediction of the smoothed targets costs nothing (T5X's normalizing constant).
    soft, _ = losses.smoothed_targets(targets, 11, 0.2)
    assert abs(float(losses.cross_entropy_with_logits(jnp.log(soft), targets, None, z_loss=0.0,
                                                      label_smoothing=0.2)[0])) < 1e-4
    with pytest.raises(ValueError, match="targets must be ids"):
        losses.cross_entropy_with_logits(logits, targets[:, :3], None)


def test_special_loss_normalizing_factors():
    tgt = jnp.asarray([[5, 6, 1, 0, 0], [7, 1, 8, 9, 1]])
    w = jnp.asarray(tgt > 0, jnp.float32)
    batch = {"decoder_target_tokens": tgt, "decoder_loss_weights": w}
    f, _ = losses.normalizing_factor_and_weights("num_real_target_tokens", batch)
    assert float(f) == 8.0
    assert losses.normalizing_factor_and_weights("NUM_TOTAL_TARGET_TOKENS", batch)[0] == 10.0
    f, w_avg = losses.normalizing_factor_and_weights("AVERAGE_PER_SEQUENCE", batch)
    np.testing.assert_allclose(w_avg.sum(-1), [1.0, 1.0], rtol=1e-6)
    packed = dict(batch, decoder_segment_ids=jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 2, 2, 2]]))
    f, w_avg = losses.normalizing_factor_and_weights("AVERAGE_PER_SEQUENCE", packed)
    np.testing.assert_allclose(w_avg[1], [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    assert float(f) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="unknown loss_normalizing_factor"):
        CodaT5Model(tiny_config(), loss_normalizing_factor="per_token")


# ------------------------------------------------------------------------------ model

def test_initial_variables_are_logically_partitioned():
    s = setup()
    boxes = jax.tree_util.tree_leaves(s.boxed, is_leaf=lambda x: isinstance(x, meta.Partitioned))
    assert boxes and all(isinstance(b, meta.Partitioned) for b in boxes)
    kernel = s.boxed["decoder"]["logits_dense"]["kernel"]
    assert kernel.names == ("embed", "vocab")
    assert s.model.with_config(s.model.config.with_coda(num_routed=2)).z_loss == s.model.z_loss


def test_loss_fn_matches_numpy_with_padding():
    s = setup()          # z_loss 1e-3, label smoothing 0.1, normalised by the real tokens
    b = s.batch
    loss, metrics = s.loss(s.params, b)
    logits = np.asarray(s._full(s.params, b))
    w = np.asarray(b["decoder_loss_weights"])
    want = _numpy_loss(logits, b["decoder_target_tokens"], w, 1e-3, 0.1, w.sum())
    np.testing.assert_allclose([loss, metrics["z_loss"], metrics["weight_sum"]], want, rtol=1e-5)
    correct = logits.argmax(-1) == np.asarray(b["decoder_target_tokens"])
    np.testing.assert_allclose(metrics["accuracy"], (correct * w).sum() / w.sum(), rtol=1e-6)
    assert set(metrics) >= {"loss", "z_loss", "weight_sum", "accuracy"}
    assert all(np.ndim(v) == 0 for v in metrics.values())


def test_loss_gradient_is_finite_and_dropout_uses_the_rng():
    s = setup()
    model = s.model.with_config(s.model.config.replace(dropout_rate=0.2))
    grad_fn = jax.jit(jax.value_and_grad(lambda p, rng: model.loss_fn(p, s.batch, rng)[0]))
    drop = [grad_fn(s.params, _key(i)) for i in (1, 2)]
    grads = drop[0][1]
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grads["encoder"]["layers_0"]["adapter"]["up"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["encoder"]["layers_0"]["router"]["kernel"]).sum()) > 0
    no_drop = s.loss(s.params, s.batch)[0]
    assert float(drop[0][0]) != float(no_drop) and float(drop[0][0]) != float(drop[1][0])


def test_score_batch_is_minus_summed_cross_entropy():
    s = setup()
    b = s.batch
    scores, inter = s.score(s.params, b)
    logits = s._full(s.params, b)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["decoder_target_tokens"])
    np.testing.assert_allclose(scores, -(ce * b["decoder_loss_weights"]).sum(-1), rtol=1e-5)
    layer = inter["encoder"]["layers_0"]
    assert layer["router_indices"][0].shape == (B, 3)          # k = ceil(9 / 3)
    assert layer["router_lam"][0].shape == (B, N)
    assert inter["decoder"]["target_tokens"][0].shape == (B, L)
    # Row 1 has only 6 real encoder tokens; its padding is never routed.
    assert np.all(np.asarray(layer["router_indices"][0])[1] < 6)
    # Tokens under zero loss weight do not count; fewer real encoder tokens than k still work
    # (the padding that fills the k slots gets lam = 0).
    noisy = dict(b, decoder_target_tokens=b["decoder_target_tokens"].at[1, 4:].set(7))
    np.testing.assert_allclose(s.score(s.params, noisy)[0], scores, rtol=1e-6)
    short, inter = s.score(s.params, _batch(enc_real=(N, 2)))
    lam = np.asarray(inter["encoder"]["layers_0"]["router_lam"][0])
    assert np.all(np.isfinite(np.asarray(short))) and np.all(lam[1, 2:] == 0)
    assert sorted(np.asarray(inter["encoder"]["layers_0"]["router_indices"][0])[1])[:2] == [0, 1]


# ------------------------------------------------------------------------------ decoding

@pytest.mark.parametrize("name", ["coda", "dense"])
def test_greedy_with_cache_equals_greedy_without_cache(name):
    s = setup(name)
    eos = s.eos
    for eos_id in (NO_EOS, eos):
        ref, ref_score = s.greedy_without_cache(eos_id)
        got, aux = s.greedy(s.params, s.batch, eos_id)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_allclose(aux["scores"], ref_score, rtol=1e-5, atol=1e-5)


def test_eos_stops_sequences():
    s = setup()
    eos = s.eos
    got = np.asarray(s.greedy(s.params, s.batch, eos)[0])
    stop = _length(got[0], eos)
    assert stop <= 3 and got[0, stop - 1] == eos
    assert np.all(got[0, stop:] == 0)
    beams = np.asarray(s.beam[4](s.params, s.batch, eos, 0.6)[0])
    for seq in beams.reshape(-1, L):
        n = _length(seq, eos)
        assert np.all(seq[n:] == 0) and np.all(seq[:n - 1] != eos)
    assert any(_length(q, eos) < L for q in beams.reshape(-1, L))


def test_beam_search_with_one_beam_is_greedy():
    s = setup()
    greedy, g_aux = s.greedy(s.params, s.batch, NO_EOS)
    for alpha in (0.0, 0.6):
        beam, aux = s.beam[1](s.params, s.batch, NO_EOS, alpha)
        np.testing.assert_array_equal(beam[:, 0], greedy)
        np.testing.assert_allclose(aux["scores"][:, 0] * decoding.brevity_penalty(alpha, L),
                                   g_aux["scores"], rtol=1e-5)
    # With an EOS, one beam can only do better than greedy (it also keeps early endings).
    eos = s.eos
    greedy, g_aux = s.greedy(s.params, s.batch, eos)
    beam, aux = s.beam[1](s.params, s.batch, eos, 0.0)
    assert np.all(np.asarray(aux["scores"][:, 0]) >= np.asarray(g_aux["scores"]) - 1e-5)


def test_beam_search_scores_are_sorted_rescored_and_beat_greedy():
    s = setup()
    eos, alpha = s.eos, 0.6
    for eos_id in (NO_EOS, eos):
        beams, aux = s.beam[4](s.params, s.batch, eos_id, alpha)
        scores = np.asarray(aux["scores"])
        assert beams.shape == (B, 4, L) and np.all(np.isfinite(scores))
        assert np.all(np.diff(scores, axis=1) >= 0)                   # increasing: best last
        for row in np.asarray(beams):                                  # four different decodes
            assert len({tuple(q) for q in row}) == 4
        greedy = np.asarray(s.greedy(s.params, s.batch, eos_id)[0])
        rescored = _rescore(s, np.concatenate([beams, greedy[:, None]], 1), eos_id, alpha)
        np.testing.assert_allclose(rescored[:, :4], scores, rtol=1e-4, atol=1e-4)
        assert np.all(scores[:, -1] >= rescored[:, 4] - 1e-5)         # the best beats greedy


# A synthetic "decoder" whose next-token logits depend on the whole prefix through its cache:
# cache["prefix"] [B] encodes (row, start token, outputs so far) in base V + 1, so beam search
# must reorder it with the beams; cache["index"] is a shared scalar. Small enough (V = 3 with
# EOS = 1, length 3) to enumerate every sequence.
V, T = 3, 3
TABLE = np.random.default_rng(5).normal(size=(B * (V + 1) ** T, V)) * 2.0


def _synthetic(tokens, cache):
    prefix = cache["prefix"] * (V + 1) + tokens[:, 0] + 1
    return jnp.asarray(TABLE, jnp.float32)[prefix], {"prefix": prefix, "index": cache["index"] + 1}


def _synthetic_cache():
    return {"prefix": jnp.arange(B, dtype=jnp.int32), "index": jnp.array(0, jnp.int32)}


def _enumerate(row, alpha, forced_first=0, eos_id=1):
    """Every finished sequence of `row` with its penalised score (forced tokens score 0)."""
    done = []
    def walk(prefix_code, seq, log_p):
        t = len(seq)
        logp = _log_softmax(TABLE[prefix_code])
        for v in range(V):
            if t == 0 and forced_first and v != forced_first:
                continue
            gained = 0.0 if (t == 0 and forced_first) else logp[v]
            if v == eos_id or t + 1 == T:
                out = seq + [v] + [0] * (T - t - 1)
                done.append((float((log_p + gained) / decoding.brevity_penalty(alpha, t + 1)),
                             tuple(out)))
            else:
                walk(prefix_code * (V + 1) + v + 1, seq + [v], log_p + gained)
    walk(row * (V + 1) + 1, [], 0.0)                  # the start token 0 is fed first
    return sorted(done)


def test_beam_search_with_enough_beams_is_exhaustive():
    """12 beams keep every alive prefix and 2K = 24 candidates every extension (at most
    4 alive x 3 tokens), so the result is the exact top 12 of the 15 possible sequences (7 with
    a forced first token) of each row."""
    k = 12
    search = jax.jit(lambda inputs, alpha: decoding.beam_search(
        inputs, _synthetic_cache(), _synthetic, eos_id=1, num_decodes=k, alpha=alpha))
    for alpha, forced in ((0.0, 0), (0.6, 0), (0.6, 2)):
        inputs = jnp.zeros((B, T), jnp.int32).at[:, 1].set(forced)
        seqs, scores = search(inputs, alpha)
        for row in range(B):
            want = _enumerate(row, alpha, forced)[-k:]       # 15 sequences, or 7 if forced
            missing = k - len(want)                          # empty slots: -inf, all zeros
            assert np.all(np.asarray(scores[row, :missing]) == -np.inf)
            assert not np.any(np.asarray(seqs[row, :missing]))
            np.testing.assert_allclose(scores[row, missing:], [w[0] for w in want], rtol=1e-5,
                                       atol=1e-5)
            assert [tuple(q) for q in np.asarray(seqs[row, missing:])] == [w[1] for w in want]


def test_greedy_decode_on_the_synthetic_decoder():
    greedy = jax.jit(lambda inputs: decoding.greedy_decode(inputs, _synthetic_cache(),
                                                           _synthetic, eos_id=1))
    for forced in (0, 2):
        seqs, scores = greedy(jnp.zeros((B, T), jnp.int32).at[:, 1].set(forced))
        for row in range(B):
            code, seq, log_p = row * (V + 1) + 1, [], 0.0
            while len(seq) < T and (not seq or seq[-1] != 1):
                logp = _log_softmax(TABLE[code])
                v = forced if (forced and not seq) else int(logp.argmax())
                log_p += 0.0 if (forced and not seq) else logp[v]
                seq.append(v)
                code = code * (V + 1) + v + 1
            assert list(np.asarray(seqs[row, 0])) == seq + [0] * (T - len(seq))
            np.testing.assert_allclose(scores[row, 0], log_p, rtol=1e-5)
    short, _ = decoding.greedy_decode(jnp.zeros((B, T), jnp.int32), _synthetic_cache(),
                                      _synthetic, eos_id=99, max_decode_len=2)
    assert np.all(np.asarray(short)[:, 0, 2] == 0) and np.all(np.asarray(short)[:, 0, :2] > -1)
    with pytest.raises(ValueError, match="num_decodes"):
        decoding.greedy_decode(jnp.zeros((1, 3), jnp.int32), {}, None, num_decodes=2)


def test_prompt_with_targets_forces_the_prefix():
    s = setup()
    b = s.batch
    prompt = dict(b, decoder_input_tokens=b["decoder_input_tokens"].at[:, 3:].set(0))
    decodes = np.asarray(jax.jit(functools.partial(s.model.predict_batch,
                                                   prompt_with_targets=True))(s.params, prompt))
    np.testing.assert_array_equal(decodes[:, :2], np.asarray(b["decoder_target_tokens"])[:, :2])
