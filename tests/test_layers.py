"""Layers against numpy re-derivations: attention over gathered tokens, relative positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

import np_reference as ref
from coda_flax.layers import (Attention, Dense, GatedMlp, LoraConfig, ParallelAdapter,
                              RelativePositionBias, RMSNorm, relative_position_bucket)
from coda_flax.routing import gather, scatter_add

RNG = np.random.default_rng(1)


def _init(module, *args):
    return meta.unbox(module.init(jax.random.PRNGKey(0), *args)["params"])


def test_relative_position_bucket_matches_t5_formula():
    rel = np.arange(-300, 301)
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 16)):
            got = np.asarray(relative_position_bucket(jnp.asarray(rel), bidirectional, nb, md))
            np.testing.assert_array_equal(got, ref.t5_bucket(rel, bidirectional, nb, md))
    b = ref.t5_bucket(np.array([0, 1, -1, 5, -5]), True, 32, 128)
    assert list(b) == [0, 17, 1, 21, 5]           # by hand: exact buckets, sign in the top half


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_attention_gathered_rows_equal_numpy_dense_and_subsequence(num_heads, num_kv_heads):
    b, n, d, dh, nb, md = 2, 20, 16, 8, 8, 6
    x = RNG.normal(size=(b, n, d)).astype(np.float32)
    pos = np.broadcast_to(np.arange(n), (b, n))
    valid = np.ones((b, n), bool)
    valid[1, 15:] = False
    idx = np.stack([np.sort(RNG.choice(15, 7, replace=False)) for _ in range(b)])
    attn = Attention(num_heads, num_kv_heads, dh)
    rel = RelativePositionBias(nb, md, num_heads, True)
    rel_params = _init(rel, pos, pos)
    relpos = lambda q, k: rel.apply({"params": rel_params}, q, k)
    params = _init(attn, x, x, pos, pos, valid[:, None, :], relpos)
    p = {k: np.asarray(v["kernel"], np.float64) for k, v in params.items()}
    table = np.asarray(rel_params["rel_embedding"], np.float64)

    def run(xq, xkv, qp, kp, kv_valid):
        return np.asarray(attn.apply({"params": params}, xq, xkv, qp, kp, kv_valid[:, None, :],
                                     relpos))

    xi, pi = np.asarray(gather(x, idx)), np.asarray(gather(pos, idx))
    to_all = run(xi, x, pi, pos, valid)
    to_k = run(xi, xi, pi, pi, np.asarray(gather(valid, idx)))
    for r in range(b):
        dense = ref.attention(x[r], x[r], p["query"], p["key"], p["value"], p["out"], pos[r],
                              pos[r], table, valid[r], max_distance=md)
        np.testing.assert_allclose(to_all[r], dense[idx[r]], atol=1e-4)
        sub = ref.attention(x[r, idx[r]], x[r, idx[r]], p["query"], p["key"], p["value"],
                            p["out"], pos[r, idx[r]], pos[r, idx[r]], table, valid[r, idx[r]],
                            max_distance=md)
        np.testing.assert_allclose(to_k[r], sub, atol=1e-4)
    # positions matter: using arange(k) for the routed tokens gives a different answer
    wrong = run(xi, xi, np.broadcast_to(np.arange(7), (b, 7)), np.broadcast_to(np.arange(7), (b, 7)),
                np.ones((b, 7), bool))
    assert np.abs(wrong - to_k).max() > 1e-3


def test_rmsnorm_mlp_adapter_match_numpy():
    x = RNG.normal(size=(3, 5, 16)).astype(np.float32)
    norm = RMSNorm()
    p = _init(norm, x)
    p = {"scale": jnp.asarray(RNG.normal(size=16), jnp.float32)}
    np.testing.assert_allclose(norm.apply({"params": p}, x), ref.rms_norm(x, p["scale"]),
                               atol=1e-5)
    mlp = GatedMlp(32)
    mp = _init(mlp, x)
    want = ref.gated_mlp(x, mp["wi_0"]["kernel"], mp["wi_1"]["kernel"], mp["wo"]["kernel"])
    np.testing.assert_allclose(mlp.apply({"params": mp}, x), want, atol=1e-4)
    relu = GatedMlp(32, ("relu",))
    rp = _init(relu, x)
    want = np.maximum(x @ rp["wi"]["kernel"], 0) @ rp["wo"]["kernel"]
    np.testing.assert_allclose(relu.apply({"params": rp}, x), want, atol=1e-4)
    adapter = ParallelAdapter(4)
    ap = _init(adapter, x)
    np.testing.assert_array_equal(adapter.apply({"params": ap}, x), 0.0)     # W_up = 0 at init
    ap["up"]["kernel"] = jnp.asarray(RNG.normal(size=(4, 16)), jnp.float32)
    want = np.maximum(x @ ap["down"]["kernel"], 0) @ ap["up"]["kernel"]
    np.testing.assert_allclose(adapter.apply({"params": ap}, x), want, atol=1e-4)


def test_lora_starts_at_zero_and_adds_scaled_low_rank_update():
    x = RNG.normal(size=(2, 3, 16)).astype(np.float32)
    lora = LoraConfig(rank=2, alpha=4.0, targets=("query",))
    dense = Dense((4, 8), ("embed", "heads", "kv"), lora=lora, name="query")
    p = _init(dense, x)
    base = np.einsum("bld,dhk->blhk", x, p["kernel"])
    np.testing.assert_allclose(dense.apply({"params": p}, x), base, atol=1e-5)
    p["lora_b"] = jnp.asarray(RNG.normal(size=(2, 4, 8)), jnp.float32)
    delta = np.einsum("bld,dr,rhk->blhk", x, p["lora_a"], p["lora_b"]) * (4.0 / 2)
    np.testing.assert_allclose(dense.apply({"params": p}, x), base + delta, atol=1e-4)
    untargeted = Dense((4, 8), ("embed", "heads", "kv"), lora=lora, name="value")
    assert set(_init(untargeted, x)) == {"kernel"}


def test_gather_scatter_are_P_and_P_transpose():
    x = RNG.normal(size=(2, 6, 3)).astype(np.float32)
    idx = np.array([[0, 2, 5], [1, 3, 4]])
    P = np.zeros((2, 3, 6))
    for r in range(2):
        P[r, np.arange(3), idx[r]] = 1
    np.testing.assert_allclose(gather(x, idx), np.einsum("bkn,bnd->bkd", P, x))
    u = RNG.normal(size=(2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(scatter_add(x, idx, u), x + np.einsum("bkn,bkd->bnd", P, u),
                               atol=1e-6)
