"""Probing what the encoder's token states hold: every layer's output for a batch of tokens
(read from flax's captured intermediates), a ridge-regression linear probe on them, and the
demo's role features (the giver's and the receiver's name token of a needle sentence
"giver ... to receiver.", coda_flax.datasets.needle)."""

from __future__ import annotations

import numpy as np

from coda_flax.config import ModelConfig


def encoder_states(config: ModelConfig, params, tokens):
    """[L + 1, b, n, d] float32: the token embeddings and every encoder layer's output for
    tokens [b, n] (CoDA layers included: routed tokens updated, the others by the adapter).
    The encoder is jitted once per config (routing_stats.encode_intermediates)."""
    import flax.linen as nn

    from coda_flax.analysis.routing_stats import encode_intermediates, params_tree

    params = nn.meta.unbox(params_tree(params))
    layers = encode_intermediates(config, True, True)(params, tokens)["encoder"]
    embedded = np.asarray(params["token_embedder"]["embedding"])[np.asarray(tokens)]
    return np.stack([embedded] + [np.asarray(layers[f"layers_{i}"]["__call__"][0])
                                  for i in range(config.num_encoder_layers)]).astype(np.float32)


def ridge_probe(x_train, y_train, x_test, y_test, ridge: float = 1.0) -> float:
    """Accuracy on (x_test, y_test) of a ridge-regression classifier fit on (x_train, y_train):
    w = argmin |[x 1] w - (2y - 1)|^2 + ridge |w|^2, predict y = ([x 1] w > 0). x [m, d] floats,
    y [m] in {0, 1}. The probe behind role_probe: can a linear read-out of one token's state
    tell the giver's name from the receiver's?"""

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


def role_positions(tokens, span, giver_id: int, receiver_id: int):
    """(giver position, receiver position) of the needle "giver ... to receiver." in one row of
    token ids: the first giver token and the last receiver token inside span = (start, end);
    None when either name is not a token there (a name split into several pieces)."""
    start, end = span
    row = list(tokens[start:end])
    if giver_id not in row or receiver_id not in row:
        return None
    return start + row.index(giver_id), start + len(row) - 1 - row[::-1].index(receiver_id)


def role_features(states, tokens, spans, giver_ids, receiver_ids):
    """states [L, b, n, d] (per-layer token states) -> features [L, 2m, d] and labels [2m]
    (0 = the giver's name token, 1 = the receiver's) over the m examples whose names are single
    tokens in the needle span: the inputs of ridge_probe."""
    rows, labels = [], []
    for i, (span, g, r) in enumerate(zip(spans, giver_ids, receiver_ids)):
        pos = role_positions(tokens[i], span, g, r)
        if pos is not None:
            rows += [(i, pos[0]), (i, pos[1])]
            labels += [0, 1]
    if not rows:
        raise ValueError("role_features: no example has single-token names in its needle")
    b, p = np.array(rows).T
    return np.asarray(states)[:, b, p], np.array(labels)
