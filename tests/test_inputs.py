"""Image-patch and audio-frame encoder inputs (coda_flax.inputs) against numpy re-derivations,
and the models built on them: padding invariance, dense -> CoDA conversion, presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from coda_flax.checkpoints import dense_to_coda
from coda_flax.config import CodaConfig, ModelConfig, tiny_config
from coda_flax.inputs import ConvSubsampling, PatchEmbedder, encoder_length, encoder_mask
from coda_flax.model import build_module, init_args
from coda_flax.analysis.summary import parameter_table

P = 2                               # patch size of the tiny image model
IMAGE = dict(encoder_input="patches", patch_size=P, num_channels=3, max_patch_positions=16,
             encoder_relative_attention=False)
AUDIO = dict(encoder_input="frames", num_mel_bins=6, conv_channels=3, head="ctc", vocab_size=29,
             num_decoder_layers=0)


def _patches(rng, rows, cols, n, dim):
    x = np.zeros((n, dim), np.float32)
    ids = [(r + 1, c + 1) for r in range(rows) for c in range(cols)]
    x[:len(ids), :2] = ids
    x[:len(ids), 2:] = rng.normal(size=(len(ids), dim - 2))
    return x


def _frames(rng, t_valid, t_total, mel):
    x = np.zeros((t_total, 1 + mel), np.float32)
    x[:t_valid, 0] = np.arange(1, t_valid + 1)
    x[:t_valid, 1:] = rng.normal(size=(t_valid, mel))
    return x


def _params(module, *args):
    return meta.unbox(module.init(jax.random.PRNGKey(0), *args)["params"])


def test_patch_embedder_is_projection_plus_row_and_column_embeddings():
    c = tiny_config(**IMAGE)
    x = _patches(np.random.default_rng(0), 3, 4, 16, 2 + P * P * 3)[None]
    module = PatchEmbedder(c)
    p = _params(module, x)
    got = np.asarray(module.apply({"params": p}, x))
    w = np.asarray(p["patch_projection"]["kernel"])
    rows, cols = x[0, :, 0].astype(int), x[0, :, 1].astype(int)
    want = (x[0, :, 2:] @ w + np.asarray(p["row_embedder"]["embedding"])[rows]
            + np.asarray(p["column_embedder"]["embedding"])[cols])
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(encoder_mask(c, x))[0], np.arange(16) < 12)


def _conv_numpy(x, kernel, bias):
    """3x3 conv, stride 2, one row / column of zero padding each side: x [T, F, Cin]."""
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    t_out, f_out = -(-x.shape[0] // 2), -(-x.shape[1] // 2)
    out = np.zeros((t_out, f_out, kernel.shape[-1]))
    for i in range(t_out):
        for j in range(f_out):
            window = xp[2 * i:2 * i + 3, 2 * j:2 * j + 3]               # [3, 3, Cin]
            out[i, j] = np.tensordot(window, kernel, axes=([0, 1, 2], [0, 1, 2])) + bias
    return out


def test_conv_subsampling_matches_a_numpy_convolution():
    c = tiny_config(**AUDIO)
    x = _frames(np.random.default_rng(1), 11, 14, 6)[None]
    module = ConvSubsampling(c)
    p = _params(module, x)
    got = np.asarray(module.apply({"params": p}, x))[0]
    h = x[0, :, 1:] * (x[0, :, :1] > 0)
    valid = x[0, :, 0] > 0
    h = h[..., None]
    for i in range(2):
        conv = p[f"conv_{i}"]
        h = np.maximum(_conv_numpy(h, np.asarray(conv["kernel"]), np.asarray(conv["bias"])), 0)
        valid = valid[::2]
        h = h * valid[:, None, None]
    want = h.reshape(h.shape[0], -1) @ np.asarray(p["input_projection"]["kernel"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got.shape[0] == encoder_length(c, 14) == 4
    np.testing.assert_array_equal(np.asarray(encoder_mask(c, x))[0], [True] * 3 + [False])


@pytest.mark.parametrize("coda", [None, CodaConfig(reduction=1)])
def test_audio_encoder_output_does_not_depend_on_batch_padding(coda):
    c = tiny_config(coda, **AUDIO)
    module = build_module(c)
    utt = _frames(np.random.default_rng(2), 13, 16, 6)
    longer = np.concatenate([utt, np.zeros((23, 7), np.float32)])    # 39: odd, unlike 16
    p = _params(module, utt[None])
    short_logits, short_mask = module.apply({"params": p}, utt[None])
    long_logits, long_mask = module.apply({"params": p}, longer[None])
    n = int(np.sum(short_mask))
    assert n == int(np.sum(long_mask)) == 4
    np.testing.assert_allclose(np.asarray(short_logits)[0, :n], np.asarray(long_logits)[0, :n],
                               rtol=1e-5, atol=1e-5)


def test_image_model_output_does_not_depend_on_padding_patches():
    c = tiny_config(**IMAGE)
    module = build_module(c)
    rng = np.random.default_rng(3)
    x = _patches(rng, 2, 3, 8, 14)
    longer = np.concatenate([x, np.zeros((8, 14), np.float32)])
    dec = np.array([[0, 5, 6, 7]], np.int32)
    p = _params(module, x[None], dec, dec)
    a = module.apply({"params": p}, x[None], dec, dec)
    b = module.apply({"params": p}, longer[None], dec, dec)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["image", pytest.param("audio", marks=pytest.mark.slow)])
def test_dense_to_coda_with_r1_keeps_the_function_and_r4_routes(kind):
    fields = IMAGE if kind == "image" else AUDIO
    dense = tiny_config(**fields)
    rng = np.random.default_rng(4)
    x = (_patches(rng, 4, 4, 16, 14) if kind == "image" else _frames(rng, 60, 64, 6))[None]
    extra = () if dense.head == "ctc" else (np.array([[0, 5, 6]], np.int32),) * 2
    dense_params = _params(build_module(dense), x, *extra)
    out = lambda cfg, p: build_module(cfg).apply({"params": p}, x, *extra)
    want = out(dense, dense_params)
    for r in (1, 4):
        coda = CodaConfig(reduction=r)
        params = dense_to_coda(dense_params, coda, 0, model_config=dense)
        got = out(dense.replace(coda=coda), params)
        got, ref = (got[0], want[0]) if kind == "audio" else (got, want)
        if r == 1:
            np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
        else:
            assert np.all(np.isfinite(np.asarray(got)))
            assert "router" in params["encoder"]["layers_0"]


def test_routed_image_model_sows_k_of_n_patch_indices():
    c = tiny_config(CodaConfig(reduction=4), **IMAGE)
    x = _patches(np.random.default_rng(5), 4, 4, 16, 14)[None]
    dec = np.array([[0, 5]], np.int32)
    module = build_module(c)
    p = _params(module, x, dec, dec)
    _, state = module.apply({"params": p}, x, dec, dec, mutable=["intermediates"])
    idx = state["intermediates"]["encoder"]["layers_0"]["router_indices"][0]
    assert idx.shape == (1, 4) and np.all(np.diff(np.asarray(idx)[0]) > 0)


def test_bad_input_shapes_name_the_layout():
    c = tiny_config(**IMAGE)
    module = build_module(c)
    with pytest.raises(ValueError, match=r"\[batch, length, 14\]"):
        module.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 13)), jnp.ones((1, 2), jnp.int32),
                    jnp.ones((1, 2), jnp.int32))
    with pytest.raises(ValueError, match="encoder_input"):
        ModelConfig.from_preset("pix2struct", encoder_input="pixels")


def test_presets_of_table7():
    vision = ModelConfig.from_preset("pix2struct", coda=CodaConfig(reduction=8))
    assert (vision.d_model, vision.num_encoder_layers, vision.num_decoder_layers,
            vision.num_heads, vision.num_kv_heads, vision.d_ff) == (1536, 18, 6, 24, 1, 3968)
    assert vision.coda.adapter_dim == 256 and not vision.encoder_relative_attention
    speech = ModelConfig.from_preset("speech_base", coda=CodaConfig(reduction=2))
    assert speech.coda.epsilon == 1.0 and speech.coda.adapter_dim == 256   # appendix D
    assert (speech.d_model, speech.head_dim, speech.head) == (768, 96, "ctc")
    assert ModelConfig.from_preset("speech_base", coda=CodaConfig(epsilon=0.5)).coda.epsilon == 0.5
    # Table 7 quotes 0.7B for the vision model; with T5 v1.1's gated FFN (3 matrices) and an
    # untied head the preset has 0.90B (a 2-matrix FFN would give 0.75B): same order.
    total = parameter_table(ModelConfig.from_preset("pix2struct"))["total"]
    assert 0.7e9 < total < 0.95e9, total


def test_init_args_build_every_parameter_for_frames():
    c = tiny_config(CodaConfig(reduction=3), **AUDIO)
    (x,) = init_args(c)
    assert encoder_length(c, x.shape[1]) > CodaConfig(reduction=3).k(encoder_length(c, x.shape[1]))
