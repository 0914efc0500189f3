"""Where a router's preference comes from: its scores s = LN(X) w (paper equation 9) per encoder
layer on a batch of inputs, and the share of their variance that the position explains against
the content (issue 18's image claim, the paper's Figure 7).

A patch model adds learned row and column embeddings to every patch (inputs.PatchEmbedder), so a
router can prefer places rather than what they hold. Over the real tokens of a batch, with
scores s[p, i] (example p, position i) and a grouping g[p, i] of them:

    share(g) = sum_groups n_g (mean_g s - mean s)^2 / sum (s - mean s)^2

(the between-group sum of squares over the total: eta^2 of a one-way analysis of variance).
With g = i it is the variance the position explains; with g = ink (patch holds ink or not),
the variance the content's one bit that matters here explains; ink_gap gives its direction
((mean over ink - mean over the rest) / std: > 0 when the router prefers the ink).

    out = router_scores(config, params, inputs)       {"scores" [L, b, n], "valid" [b, n]}
    score_variance(out["scores"], ink, out["valid"])  {"position", "ink", "ink_gap": [L]}
"""

from __future__ import annotations

import numpy as np

from coda_flax.analysis.routing_stats import (check_routed, encode_intermediates,
                                              params_tree)


def router_scores(config, params, inputs) -> dict:
    """Every encoder layer's router scores s = LN(X) w on a batch.

    config: a routed CoDA ModelConfig (soft top-k or sigmoid router); params: its tree (or
    {"params": tree}); inputs: what config.encoder_input reads, [b, n] token ids or
    [b, n, features] patches. Returns {"scores": [L, b, n] float32, "valid": [b, n] bool}."""
    from coda_flax.inputs import encoder_mask

    check_routed(config)
    if config.coda.router == "first_k":
        raise ValueError("router_scores: a first_k model has no router scores (it routes the "
                         "first k tokens); use a soft_topk or sigmoid model.")
    tree = params_tree(params)
    inputs = np.asarray(inputs)
    inter = encode_intermediates(config, True, True)(tree, inputs)
    layers = []
    for i in range(config.num_encoder_layers):
        xn = np.asarray(inter["encoder"][f"layers_{i}"]["pre_attention_layer_norm"]
                        ["__call__"][0], np.float32)
        w = np.asarray(tree["encoder"][f"layers_{i}"]["router"]["kernel"], np.float32)
        layers.append(xn @ w)
    return {"scores": np.stack(layers), "valid": np.asarray(encoder_mask(config, inputs))}


def explained_share(scores, groups, valid=None) -> float:
    """The share of the variance of scores [b, n] (over the valid entries) that the groups
    [b, n] (ints) explain: between-group over total sum of squares, in [0, 1]."""
    s, g = np.asarray(scores, np.float64), np.asarray(groups)
    if s.shape != g.shape:
        raise ValueError(f"scores {s.shape} and groups {g.shape} must have the same shape.")
    keep = np.ones(s.shape, bool) if valid is None else np.asarray(valid, bool)
    s, g = s[keep], g[keep]
    total = ((s - s.mean()) ** 2).sum()
    if s.size == 0 or total == 0:
        return 0.0
    labels, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=s) / counts
    return float((counts * (means - s.mean()) ** 2).sum() / total)


def ink_gap(scores, ink, valid=None) -> float:
    """(mean score of the ink entries - mean of the others) / the scores' standard deviation,
    over the valid entries: the sign says which the router prefers (0 when either is absent)."""
    s, ink = np.asarray(scores, np.float64), np.asarray(ink, bool)
    keep = np.ones(s.shape, bool) if valid is None else np.asarray(valid, bool)
    s, ink = s[keep], ink[keep]
    if ink.all() or not ink.any() or s.std() == 0:
        return 0.0
    return float((s[ink].mean() - s[~ink].mean()) / s.std())


def score_variance(scores, ink, valid=None) -> dict:
    """Per layer, the share of the scores' variance [L, b, n] that the position explains, the
    share the ink ([b, n] bool) explains, and ink_gap (its sign: for or against the ink).
    Returns {"position": [L], "ink": [L], "ink_gap": [L]}."""
    s = np.asarray(scores)
    positions = np.broadcast_to(np.arange(s.shape[-1]), s.shape[1:])
    return {"position": [explained_share(layer, positions, valid) for layer in s],
            "ink": [explained_share(layer, np.asarray(ink).astype(int), valid) for layer in s],
            "ink_gap": [ink_gap(layer, ink, valid) for layer in s]}


__all__ = ["router_scores", "explained_share", "ink_gap", "score_variance"]
