"""soft_topk against independent numpy references, closed-form limits and finite differences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from coda_flax import soft_topk

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("n,k,eps,std", [(16, 5, 0.03, 1.0), (64, 22, 0.03, 0.3),
                                         (512, 171, 0.03, 1.0), (40, 8, 1.0, 2.0)])
def test_coordinate_descent_equals_numpy_equation_13(n, k, eps, std):
    s = RNG.normal(size=(3, n)) * std
    lam = np.asarray(soft_topk(jnp.asarray(s, jnp.float32), k, epsilon=eps))
    want = np.stack([ref.soft_topk_cd(row, k, eps, 20) for row in s.astype(np.float32)])
    np.testing.assert_allclose(lam, want, atol=2e-4, rtol=1e-3)


def test_twenty_iterations_do_not_converge_for_wide_scores_but_exact_does():
    s = RNG.normal(size=(512,)).astype(np.float32)
    cd = np.asarray(soft_topk(s, 171))
    exact = np.asarray(soft_topk(s, 171, solver="exact"))
    assert abs(cd.sum() - 171) > 10            # the paper's 20 steps stop far from the budget
    assert abs(exact.sum() - 171) < 1e-3 * 171


@pytest.mark.parametrize("n,k,eps,std", [(32, 7, 0.03, 0.1), (64, 20, 0.1, 1.0),
                                         (128, 43, 0.03, 1.0), (10, 1, 1.0, 1.0)])
def test_exact_solver_equals_converged_optimum(n, k, eps, std):
    s = RNG.normal(size=(4, n)) * std
    lam = np.asarray(soft_topk(jnp.asarray(s, jnp.float32), k, epsilon=eps, solver="exact"))
    want = np.stack([ref.soft_topk_bisect(row, k, eps) for row in s.astype(np.float32)])
    np.testing.assert_allclose(lam, want, atol=1e-4)
    np.testing.assert_allclose(lam.sum(-1), k, rtol=1e-5)
    # and the coordinate descent, run to convergence without epsilon scaling, reaches it too
    cd = np.asarray(soft_topk(jnp.asarray(s, jnp.float32), k, epsilon=eps, num_iters=3000,
                              epsilon_init=eps))
    np.testing.assert_allclose(cd, want, atol=2e-3)


@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
def test_range_and_budget(solver):
    s = RNG.normal(size=(5, 100)).astype(np.float32) * 0.2
    lam = np.asarray(soft_topk(s, 30, solver=solver, num_iters=200, epsilon_init=0.5))
    assert lam.min() >= 0 and lam.max() <= 1
    np.testing.assert_allclose(lam.sum(-1), 30, rtol=1e-3)      # stated tolerance: 0.1%


def test_tends_to_hard_topk_as_epsilon_shrinks():
    s = np.linspace(-1, 1, 50).astype(np.float32)[RNG.permutation(50)]
    hard = np.zeros(50)
    hard[np.argsort(-s)[:12]] = 1
    errs = [np.abs(np.asarray(soft_topk(s, 12, epsilon=e, solver="exact")) - hard).max()
            for e in (0.1, 0.01, 0.001)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-6


@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
def test_k_equal_1_is_softmax(solver):
    s = RNG.normal(size=(3, 10)).astype(np.float32)
    lam = soft_topk(s, 1, epsilon=1.0, solver=solver, num_iters=100)
    e = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(lam, e / e.sum(-1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
def test_mask_and_k_clipped_to_real_tokens(solver):
    s = RNG.normal(size=(2, 12)).astype(np.float32)
    mask = np.array([[True] * 8 + [False] * 4, [True] * 3 + [False] * 9])
    s[~mask] = 100.0                       # large padded scores must still get nothing
    lam = np.asarray(soft_topk(s, 5, mask=mask, solver=solver, num_iters=200,
                               epsilon_init=0.5, epsilon=0.1))
    assert np.all(lam[~mask] == 0)
    np.testing.assert_allclose(lam[0].sum(), 5, rtol=1e-3)
    np.testing.assert_allclose(lam[1, :3], 1.0, atol=1e-4)   # k > real tokens: all real ones
    masked_ref = ref.soft_topk_bisect(s[0, :8], 5, 0.1)
    np.testing.assert_allclose(lam[0, :8], masked_ref, atol=1e-3)


@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
def test_edge_cases_stay_finite(solver):
    ties = soft_topk(np.zeros((1, 9), np.float32), 3, solver=solver)
    np.testing.assert_allclose(ties, 1 / 3, atol=1e-5)
    big = np.array([[1e4, -1e4, 5e3, -5e3, 0.0, 1e4]], np.float32)
    lam = np.asarray(soft_topk(big, 2, solver=solver))
    assert np.all(np.isfinite(lam))
    np.testing.assert_allclose(lam, [[1, 0, 0, 0, 0, 1]], atol=1e-5)
    np.testing.assert_allclose(soft_topk(np.array([[0.7]], np.float32), 1, solver=solver), 1.0)
    all_pad = soft_topk(np.ones((1, 4), np.float32), 2, mask=np.zeros((1, 4), bool),
                        solver=solver)
    np.testing.assert_array_equal(all_pad, 0.0)
    g = jax.grad(lambda x: soft_topk(x, 2, solver=solver)[0, 0])(jnp.asarray(big))
    assert np.all(np.isfinite(g))


def test_leading_batch_dims_jit_and_vmap():
    s = jnp.asarray(RNG.normal(size=(2, 3, 20)), jnp.float32)
    direct = soft_topk(s, 6)
    jitted = jax.jit(lambda x: soft_topk(x, 6))(s)
    vmapped = jax.vmap(jax.vmap(lambda x: soft_topk(x, 6)))(s)
    # float32 rounding differs between fused and eager code; exp(./eps) scales it by 1/eps
    np.testing.assert_allclose(direct, jitted, atol=1e-5)
    np.testing.assert_allclose(direct, vmapped, atol=1e-5)
    assert direct.shape == (2, 3, 20) and direct.dtype == jnp.float32
    assert soft_topk(s.astype(jnp.bfloat16), 6).dtype == jnp.float32


def test_bad_arguments_raise_clear_errors():
    s = jnp.zeros((2, 5))
    with pytest.raises(ValueError, match="1 <= k <= n"):
        soft_topk(s, 6)
    with pytest.raises(ValueError, match="unknown solver"):
        soft_topk(s, 2, solver="sinkhorn")
    with pytest.raises(ValueError, match="unknown gradient"):
        soft_topk(s, 2, gradient="magic")
    with pytest.raises(ValueError, match="mask shape"):
        soft_topk(s, 2, mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="epsilon"):
        soft_topk(s, 2, epsilon=0.0)


def _fd_grad(fn, s, h):
    g = np.zeros_like(s)
    for i in range(s.size):
        e = np.zeros_like(s)
        e.flat[i] = h
        g.flat[i] = (fn(s + e) - fn(s - e)) / (2 * h)
    return g


@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
def test_implicit_gradient_matches_finite_differences(solver):
    n, k, eps = 12, 4, 0.5
    s = RNG.normal(size=(n,)) * 0.8
    w = RNG.normal(size=(n,))
    loss_np = lambda x: float(np.dot(ref.soft_topk_bisect(x, k, eps), w))
    want = _fd_grad(loss_np, s, 1e-5)
    loss = lambda x: jnp.dot(soft_topk(x, k, epsilon=eps, solver=solver, num_iters=500,
                                       epsilon_init=eps), jnp.asarray(w, jnp.float32))
    got = np.asarray(jax.grad(loss)(jnp.asarray(s, jnp.float32)))
    assert np.abs(want).max() > 0.05                       # a non-trivial gradient
    np.testing.assert_allclose(got, want, atol=2e-4 + 1e-3 * np.abs(want).max())


def test_implicit_gradient_matches_unrolled_at_convergence():
    n, k, eps = 24, 7, 0.2
    s = jnp.asarray(RNG.normal(size=(2, n)) * 0.5, jnp.float32)
    w = jnp.asarray(RNG.normal(size=(2, n)), jnp.float32)
    grads = {}
    for gradient in ("implicit", "unrolled"):
        f = lambda x: jnp.sum(w * soft_topk(x, k, epsilon=eps, num_iters=1000, epsilon_init=eps,
                                            gradient=gradient))
        grads[gradient] = np.asarray(jax.grad(f)(s))
    np.testing.assert_allclose(grads["implicit"], grads["unrolled"], atol=1e-4)
    assert np.abs(grads["implicit"]).max() > 0.05


def test_exact_solver_autodiff_agrees_with_implicit():
    s = jnp.asarray(RNG.normal(size=(30,)), jnp.float32)
    w = jnp.asarray(RNG.normal(size=(30,)), jnp.float32)
    grads = [jax.grad(lambda x: jnp.dot(w, soft_topk(x, 9, epsilon=0.3, solver="exact",
                                                     gradient=g)))(s)
             for g in ("implicit", "unrolled")]
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-4)


def _compiled_temp_bytes(gradient, num_iters):
    f = lambda x: jnp.sum(soft_topk(x, 40, num_iters=num_iters, gradient=gradient)
                          * jnp.arange(128.0))
    compiled = jax.jit(jax.grad(f)).lower(jnp.zeros((8, 128))).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_implicit_gradient_memory_does_not_grow_with_iterations():
    implicit = [_compiled_temp_bytes("implicit", t) for t in (20, 200)]
    unrolled = [_compiled_temp_bytes("unrolled", t) for t in (20, 200)]
    assert implicit[1] <= implicit[0] * 1.05
    assert unrolled[1] > 5 * unrolled[0]                  # unrolled keeps every iterate
    assert implicit[0] * 5 <= unrolled[0]


# --- issue 9: shift invariance, extreme and non-finite scores, argument validation ---------
# Expected values below come from the float64 references in np_reference.py or by hand from
# the semantics in soft_topk's docstring (+inf first, NaN = -inf, ties share), never from
# soft_topk itself.

@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
@pytest.mark.parametrize("shift", [1e6, -1e6, 1e3])
def test_large_offset_is_solved_on_the_shifted_back_scores(solver, shift):
    s = (RNG.normal(size=(2, 64)) * 0.5).astype(np.float32)
    shifted = (s + np.float32(shift)).astype(np.float32)       # rounds the scores themselves
    lam = np.asarray(soft_topk(shifted, 22, solver=solver))
    back = shifted.astype(np.float64) - shift                  # exact in float64
    if solver == "exact":
        want = np.stack([ref.soft_topk_bisect(row, 22, 0.03) for row in back])
        np.testing.assert_allclose(lam.sum(-1), 22, rtol=1e-5)  # was ~3 before the fix
    else:
        want = np.stack([ref.soft_topk_cd(row, 22, 0.03, 20) for row in back])
    np.testing.assert_allclose(lam, want, atol=2e-4, rtol=1e-3)


def test_exact_solver_with_one_huge_outlier_keeps_the_other_tokens():
    # 1e30 is saturated; the remaining budget 1 goes to the largest of the rest (2 vs 1 is
    # 33 eps apart): lam ~ [1, 0, 0, 1]. Before the fix: all zeros / all ones.
    s = np.array([1e30, 0.0, 1.0, 2.0], np.float32)
    lam = np.asarray(soft_topk(s, 2, solver="exact"))
    want = np.concatenate([[1.0], ref.soft_topk_bisect(s[1:].astype(np.float64), 1, 0.03)])
    np.testing.assert_allclose(lam, want, atol=1e-6)
    s = np.array([0.0, -1e31, -2e31], np.float32)
    np.testing.assert_allclose(soft_topk(s, 2, solver="exact"), [1, 1, 0], atol=1e-6)
    s = np.array([3e38, -3e38, -2e38, 0.0], np.float32)                  # gaps overflow
    np.testing.assert_allclose(soft_topk(s, 2, solver="exact"), [1, 0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
def test_reported_extreme_rows(solver):
    s = np.array([-1e30, -1e30, -1e30, 0.5], np.float32)
    lam = np.asarray(soft_topk(s, 2, solver=solver))
    if solver == "exact":                 # the three tied tokens share the budget left
        np.testing.assert_allclose(lam, [1 / 3, 1 / 3, 1 / 3, 1], atol=1e-6)
    else:                                 # 20 steps of (13) stop where the transcription does
        want = ref.soft_topk_cd(s.astype(np.float64) - 0.5, 2, 0.03, 20)
        np.testing.assert_allclose(lam, want, atol=1e-6)
        assert lam[3] == 1.0 and lam.sum() <= 2
    # k = n: all ones (coordinate descent gave [1, 0, 1, 1])
    np.testing.assert_array_equal(soft_topk(np.array([0.3, -2, 5, 1], np.float32), 4,
                                            solver=solver), 1.0)
    # one +inf: certainly selected, the rest is soft top-k with k - 1 (was NaN for CD)
    s = np.array([np.inf, 0.3, -2.0, 5.0, 1.0], np.float32)
    lam = np.asarray(soft_topk(s, 2, solver=solver, epsilon=1.0, num_iters=500,
                               epsilon_init=1.0))
    want = np.concatenate([[1.0], ref.soft_topk_bisect(s[1:].astype(np.float64), 1, 1.0)])
    np.testing.assert_allclose(lam, want, atol=1e-4)


@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
def test_infinite_and_nan_scores_follow_the_documented_tiers(solver):
    inf, nan = np.inf, np.nan
    cases = [  # scores, mask (None = all real), k, expected (by hand)
        ([inf, 0.0, inf, 1.0], None, 1, [0.5, 0, 0.5, 0]),           # more +inf than k: share
        ([inf, 0.0, inf, 1.0], None, 2, [1, 0, 1, 0]),
        ([nan, -inf, 1.0, inf], None, 3, [0.5, 0.5, 1, 1]),          # NaN = -inf, share rest
        ([nan, -inf, 1.0, inf], None, 2, [0, 0, 1, 1]),
        ([nan, nan, nan], None, 2, [2 / 3] * 3),
        ([-inf, 3.0, -inf, 2.0], [True, True, False, True], 3, [1, 1, 0, 1]),   # padded -inf
        ([inf, inf, 0.0], [False, False, True], 1, [0, 0, 1]),       # padded +inf: nothing
        ([inf, nan, 0.0], [False, False, False], 2, [0, 0, 0]),      # no real token
    ]
    for scores, mask, k, want in cases:
        lam = np.asarray(soft_topk(np.array(scores, np.float32), k, solver=solver,
                                   mask=None if mask is None else np.array(mask)))
        np.testing.assert_allclose(lam, want, atol=1e-6, err_msg=f"{scores} {mask} k={k}")


@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
@pytest.mark.parametrize("gradient", ["implicit", "unrolled"])
def test_gradients_stay_finite_at_extreme_scores(solver, gradient):
    rows = np.array([[np.nan, -np.inf, 1.0, np.inf, 0.9, 1.1, 0.0, 0.95],
                     [1e30, -1e30, 3e38, -3e38, 0.0, 1.0, 0.5, 0.7],
                     [1e6, 1e6 + 0.0625, 1e6 - 0.125, 1e6, -1e6, 1e6, 1e6 + 1, 1e6 - 1]],
                    np.float32)
    w = jnp.asarray(RNG.normal(size=rows.shape), jnp.float32)
    mask = np.ones(rows.shape, bool)
    mask[2, 4] = False
    f = lambda x: jnp.sum(w * soft_topk(x, 3, mask=mask, solver=solver, gradient=gradient,
                                        epsilon=0.3))
    g = np.asarray(jax.grad(f)(jnp.asarray(rows)))
    assert np.all(np.isfinite(g)), g
    assert np.all(g[~np.isfinite(rows)] == 0)            # lam of inf / NaN does not move
    assert np.abs(g[0]).max() > 0.01 and np.abs(g[2]).max() > 0.01   # not trivially zero


def test_implicit_gradient_matches_finite_differences_next_to_infinite_scores():
    # Row [+inf, -inf, NaN, finite...] with k = 3: the finite tokens solve k - 1 = 2.
    n, eps = 8, 0.5
    fin = RNG.normal(size=(n,)) * 0.8
    w = RNG.normal(size=(n + 3,))
    loss_np = lambda x: float(np.dot(ref.soft_topk_bisect(x, 2, eps), w[3:]))
    want = _fd_grad(loss_np, fin, 1e-5)
    scores = jnp.asarray(np.concatenate([[np.inf, -np.inf, np.nan], fin]), jnp.float32)
    for solver in ("coordinate_descent", "exact"):
        loss = lambda x: jnp.dot(soft_topk(x, 3, epsilon=eps, solver=solver, num_iters=500,
                                           epsilon_init=eps), jnp.asarray(w, jnp.float32))
        got = np.asarray(jax.grad(loss)(scores))
        np.testing.assert_array_equal(got[:3], 0.0)
        np.testing.assert_allclose(got[3:], want, atol=2e-4 + 1e-3 * np.abs(want).max())


BAD_SETTINGS = [  # (parameter, bad value, words the message must contain)
    ("epsilon", 0.0, "> 0"), ("epsilon", -0.1, "> 0"), ("epsilon", float("nan"), "finite"),
    ("epsilon", float("inf"), "finite"), ("epsilon", "0.03", "finite"),
    ("epsilon_init", float("nan"), "finite"), ("epsilon_init", -4.0, "> 0"),
    ("epsilon_init", 0.0, "> 0"), ("epsilon_init", float("inf"), "finite"),
    ("epsilon_decay", 0.0, "(0, 1]"), ("epsilon_decay", -0.7, "(0, 1]"),
    ("epsilon_decay", 1.5, "(0, 1]"), ("epsilon_decay", float("nan"), "(0, 1]"),
    ("num_iters", 0, ">= 1"), ("num_iters", -3, ">= 1"), ("num_iters", 2.5, "integer"),
    ("num_iters", True, "integer"),
]


@pytest.mark.parametrize("solver", ["coordinate_descent", "exact"])
@pytest.mark.parametrize("param,value,words", BAD_SETTINGS)
def test_bad_settings_raise_naming_parameter_and_range(param, value, words, solver):
    with pytest.raises(ValueError, match=param) as err:
        soft_topk(jnp.zeros((2, 5)), 2, solver=solver, **{param: value})
    assert words in str(err.value) and "soft_topk" in str(err.value)


@pytest.mark.parametrize("param,value,words", BAD_SETTINGS)
def test_coda_config_rejects_the_same_settings(param, value, words):
    from coda_flax import CodaConfig
    with pytest.raises(ValueError, match=param) as err:
        CodaConfig(**{param: value})
    assert words in str(err.value) and "CodaConfig" in str(err.value)


def test_k_below_one_and_valid_edge_settings():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        soft_topk(jnp.zeros((2, 5)), 0)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        soft_topk(jnp.zeros((2, 5)), -1)
    from coda_flax import CodaConfig
    CodaConfig(epsilon_decay=1.0, num_iters=1, epsilon_init=0.01, epsilon=2.0)   # all valid
    lam = soft_topk(jnp.zeros((5,)), 2, epsilon_decay=1.0, num_iters=1, epsilon_init=0.01)
    np.testing.assert_allclose(lam, 0.4, atol=1e-6)


def test_router_ranks_nan_last_among_real_tokens_and_before_padding():
    from coda_flax.routing import select_top_k
    key = jnp.array([[0.0, np.nan, 1.0, -np.inf, 5.0, 2.0]], jnp.float32)
    mask = jnp.array([[True, True, True, True, False, True]])
    np.testing.assert_array_equal(select_top_k(key, mask, 3), [[0, 2, 5]])
    # 5 slots for 5 real tokens: the NaN / -inf real ones before the padded 5.0
    np.testing.assert_array_equal(select_top_k(key, mask, 5), [[0, 1, 2, 3, 5]])
