"""Probing what the encoder's token states hold: every layer's output for a batch of tokens
(read from flax's captured intermediates) and a ridge-regression linear probe on them."""

from __future__ import annotations

import functools

import numpy as np

from coda_flax.config import ModelConfig


@functools.lru_cache(maxsize=None)
def _layer_outputs_fn(config: ModelConfig):
    """One jitted encoder per config (compiled once per input shape) -> every layer's output."""
    import jax
    from coda_flax.model import EncoderDecoder

    model = EncoderDecoder(config)

    @jax.jit
    def run_encoder(p, t):
        _, state = model.apply({"params": p}, t, method="encode", capture_intermediates=True,
                               mutable=["intermediates"])
        layers = state["intermediates"]["encoder"]
        outs = [layers[f"layers_{i}"]["__call__"][0] for i in range(config.num_encoder_layers)]
        return [o[0] if isinstance(o, tuple) else o for o in outs]

    return run_encoder


def encoder_states(config: ModelConfig, params, tokens):
    """[L + 1, b, n, d] float32: the token embeddings and every encoder layer's output for
    tokens [b, n] (CoDA layers included: routed tokens updated, the others by the adapter)."""
    import flax.linen as nn

    params = nn.meta.unbox(params.get("params", params))
    embedded = np.asarray(params["token_embedder"]["embedding"])[np.asarray(tokens)]
    outputs = _layer_outputs_fn(config)(params, tokens)
    return np.stack([embedded] + [np.asarray(o) for o in outputs]).astype(np.float32)


def ridge_probe(x_train, y_train, x_test, y_test, ridge: float = 1.0) -> float:
    """Accuracy on (x_test, y_test) of a ridge-regression classifier fit on (x_train, y_train):
    w = argmin |[x 1] w - (2y - 1)|^2 + ridge |w|^2, predict y = ([x 1] w > 0). x [m, d] floats,
    y [m] in {0, 1}. The probe behind role_probe: can a linear read-out of one token's state
    tell the giver's name from the receiver's?"""
    import numpy as np

    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"ridge_probe needs [m, d] features with the same d, got "
                         f"{x_train.shape} and {x_test.shape}")
    if len(y_train) != len(x_train) or len(y_test) != len(x_test) or not len(y_test):
        raise ValueError("ridge_probe: one label per row, and a non-empty test set")
    a = np.c_[x_train, np.ones(len(x_train))]
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (2.0 * y_train - 1.0))
    return float(((np.c_[x_test, np.ones(len(x_test))] @ w > 0) == (y_test > 0)).mean())
