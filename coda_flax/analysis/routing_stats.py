"""Routing decisions and their statistics (paper Figure 7, section 6), as numpy data.

Every CoDA encoder layer sends k = ceil(n / r) of its n tokens through the frozen Transformer
layer (equations 3, 9-11); the rest only see the parallel adapter. The layers sow their
decisions into the "intermediates" collection; this module reads them back.

    routing_decisions(config, params, encoder_input_tokens) -> dict
        indices [L, b, k], lam [L, b, n], weights [L, b, k], selected [L, b, n], valid [b, n]
        (token ids, image patches or audio frames: whatever config.encoder_input says; n is
        the encoder length, after the 4x subsampling for audio)
    routing_statistics(selected [L, n] or [L, b, n], valid=None) -> dict
        fraction of layers routing each token, overlap between layers, padding share (= 0)
    decisions_to_json(decisions, batch_index, layers) -> dict     one row, JSON-ready
    ink_share(selected [L, n], ink [n], valid) -> dict       share of routed patches with ink
                                                              vs the page's share of ink patches

The plots of these are in coda_flax.viz.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from coda_flax.kplan import routes

__all__ = ["is_routed", "check_routed", "routing_decisions", "routing_statistics",
           "decisions_to_json", "to_jsonable", "ink_share", "evidence_share"]


def is_routed(config) -> bool:
    """True when the encoder of `config` routes (CoDA with r > 1 or an explicit num_routed)."""
    return routes(getattr(config, "coda", None))


def check_routed(config) -> None:
    if config.coda is None:
        raise ValueError("this model has no CoDA layers (ModelConfig.coda is None: a dense T5 "
                         "encoder): nothing is routed, every token goes through every layer.")
    if not is_routed(config):
        raise ValueError("this model is CoDA with reduction r = 1 (the Parallel Adapter "
                         "baseline): nothing is routed, every token goes through every layer. "
                         "Use a CoDA model with r > 1 (e.g. --reduction 3 overrides r).")


def params_tree(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """The parameter tree of `params`, given either the tree or {"params": tree}."""
    if "params" in params and "encoder" not in params:
        return params["params"]
    return params


@functools.lru_cache(maxsize=8)
def encode_intermediates(config, jit: bool = True, capture_outputs: bool = False):
    """params, inputs -> the encoder's "intermediates" collection (jitted once per config):
    what the layers sow (router_indices, router_lam), and with capture_outputs also every
    module's output under <module>/__call__ (flax's capture_intermediates)."""
    import jax

    from coda_flax.model import build_module

    model = build_module(config)

    def run(p, t):
        _, state = model.apply({"params": p}, t, method="encode", mutable=["intermediates"],
                               capture_intermediates=capture_outputs)
        return state["intermediates"]

    return jax.jit(run) if jit else run


def routing_decisions(config, params, encoder_input_tokens, *, jit: bool = True) -> dict:
    """Runs the encoder and returns every layer's routing decision as numpy arrays.

    encoder_input_tokens: what config.encoder_input reads, with or without the batch axis:
    "tokens" [b, n] ints (0 = padding); "patches" [b, n, 2 + p*p*C] (row id 0 = padding);
    "frames" [b, T, 1 + mel] (frame index 0 = padding), routed over the n = ceil(T / 4)
    encoder tokens after the subsampling. params: the model's parameter tree (or
    {"params": tree}); only the input embedding and the encoder are used.

    Returns a dict:
      layers    [L] layer indices 0..L-1
      indices   [L, b, k] int32   the routed positions, ascending (router_indices)
      lam       [L, b, n] float32 the router's soft top-k weights (router_lam)
      weights   [L, b, k] float32 m = lam at the routed positions (equation 11)
      selected  [L, b, n] bool    True where a position is among the layer's k routed ones
      valid     [b, n] bool       real (non-padding) tokens / patches / encoder frames
      n, k, reduction, router, attention, input (config.encoder_input)
    When k = n (a sequence so short that ceil(n / r) = n) the layers route everything and sow
    nothing: indices = arange(n), lam = valid, selected = True everywhere.
    """
    import jax
    import jax.numpy as jnp

    check_routed(config)
    kind = getattr(config, "encoder_input", "tokens")
    tokens = np.asarray(encoder_input_tokens)
    if kind == "tokens":
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"encoder_input_tokens must be [batch, length] ints, got "
                             f"{tokens.dtype} {tokens.shape}.")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
            raise ValueError(f"token ids must lie in [0, vocab_size={config.vocab_size}); got "
                             f"ids from {tokens.min()} to {tokens.max()} (a vocabulary larger "
                             f"than the model's?).")
        inputs = jnp.asarray(tokens, jnp.int32)
        valid = tokens > 0
    else:
        from coda_flax.inputs import check_inputs, encoder_mask

        if tokens.ndim == 2:
            tokens = tokens[None]
        check_inputs(config, tokens)
        tokens = tokens.astype(np.float32)
        inputs = jnp.asarray(tokens)
        valid = np.asarray(encoder_mask(config, tokens))
    b, n = valid.shape
    k = config.coda.k(n)
    num_layers = config.num_encoder_layers
    tree = params_tree(params)
    inter = encode_intermediates(config, jit)(tree, inputs)
    inter = jax.tree_util.tree_map(np.asarray, inter)
    encoder = inter.get("encoder", {}) if hasattr(inter, "get") else {}

    indices = np.zeros((num_layers, b, k), np.int32)
    lam = np.zeros((num_layers, b, n), np.float32)
    for i in range(num_layers):
        layer = encoder.get(f"layers_{i}", {})
        if "router_indices" in layer:
            indices[i] = layer["router_indices"][0]
            lam[i] = layer["router_lam"][0]
        elif k == n:
            indices[i] = np.arange(n, dtype=np.int32)[None]
            lam[i] = valid.astype(np.float32)
        else:
            raise RuntimeError(f"encoder layer {i} sowed no routing decision although k={k} < "
                               f"n={n}; is it a CoDA layer?")
    selected = np.zeros((num_layers, b, n), bool)
    np.put_along_axis(selected, indices, True, axis=2)
    weights = np.take_along_axis(lam, indices, axis=2)
    return {"layers": list(range(num_layers)), "indices": indices, "lam": lam,
            "weights": weights, "selected": selected, "valid": valid, "n": n, "k": k,
            "reduction": config.coda.reduction, "router": config.coda.router,
            "attention": config.coda.attention, "input": kind}


def routing_statistics(selected, valid=None) -> dict:
    """Summary numbers for routing masks.

    selected: [L, n] or [L, b, n] bool (True = routed by that layer); valid: [n] or [b, n] bool
    (True = real token; None = all real).

    Returns (numpy arrays; per-token results are [n] for 2-D input, [b, n] for 3-D):
      routed_per_layer    [L]      routed positions per layer (summed over the batch)
      fraction_of_layers  [(b,) n] share of layers that route each token
      coverage            float    share of real tokens routed by at least one layer
      never_routed        int      real tokens no layer routes
      always_routed       int      real tokens every layer routes
      overlap             [L, L]   |A_i & A_j| / |A_i|: share of layer i's routed tokens that
                                   layer j also routes (1 on the diagonal)
      jaccard             [L, L]   |A_i & A_j| / |A_i | A_j|
      adjacent_jaccard    [L - 1]  jaccard between consecutive layers
      padding_routed      int      routed slots that fall on padding
      padding_share       float    padding_routed / all routed slots; 0 whenever k does not
                                   exceed the real tokens (padding is never preferred)
    """
    sel = np.asarray(selected).astype(bool)
    if sel.ndim not in (2, 3):
        raise ValueError(f"selected must be [layers, n] or [layers, batch, n], got {sel.shape}.")
    squeeze = sel.ndim == 2
    if squeeze:
        sel = sel[:, None]
    num_layers, b, n = sel.shape
    if valid is None:
        val = np.ones((b, n), bool)
    else:
        val = np.asarray(valid).astype(bool).reshape((-1, n) if np.ndim(valid) else (b, n))
        if val.shape != (b, n):
            raise ValueError(f"valid has shape {np.shape(valid)}; expected "
                             f"{(n,) if squeeze else (b, n)} to match selected {np.shape(selected)}.")
    if num_layers == 0:
        raise ValueError("selected has no layers.")
    flat = sel.reshape(num_layers, b * n)
    inter = flat.astype(np.int64) @ flat.T.astype(np.int64)        # [L, L] |A_i & A_j|
    count = np.diag(inter).astype(np.float64)
    union = count[:, None] + count[None, :] - inter
    overlap = np.divide(inter, count[:, None], out=np.zeros_like(inter, np.float64),
                        where=count[:, None] > 0)
    jaccard = np.divide(inter, union, out=np.ones_like(inter, np.float64), where=union > 0)
    frac = sel.mean(axis=0)                                         # [b, n]
    frac = np.where(val, frac, 0.0)
    any_routed = sel.any(axis=0) & val
    all_routed = sel.all(axis=0) & val
    real = int(val.sum())
    padding_routed = int((sel & ~val[None]).sum())
    total_routed = int(sel.sum())
    return {
        "routed_per_layer": sel.sum(axis=(1, 2)),
        "fraction_of_layers": frac[0] if squeeze else frac,
        "coverage": float(any_routed.sum() / real) if real else 0.0,
        "never_routed": int(real - any_routed.sum()),
        "always_routed": int(all_routed.sum()),
        "overlap": overlap,
        "jaccard": jaccard,
        "adjacent_jaccard": np.array([jaccard[i, i + 1] for i in range(num_layers - 1)]),
        "padding_routed": padding_routed,
        "padding_share": padding_routed / total_routed if total_routed else 0.0,
    }


def decisions_to_json(decisions: Mapping[str, Any], batch_index: int = 0,
                      layers: Sequence[int] | None = None) -> dict:
    """One batch row of `routing_decisions` as a JSON-ready dict (lam rounded to 6 places)."""
    layers = list(decisions["layers"]) if layers is None else list(layers)
    out = {key: decisions[key] for key in ("n", "k", "reduction", "router", "attention")}
    if "input" in decisions:
        out["input"] = decisions["input"]
    valid = decisions["valid"][batch_index]
    out["num_real_tokens"] = int(valid.sum())
    out["layers"] = [{
        "layer": int(i),
        "indices": decisions["indices"][i, batch_index].tolist(),
        "weights": np.round(decisions["weights"][i, batch_index], 6).tolist(),
        "lam": np.round(decisions["lam"][i, batch_index], 6).tolist(),
        "selected": decisions["selected"][i, batch_index].astype(int).tolist(),
    } for i in layers]
    stats = routing_statistics(decisions["selected"][layers, batch_index], valid)
    out["statistics"] = to_jsonable(stats)
    return out


def to_jsonable(value):
    """numpy arrays / scalars in a (nested) dict -> lists / Python numbers (floats: 6 places)."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return np.round(value, 6).tolist() if value.dtype.kind == "f" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def ink_share(selected, ink_mask, valid=None) -> dict:
    """Do the routers pick the patches with ink? (the paper's section 6 claim: CoDA skips the
    white background of documents.)

    selected: [L, n] (or [n]) bool, True = routed by that layer; ink_mask: [n] bool (patches
    with ink); valid: [n] bool real patches (None: all). Returns (numpy / floats):
      routed_ink_share   [L]   share of a layer's routed (real) patches that hold ink
      page_ink_share     float share of the real patches that hold ink (what random routing
                               would give)
      enrichment         [L]   routed_ink_share / page_ink_share (1 = no preference for ink)
      ink_coverage       [L]   share of the ink patches the layer routes
      routed             [L]   routed real patches per layer
      ink_patches, real_patches   ints
    """
    sel = np.asarray(selected).astype(bool)
    if sel.ndim == 1:
        sel = sel[None]
    if sel.ndim != 2:
        raise ValueError(f"selected must be [layers, n], got shape {np.shape(selected)}.")
    n = sel.shape[1]
    ink = np.asarray(ink_mask).astype(bool).reshape(-1)
    if ink.shape != (n,):
        raise ValueError(f"ink_mask must have {n} entries, got shape {np.shape(ink_mask)}.")
    val = np.ones(n, bool) if valid is None else np.asarray(valid).astype(bool).reshape(-1)
    if val.shape != (n,):
        raise ValueError(f"valid must have {n} entries, got shape {np.shape(valid)}.")
    ink = ink & val
    routed = (sel & val).sum(axis=1)
    routed_ink = (sel & ink).sum(axis=1)
    real, inked = int(val.sum()), int(ink.sum())
    page = inked / real if real else 0.0
    share = np.divide(routed_ink, routed, out=np.zeros(len(routed)), where=routed > 0)
    return {"routed_ink_share": share,
            "page_ink_share": page,
            "enrichment": share / page if page > 0 else np.full(len(routed), np.nan),
            "ink_coverage": (routed_ink / inked if inked else np.zeros(len(routed))),
            "routed": routed, "ink_patches": inked, "real_patches": real}


def evidence_share(selected, spans, valid) -> dict:
    """How much of what the router sends through the frozen layers is the evidence (the demo's
    needle: a span of tokens per example).

    selected [L, b, n] bool (routed positions per layer), spans: per example the needle's token
    offsets (start, end), or a list of them when it holds several needles (`coda claims`' "who
    gave them?"), valid [b, n] bool (real tokens, EOS included). Returns
      routed_evidence_share [L]  share of routed real tokens that lie in the needle
      evidence_recall       [L]  share of needle tokens that are routed
      share_ceiling         [L]  the most a router could reach: min(needle, routed) / routed
      chance                     needle tokens / real tokens (a router that ignores content)
    averaged over the b examples."""
    selected, valid = np.asarray(selected, bool), np.asarray(valid, bool)
    if selected.ndim != 3 or selected.shape[1:] != valid.shape or len(spans) != valid.shape[0]:
        raise ValueError(f"shapes: selected {selected.shape} must be [L, b, n] with valid "
                         f"{valid.shape} = [b, n] and {len(spans)} spans = b")
    evidence = np.zeros_like(valid)
    for i, row in enumerate(spans):
        for start, end in ([row] if np.ndim(row[0]) == 0 else row):
            if not 0 <= start < end <= valid.shape[1]:
                raise ValueError(f"span {i} = ({start}, {end}) is outside [0, "
                                 f"{valid.shape[1]}]")
            evidence[i, start:end] = True
    routed = selected & valid[None]
    hits = (routed & evidence[None]).sum(-1)                           # [L, b]
    share = hits / np.maximum(routed.sum(-1), 1)
    recall = hits / evidence.sum(-1)[None]
    count = routed.sum(-1)
    ceiling = np.minimum(evidence.sum(-1)[None], count) / np.maximum(count, 1)
    chance = evidence.sum(-1) / valid.sum(-1)
    return {"routed_evidence_share": share.mean(-1), "evidence_recall": recall.mean(-1),
            "share_ceiling": ceiling.mean(-1), "chance": float(chance.mean())}
