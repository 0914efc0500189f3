"""SoftTopkConfig: soft top-k's settings as one object, with one default each, handed whole from
CodaConfig to the Router to soft_topk; the flat keywords of the public API keep working."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from coda_flax import CodaConfig, Router, soft_topk
from coda_flax.soft_topk import SoftTopkConfig

# Appendix D's settings (T = 20, eps_0 = 4, beta = 0.7, eps = 0.03), the paper's solver, and
# the implicit gradient (docs/design.md sections 1-3).
PAPER = dict(epsilon=0.03, num_iters=20, epsilon_init=4.0, epsilon_decay=0.7,
             solver="coordinate_descent", gradient="implicit")
OTHER = dict(epsilon=0.5, num_iters=7, epsilon_init=2.0, epsilon_decay=0.5)


def test_the_defaults_are_the_papers_and_coda_config_holds_them_as_one_object():
    assert SoftTopkConfig() == SoftTopkConfig(**PAPER)
    assert CodaConfig().soft_topk == SoftTopkConfig(**PAPER)
    assert CodaConfig(reduction=4, solver="exact", **OTHER).soft_topk == SoftTopkConfig(
        solver="exact", **OTHER)
    assert Router().soft_topk == SoftTopkConfig(**PAPER)


def test_config_and_keywords_give_the_float64_transcription_of_equation_13():
    s = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    want = np.stack([ref.soft_topk_cd(row.astype(np.float64), 4, OTHER["epsilon"],
                                      OTHER["num_iters"], OTHER["epsilon_init"],
                                      OTHER["epsilon_decay"]) for row in s])
    by_config = soft_topk(jnp.asarray(s), 4, config=SoftTopkConfig(**OTHER))
    by_keywords = soft_topk(jnp.asarray(s), 4, **OTHER)
    np.testing.assert_allclose(by_config, want, atol=2e-5)
    np.testing.assert_array_equal(by_config, by_keywords)


def test_the_router_uses_the_settings_coda_config_hands_it():
    coda = CodaConfig(reduction=3, **OTHER)
    router = Router(kind=coda.router, soft_topk=coda.soft_topk)
    x = np.random.default_rng(1).standard_normal((2, 9, 4)).astype(np.float32)
    w = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    route = router.apply({"params": {"kernel": jnp.asarray(w)}}, jnp.asarray(x), 3)
    scores = (x.astype(np.float64) @ w.astype(np.float64))
    want = np.stack([ref.soft_topk_cd(row, 3, OTHER["epsilon"], OTHER["num_iters"],
                                      OTHER["epsilon_init"], OTHER["epsilon_decay"])
                     for row in scores])
    np.testing.assert_allclose(route.lam, want, atol=2e-5)


def test_config_and_changed_keywords_together_are_refused():
    with pytest.raises(ValueError, match="either as config= or as keywords.*num_iters"):
        soft_topk(jnp.zeros((5,)), 2, num_iters=5, config=SoftTopkConfig())
    with pytest.raises(TypeError, match="SoftTopkConfig"):
        soft_topk(jnp.zeros((5,)), 2, config=dict(epsilon=0.1))


@pytest.mark.parametrize("param,value,words", [
    ("epsilon", 0.0, "> 0"), ("num_iters", 0, ">= 1"), ("epsilon_decay", 1.5, "(0, 1]"),
    ("solver", "newton", "unknown solver"), ("gradient", "adjoint", "unknown gradient")])
def test_bad_settings_name_the_object_and_the_parameter(param, value, words):
    for build, owner in ((lambda: SoftTopkConfig(**{param: value}), "SoftTopkConfig"),
                         (lambda: CodaConfig(**{param: value}), "CodaConfig"),
                         (lambda: soft_topk(jnp.zeros((5,)), 2, **{param: value}), "soft_topk")):
        with pytest.raises(ValueError) as err:
            build()
        assert owner in str(err.value) and words in str(err.value) and (
            param in str(err.value))


def test_a_router_gradient_setting_reaches_soft_topk():
    # Unrolled and implicit gradients differ at 3 iterations (the implicit one is the
    # optimum's Jacobian), so the Router must pass `gradient` through.
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 8, 4)), jnp.float32)
    kernel = jnp.asarray([1.0, -0.5, 0.3, 2.0])

    def grad(gradient):
        router = Router(soft_topk=SoftTopkConfig(num_iters=3, epsilon=0.3, gradient=gradient))
        return jax.grad(lambda w: jnp.sum(router.apply({"params": {"kernel": w}}, x, 3).lam
                                          * jnp.arange(8.0)))(kernel)
    assert not np.allclose(grad("implicit"), grad("unrolled"), atol=1e-4)
