"""CodaCtcModel (speech encoder + CTC head) against PyTorch's CTC loss and a plain-python greedy
decoder, and trained by the project's Trainer with k annealing."""

import itertools

import jax
import numpy as np
import pytest
import torch
from flax.core import meta

from coda_flax.config import CodaConfig, tiny_config
from coda_flax.train.ctc_model import CodaCtcModel, make_model
from coda_flax.train.t5_model import CodaT5Model
from coda_flax.train.trainer import Trainer, TrainerConfig

MEL = 6
AUDIO = dict(encoder_input="frames", num_mel_bins=MEL, conv_channels=4, head="ctc",
             vocab_size=7, num_decoder_layers=0)


def _batch(seed=0, b=4, frames=(40, 23, 9, 32), labels=((1, 2, 2, 3), (4, 5), (1, 2, 3, 4, 5, 6), (6,)),
           t_total=40, l_total=8):
    rng = np.random.default_rng(seed)
    x = np.zeros((b, t_total, 1 + MEL), np.float32)
    y = np.zeros((b, l_total), np.int32)
    for i, (t, lab) in enumerate(zip(frames, labels)):
        x[i, :t, 0] = np.arange(1, t + 1)
        x[i, :t, 1:] = rng.normal(size=(t, MEL))
        y[i, :len(lab)] = lab
    return {"encoder_input_tokens": x, "decoder_target_tokens": y,
            "decoder_input_tokens": np.zeros_like(y),
            "decoder_loss_weights": (y > 0).astype(np.float32)}


def _model_and_params(coda=None):
    model = CodaCtcModel(tiny_config(coda, **AUDIO))
    variables = model.get_initial_variables(jax.random.PRNGKey(0),
                                            {"encoder_input_tokens": (2, 40, 1 + MEL)})
    return model, meta.unbox(variables["params"])


@pytest.mark.parametrize("coda", [pytest.param(None, marks=pytest.mark.slow),  # ~20 s
                                  CodaConfig(reduction=2)])
def test_loss_matches_torch_ctc_with_zero_infinity(coda):
    model, params = _model_and_params(coda)
    batch = _batch()
    loss, metrics = model.loss_fn(params, batch, None)
    logits, mask = model._logits(params, batch)
    logp = torch.log_softmax(torch.tensor(np.asarray(logits)), -1).transpose(0, 1)   # [T, b, V]
    lengths = torch.tensor(np.asarray(mask).sum(-1))
    labels = batch["decoder_target_tokens"]
    want = torch.nn.functional.ctc_loss(
        logp, torch.tensor(labels), lengths, torch.tensor((labels > 0).sum(-1)), blank=0,
        reduction="sum", zero_infinity=True)
    # Example 2 has 9 frames -> 3 encoder tokens for 6 labels: unalignable, so loss 0 there.
    assert float(metrics["unalignable"]) == 1.0
    assert float(metrics["weight_sum"]) == 4 + 2 + 1
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-4)


def test_filler_rows_do_not_count():
    model, params = _model_and_params()
    batch = _batch()
    full, _ = model.loss_fn(params, batch, None)
    batch["decoder_loss_weights"][3] = 0.0
    without, metrics = model.loss_fn(params, batch, None)
    one = dict(batch, **{k: v[3:] for k, v in batch.items()})
    one["decoder_loss_weights"] = (one["decoder_target_tokens"] > 0).astype(np.float32)
    last, _ = model.loss_fn(params, one, None)
    np.testing.assert_allclose(float(full) - float(without), float(last), rtol=1e-4)
    assert float(metrics["weight_sum"]) == 4 + 2


def test_greedy_decode_matches_groupby_reference():
    model, params = _model_and_params(CodaConfig(reduction=2))
    batch = _batch(seed=3)
    ids = np.asarray(model.predict_batch(params, batch))
    logits, mask = model._logits(params, batch)
    best = np.asarray(logits).argmax(-1)
    for row, m, got in zip(best, np.asarray(mask), ids):
        want = [k for k, _ in itertools.groupby(row[m]) if k != 0]
        assert list(got[:len(want)]) == want and not got[len(want):].any()


def test_make_model_picks_the_head():
    assert isinstance(make_model(tiny_config(**AUDIO)), CodaCtcModel)
    assert isinstance(make_model(tiny_config()), CodaT5Model)
    with pytest.raises(ValueError, match="head='ctc'"):
        CodaCtcModel(tiny_config())


@pytest.mark.slow   # ~35 s; test_train keeps the k-annealing trainer test in the default suite
def test_trainer_fits_a_fixed_batch_with_k_annealing(tmp_path):
    model = CodaCtcModel(tiny_config(CodaConfig(reduction=2, epsilon=1.0), **AUDIO))
    batch = _batch(frames=(40, 36, 32, 40), labels=((1, 2, 3), (4, 5), (6, 1, 2, 3), (5,)))
    trainer = Trainer(model, TrainerConfig(model_dir=str(tmp_path), total_steps=40,
                                           learning_rate=1e-2, trainable="all", log_every=40,
                                           checkpoint_every=1000, k_anneal_fraction=0.25,
                                           k_anneal_stages=2, progress=False))
    state = trainer.init_state({"encoder_input_tokens": batch["encoder_input_tokens"].shape})
    first, _ = model.loss_fn(trainer.params(state), batch, None)
    state, _ = trainer.train(state, lambda start: itertools.repeat(batch), n=10)
    last, _ = model.loss_fn(trainer.params(state), batch, None)
    assert float(last) < 0.5 * float(first), (float(first), float(last))
    assert sorted(trainer.compiled_stages) == [5, 10]         # k = n = 10, then n / r = 5
