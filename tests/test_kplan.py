"""The k plan (coda_flax/kplan.py): which configs route, the stages of k annealing, and the
model taking k as an argument. Stages are checked against hand-computed lists (appendix B:
k falls linearly from n to the target, ceil at each stage); the model with k passed must equal,
bit for bit on the same parameters, the model whose config sets CodaConfig.num_routed = k (the
way the trainers passed k before the plan)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coda_flax import CodaConfig, EncoderDecoder, tiny_config
from coda_flax.kplan import KPlan, KStage, layer_k, routes
from coda_flax.model import EncoderCtc
from coda_flax.train.t5_model import CodaT5Model

N = 12


def test_which_configs_route():
    assert not routes(None)                                          # dense
    assert not routes(CodaConfig(reduction=1))                       # the Parallel Adapter
    assert routes(CodaConfig(reduction=1, num_routed=5))             # an explicit k
    assert routes(CodaConfig(reduction=1.5)) and routes(CodaConfig(reduction=3))


def test_stages_anneal_to_the_target_k_or_stay_at_n():
    # r = 2, n = 64, 100 steps, half of them annealing, 3 stages: k = 64, ceil(64 - 16), 32
    plan = KPlan.for_run(CodaConfig(reduction=2), 64, 100, 0.5, 3)
    assert list(plan.stages) == [KStage(0, 64), KStage(25, 48), KStage(50, 32)] and plan.routes
    assert [plan.k_at(s) for s in (0, 24, 25, 49, 50, 99)] == [64, 64, 48, 48, 32, 32]
    assert [plan.next_start(s) for s in (0, 25, 49, 50)] == [25, 50, 50, None]
    # the paper's CoDA pretraining: k = 192 at n = 512 (num_routed), one stage
    assert list(KPlan.for_run(CodaConfig(num_routed=192), 512, 100, 0.1, 1).stages) == \
        [KStage(0, 192)]
    # two stages over 10% of 100 steps: n, then the explicit k
    assert list(KPlan.for_run(CodaConfig(num_routed=192), 512, 100, 0.1, 2).stages) == \
        [KStage(0, 512), KStage(10, 192)]
    for coda in (None, CodaConfig(reduction=1)):                     # nothing routes: k = n
        plan = KPlan.for_run(coda, 64, 100, 0.5, 3)
        assert list(plan.stages) == [KStage(0, 64)] and not plan.routes
    with pytest.raises(ValueError, match="exceeds the sequence length"):
        KPlan.for_run(CodaConfig(num_routed=65), 64, 100)


def test_layer_k_checks_a_passed_k():
    coda = CodaConfig(reduction=3)
    assert layer_k(coda, N) == 4 and layer_k(coda, N, 7) == 7 and layer_k(coda, N, N) == N
    for bad in (0, N + 1):
        with pytest.raises(ValueError, match=r"outside \[1, n=12\]"):
            layer_k(coda, N, bad)
    assert layer_k(CodaConfig(reduction=1), N, N) == N
    with pytest.raises(ValueError, match="has no router"):
        layer_k(CodaConfig(reduction=1), N, N - 1)


def _random_params(module, *inputs):
    """Every parameter drawn at random (the adapters' zero W_up too), so that k shows."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)["params"]
    shapes = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), shapes,
                                    is_leaf=lambda x: hasattr(x, "value"))
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _inputs():
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 64, (2, N)).astype(np.int32)
    enc[1, N - 3:] = 0                                                 # padding
    dec = rng.integers(2, 64, (2, 5)).astype(np.int32)
    return jnp.asarray(enc), jnp.asarray(dec)


def test_the_model_with_k_passed_equals_the_model_with_num_routed_in_its_config():
    config = tiny_config(CodaConfig(reduction=3, adapter_dim=4))
    enc, dec = _inputs()
    params = {"params": _random_params(EncoderDecoder(config), enc, dec, dec)}
    outputs = {}
    for k in (N, 5):
        passed, state = EncoderDecoder(config, k=k).apply(params, enc, dec, dec,
                                                          mutable=["intermediates"])
        written = EncoderDecoder(config.with_coda(num_routed=k)).apply(params, enc, dec, dec)
        np.testing.assert_array_equal(np.asarray(passed), np.asarray(written), err_msg=f"k={k}")
        indices = jax.tree_util.tree_leaves(state.get("intermediates", {}))
        assert all(x.shape[-1] in (k, N) for x in indices)      # [b, k] indices, [b, n] lam
        outputs[k] = np.asarray(passed)
    default = np.asarray(EncoderDecoder(config).apply(params, enc, dec, dec))
    assert not np.allclose(outputs[5], default)       # k changes the result (default: 4)
    # the wrappers the trainers step: the loss of with_k(k) is the loss with num_routed = k
    batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
             "decoder_target_tokens": dec, "decoder_loss_weights": jnp.ones(dec.shape)}
    model = CodaT5Model(config)
    got, _ = model.with_k(5).loss_fn(params["params"], batch, None)
    want, _ = CodaT5Model(config.with_coda(num_routed=5)).loss_fn(params["params"], batch, None)
    assert float(got) == float(want) and model.with_k(5).config == config


@pytest.mark.slow   # ~25 s on a loaded machine; the encoder-decoder test above is the fast one
def test_the_ctc_encoder_takes_k_too():
    config = tiny_config(CodaConfig(reduction=2, adapter_dim=4), head="ctc", num_decoder_layers=0,
                         encoder_input="frames", num_mel_bins=8, conv_channels=4)
    frames = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4 * N, 9)), jnp.float32)
    frames = frames.at[..., 0].set(jnp.arange(1, 4 * N + 1))   # column 0: 1-based frame index
    params = {"params": _random_params(EncoderCtc(config), frames)}
    (passed, _), (written, _) = (EncoderCtc(config, k=2).apply(params, frames),
                                 EncoderCtc(config.with_coda(num_routed=2)).apply(params, frames))
    np.testing.assert_array_equal(np.asarray(passed), np.asarray(written))
