"""CoDA layer and model: the equivalences of docs/design.md section 1 and routing invariants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from param_helpers import perturb
from coda_flax import (CodaConfig, CodaEncoderLayer, DenseEncoderLayer, EncoderDecoder,
                       ModelConfig, tiny_config)
from coda_flax.layers import ParallelAdapter, RMSNorm
from coda_flax.model import relative_position_bias

RNG = np.random.default_rng(2)
N = 15


def _tokens(b=2, n=N, pad_from=None, seed=0):
    t = np.random.default_rng(seed).integers(1, 64, size=(b, n))
    if pad_from is not None:
        for row, start in enumerate(pad_from):
            t[row, start:] = 0
    return jnp.asarray(t)


def _params(cfg, enc, dec=None, seed=0):
    dec = jnp.ones((enc.shape[0], 4), jnp.int32) if dec is None else dec
    return meta.unbox(EncoderDecoder(cfg).init(jax.random.PRNGKey(seed), enc, dec)["params"])


def _drop(tree, names):
    if not isinstance(tree, dict):
        return tree
    return {k: _drop(v, names) for k, v in tree.items() if k not in names}


def _layer_inputs(cfg, b=2, n=N, seed=0):
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(b, n, cfg.d_model)), jnp.float32)
    valid = jnp.ones((b, n), bool).at[1, n - 4:].set(False)
    pos = jnp.broadcast_to(jnp.arange(n), (b, n))
    rel = relative_position_bias(cfg, bidirectional=True, name=None)
    rp = meta.unbox(rel.init(jax.random.PRNGKey(3), pos, pos)["params"])
    return x, valid, pos, (lambda q, k: rel.apply({"params": rp}, q, k))


def _layer(cfg, params, x, valid, pos, relpos, cls=CodaEncoderLayer, **kw):
    return cls(cfg).apply({"params": params}, x, valid, pos, relpos, mutable=["intermediates"],
                          **kw)


def _layer_params(cfg, x, valid, pos, relpos, cls=CodaEncoderLayer):
    return meta.unbox(cls(cfg).init(jax.random.PRNGKey(4), x, valid, pos, relpos)["params"])


def _adapter_out(p, x):
    xn = RMSNorm().apply({"params": p["pre_attention_layer_norm"]}, x)
    return ParallelAdapter(p["adapter"]["down"]["kernel"].shape[1]).apply(
        {"params": p["adapter"]}, xn)


def test_parallel_adapter_model_with_zero_adapter_is_exactly_the_dense_model():
    enc, dec = _tokens(pad_from=[N, 10]), _tokens(n=6, seed=1)
    pa_cfg = tiny_config(CodaConfig(reduction=1, adapter_dim=4))
    pa = _params(pa_cfg, enc, dec)
    dense_logits = EncoderDecoder(tiny_config()).apply({"params": _drop(pa, {"adapter"})}, enc, dec)
    pa_logits = EncoderDecoder(pa_cfg).apply({"params": pa}, enc, dec)
    np.testing.assert_array_equal(pa_logits, dense_logits)
    trained = perturb(pa, "adapter")
    assert np.abs(EncoderDecoder(pa_cfg).apply({"params": trained}, enc, dec)
                  - dense_logits).max() > 1e-3


def test_coda_layer_with_k_equal_n_is_dense_layer_plus_adapter():
    cfg = tiny_config(CodaConfig(reduction=3, adapter_dim=4))
    x, valid, pos, relpos = _layer_inputs(cfg)
    p = perturb(_layer_params(cfg, x, valid, pos, relpos), "adapter")
    full = tiny_config(CodaConfig(reduction=3, adapter_dim=4, num_routed=N))
    out, state = _layer(full, p, x, valid, pos, relpos)
    assert not state                                   # k = n: nothing routed
    dense, _ = _layer(tiny_config(), _drop(p, {"adapter", "router"}), x, valid, pos, relpos,
                      cls=DenseEncoderLayer)
    np.testing.assert_allclose(out, dense + _adapter_out(p, x), atol=1e-5)


@pytest.mark.parametrize("router", ["soft_topk", "sigmoid", "first_k"])
@pytest.mark.parametrize("attention", ["k_to_all", "k_to_k"])
def test_routed_layer_invariants(router, attention):
    r = 3
    cfg = tiny_config(CodaConfig(reduction=r, adapter_dim=4, router=router, attention=attention))
    x, valid, pos, relpos = _layer_inputs(cfg)
    p = perturb(_layer_params(cfg, x, valid, pos, relpos), "adapter")
    out, state = _layer(cfg, p, x, valid, pos, relpos)
    idx = np.asarray(state["intermediates"]["router_indices"][0])
    lam = np.asarray(state["intermediates"]["router_lam"][0])
    k = math.ceil(N / r)
    assert idx.shape == (2, k)
    for row in idx:
        assert len(set(row.tolist())) == k and np.all(np.diff(row) > 0)      # unique, sorted
    assert np.all(np.asarray(valid)[np.arange(2)[:, None], idx])            # no padding routed
    assert np.all(lam[~np.asarray(valid)] == 0)
    # unselected tokens change only by the adapter output
    pa_cfg = tiny_config(CodaConfig(reduction=1, adapter_dim=4))
    pa_out, _ = _layer(pa_cfg, _drop(p, {"router"}), x, valid, pos, relpos)
    x_plus_adapter = x + _adapter_out(p, x)
    selected = np.zeros((2, N), bool)
    selected[np.arange(2)[:, None], idx] = True
    np.testing.assert_array_equal(np.asarray(out)[~selected], np.asarray(x_plus_adapter)[~selected])
    if attention == "k_to_all":
        # selected rows: x + adapter + m * (the dense layer's update for that token)
        m = lam[np.arange(2)[:, None], idx][..., None]
        want = np.asarray(x_plus_adapter)[selected].reshape(2, k, -1) + m * (
            np.asarray(pa_out - x_plus_adapter)[selected].reshape(2, k, -1))
        np.testing.assert_allclose(np.asarray(out)[selected].reshape(2, k, -1), want, atol=1e-5)


def test_padding_never_routed_while_real_tokens_remain():
    cfg = tiny_config(CodaConfig(reduction=2, adapter_dim=4))
    x, _, pos, relpos = _layer_inputs(cfg)
    valid = jnp.ones((2, N), bool).at[0, 5:].set(False).at[1, :3].set(False)  # 5 and 12 real
    p = _layer_params(cfg, x, valid, pos, relpos)
    _, state = _layer(cfg, p, x, valid, pos, relpos)
    idx = np.asarray(state["intermediates"]["router_indices"][0])             # k = 8
    assert set(range(5)) <= set(idx[0].tolist())                                # all real ones
    assert np.all(idx[1] >= 3)                                                  # no padding


@pytest.mark.parametrize("router,has_grad", [("soft_topk", True), ("sigmoid", True),
                                             ("first_k", False)])
def test_router_gradient(router, has_grad):
    cfg = tiny_config(CodaConfig(reduction=3, adapter_dim=4, router=router))
    enc, dec = _tokens(pad_from=[N, 11]), _tokens(n=5, seed=1)
    params = _params(cfg, enc, dec)
    model = EncoderDecoder(cfg)

    def loss(p):
        logits = model.apply({"params": p}, enc, dec)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    grads = jax.jit(jax.grad(loss))(params)
    enc_layers = grads["encoder"]
    if not has_grad:
        assert "router" not in enc_layers["layers_0"]
        return
    g = np.asarray(enc_layers["layers_0"]["router"]["kernel"])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-6


@pytest.mark.slow   # ~43 s; padding and decoding keep their own default tests
def test_whole_model_jits_takes_grads_bfloat16_and_padded_batches():
    coda = CodaConfig(reduction=3, adapter_dim=4)
    cfg = tiny_config(coda)
    enc, dec = _tokens(b=3, pad_from=[N, 9, 4]), _tokens(b=3, n=6, seed=1)
    params = _params(cfg, enc, dec)
    f32 = jax.jit(EncoderDecoder(cfg).apply)({"params": params}, enc, dec)
    assert f32.shape == (3, 6, 64) and np.all(np.isfinite(f32))
    bf16 = jax.jit(EncoderDecoder(cfg.replace(dtype="bfloat16")).apply)({"params": params}, enc, dec)
    assert bf16.dtype == jnp.float32 and np.all(np.isfinite(bf16))
    assert np.abs(np.asarray(bf16) - np.asarray(f32)).max() < 0.1 * np.abs(f32).max()
    # batch rows are independent: each padded row alone gives the same logits
    for r in range(3):
        alone = EncoderDecoder(cfg).apply({"params": params}, enc[r:r + 1], dec[r:r + 1])
        np.testing.assert_allclose(alone[0], f32[r], atol=1e-5)
    grads = jax.jit(jax.grad(lambda p: jnp.mean(EncoderDecoder(cfg).apply({"params": p}, enc,
                                                                           dec) ** 2)))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_dense_and_parallel_adapter_ignore_padding():
    for coda in (None, CodaConfig(reduction=1, adapter_dim=4)):
        cfg = tiny_config(coda)
        enc, dec = _tokens(b=1, n=9), _tokens(b=1, n=4, seed=1)
        padded = jnp.concatenate([enc, jnp.zeros((1, 6), enc.dtype)], axis=1)
        params = perturb(_params(cfg, enc, dec), "adapter")
        a = EncoderDecoder(cfg).apply({"params": params}, enc, dec)
        b = EncoderDecoder(cfg).apply({"params": params}, padded, dec)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_decode_with_cache_equals_full_decode():
    cfg = tiny_config(CodaConfig(reduction=3, adapter_dim=4))
    enc, dec = _tokens(pad_from=[N, 8]), _tokens(n=7, seed=1)
    model = EncoderDecoder(cfg)
    params = perturb(_params(cfg, enc, dec), "adapter")
    full = model.apply({"params": params}, enc, dec)
    encoded = model.apply({"params": params}, enc, method="encode")
    cache = model.init(jax.random.PRNGKey(0), enc, dec, decode=True)["cache"]
    steps = []
    for t in range(dec.shape[1]):
        logits, state = model.apply({"params": params, "cache": cache}, encoded, enc,
                                    dec[:, t:t + 1], decode=True, method="decode",
                                    mutable=["cache"])
        cache = state["cache"]
        steps.append(logits[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown router"):
        CodaConfig(router="sinkhorn")
    with pytest.raises(ValueError, match="reduction"):
        CodaConfig(reduction=0.5)
    with pytest.raises(ValueError, match="multiple of"):
        tiny_config(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.from_preset("t5_gigantic")
    cfg = tiny_config(CodaConfig(num_routed=40, adapter_dim=4))
    with pytest.raises(ValueError, match="exceeds the sequence length"):
        _params(cfg, _tokens())
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        _params(tiny_config(), jnp.ones((2, 3, 4), jnp.int32))


def test_presets_follow_table_7():
    p = ModelConfig.from_preset("paper_text_base", coda=CodaConfig(reduction=3))
    assert (p.d_model, p.num_heads, p.num_kv_heads, p.head_dim, p.d_ff) == (768, 12, 1, 128, 3072)
    assert (p.num_encoder_layers, p.num_decoder_layers, p.coda.adapter_dim) == (12, 6, 64)
    xl = ModelConfig.from_preset("paper_text_xl")
    assert (xl.d_model, xl.num_heads, xl.d_ff, xl.num_encoder_layers) == (2048, 32, 8192, 24)
    t5 = ModelConfig.from_preset("t5_1_1_base")
    assert (t5.num_heads, t5.num_kv_heads, t5.head_dim, t5.d_ff) == (12, 12, 64, 2048)
