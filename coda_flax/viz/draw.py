"""The drawing pieces every routing plot shares: colours, a pyplot-free Figure, titles wrapped
to the figure's width, saving, layer and token labels, value checks."""

from __future__ import annotations

import math
import os

import numpy as np

SELECTED_COLORS = ("#f2f2f2", "#c0392b")       # skipped (adapter only), routed
PADDING_COLOR = "#9e9e9e"
LAM_CMAP = "coolwarm"                          # the paper's warm = preferred, cool = skipped
COUNT_CMAP = "YlOrRd"


# ------------------------------------------------------------------------------------- drawing


def display_token(token: str) -> str:
    """A token as a label: SentencePiece's word marker kept, matplotlib's mathtext '$' escaped."""
    token = str(token).replace("\n", "\\n").replace("\t", "\\t")
    return token.replace("$", r"\$") if token else "''"


def _figure(figsize, dpi, layout="constrained"):
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, dpi=dpi, layout=layout)


def _suptitle(fig, title: str, fontsize: float = 11) -> None:
    """fig.suptitle with every line wrapped to the figure's width (long CLI titles)."""
    import textwrap

    chars = max(20, int(fig.get_figwidth() * 72 / (0.56 * fontsize)))
    lines = [wrapped for line in str(title).split("\n")
             for wrapped in (textwrap.wrap(line, chars) or [""])]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def _save(fig, path: str, dpi: int) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")        # fixed size: no bbox_inches="tight"
    return path


def _values_kind(values: np.ndarray, kind: str | None) -> str:
    if kind is not None:
        if kind not in ("selected", "lam", "score"):
            raise ValueError(f"kind must be 'selected', 'lam' or 'score', got {kind!r}.")
        return kind
    if values.dtype == bool:
        return "selected"
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
        return "lam"
    return "score"


def _as_2d(values, name: str) -> np.ndarray:
    v = np.asarray(values)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2:
        raise ValueError(f"{name} must be [layers, n], got shape {v.shape}.")
    if v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {v.shape}).")
    return v


def _nice_step(n: int, max_ticks: int) -> int:
    raw = max(1, math.ceil(n / max_ticks))
    for base in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if base >= raw:
            return base
    return raw


def _layer_labels(layer_labels, num_layers):
    if layer_labels is None:
        return [str(i) for i in range(num_layers)]
    labels = [str(x) for x in layer_labels]
    if len(labels) != num_layers:
        raise ValueError(f"{len(labels)} layer labels for {num_layers} layers.")
    return labels


def _check_tokens(tokens, n):
    if tokens is None:
        return None
    tokens = [str(t) for t in tokens]
    if len(tokens) != n:
        raise ValueError(f"{len(tokens)} tokens for {n} positions: tokens must match the "
                         f"values' last axis.")
    return tokens


def _valid_mask(valid, n):
    if valid is None:
        return np.ones(n, bool)
    v = np.asarray(valid).astype(bool).reshape(-1)
    if v.shape != (n,):
        raise ValueError(f"valid must have {n} entries, got shape {np.shape(valid)}.")
    return v
