"""Routing plots: which tokens each CoDA encoder layer routes (paper Figure 7).

The decisions come from coda_flax.analysis.routing_stats (routing_decisions: indices, lam,
weights, selected [L, b, n], valid [b, n]); image patches are placed with
coda_flax.frontends.patch_grid. This module draws them:

    plot_routing_heatmap(values [L, n], tokens, path)        layers x tokens heatmap (PNG)
    render_token_highlights(tokens, values [L, n], path)     text coloured by #layers (HTML + PNG)
    plot_patch_routing(selected [L, rows*cols], (rows, cols), path, image=None)
                                                              image patches, one panel per layer
    plot_image_routing(values [L, n], patches, path)         per-layer routing over the image
    plot_ink_share(stats, path)                               bars per layer vs the page's share
                                                              (stats: routing_stats.ink_share, or
                                                              {variant: stats} side by side)
    audio_routing_strips(values [L, n], T) -> [L, T]          encoder token j -> frames 4j..4j+3
    plot_audio_routing(values [L, n], frames, path)           log-mel spectrogram over one strip
                                                              per layer, on a common time axis

Figures are drawn on matplotlib's Agg canvas (`matplotlib.figure.Figure`, never pyplot), so
nothing here touches the interactive backend or global pyplot state. No argv is read here
(`coda visualize` lives in coda_flax/cli/visualize.py).
"""

from __future__ import annotations

import html
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from coda_flax.frontends.patch_grid import patch_image, place_patches
from coda_flax.inputs import SUBSAMPLING

__all__ = ["plot_routing_heatmap", "render_token_highlights", "plot_patch_routing",
           "display_token", "plot_image_routing", "plot_ink_share", "audio_routing_strips",
           "plot_audio_routing", "SUBSAMPLING"]

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


def plot_routing_heatmap(selected_or_lam, tokens: Sequence[str] | None = None,
                         path: str = "routing_heatmap.png", *, title: str | None = None,
                         layer_labels: Sequence[Any] | None = None, valid=None,
                         kind: str | None = None, selected=None, show_fraction: bool = True,
                         max_token_labels: int = 64, figsize: tuple[float, float] | None = None,
                         dpi: int = 100) -> str:
    """A layers x tokens heatmap (rows = encoder layers, columns = token positions); the paper's
    Figure 7 for text. Returns `path`.

    selected_or_lam: [L, n]; bool = routed or not (two colours), floats in [0, 1] = the router's
      lam (warm = preferred), other floats = raw scores. `kind` overrides the guess.
    tokens: n labels shown under the columns when n <= max_token_labels (else thinned
      position ticks); None shows positions only. valid: [n] bool, padding drawn grey.
    selected: optional [L, n] bool drawn as dots over a lam / score heatmap (which cells the
      router actually routed: top-k by score, while lam may be unconverged).
    show_fraction: a bar panel on top with the share of layers routing each token (mean lam).
    figsize (inches) x dpi fixes the PNG's pixel size; the default grows with n and L.
    """
    import matplotlib
    from matplotlib.colors import BoundaryNorm, ListedColormap

    values = _as_2d(selected_or_lam, "selected_or_lam")
    num_layers, n = values.shape
    kind = _values_kind(values, kind)
    tokens = _check_tokens(tokens, n)
    valid_mask = _valid_mask(valid, n)
    labels = _layer_labels(layer_labels, num_layers)
    token_labels = tokens is not None and n <= max_token_labels
    longest = max((len(display_token(t)) for t in tokens), default=1) if token_labels else 3
    if figsize is None:
        width = float(np.clip(2.8 + (0.24 if token_labels else 0.03) * n, 6.0, 20.0))
        height = float(np.clip(0.9 + 0.28 * num_layers, 1.6, 10.0))
        height += (min(0.075 * longest, 1.6) + 0.5) if token_labels else 0.6
        height += 1.1 if show_fraction else 0.0
        height += 0.4 if title else 0.0
        figsize = (width, height)
    fig = _figure(figsize, dpi)
    if show_fraction:
        grid = fig.add_gridspec(2, 1, height_ratios=[1, max(1.5, 0.28 * num_layers)])
        bar_ax = fig.add_subplot(grid[0])
        ax = fig.add_subplot(grid[1], sharex=bar_ax)
    else:
        ax, bar_ax = fig.add_subplot(1, 1, 1), None

    data = np.ma.masked_array(values.astype(np.float64),
                              mask=np.broadcast_to(~valid_mask, values.shape))
    if kind == "selected":
        cmap = ListedColormap(SELECTED_COLORS)
        norm = BoundaryNorm([-0.5, 0.5, 1.5], cmap.N)
        im_kw = dict(cmap=cmap, norm=norm)
    elif kind == "lam":
        im_kw = dict(cmap=matplotlib.colormaps[LAM_CMAP], vmin=0.0, vmax=1.0)
    else:
        finite = values[np.isfinite(values) & valid_mask[None]]
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        im_kw = dict(cmap=matplotlib.colormaps[LAM_CMAP], vmin=-lim, vmax=lim)
    im_kw["cmap"] = im_kw["cmap"].with_extremes(bad=PADDING_COLOR)
    im = ax.imshow(data, aspect="auto", interpolation="nearest", **im_kw)

    if selected is not None and kind != "selected":
        dots = np.asarray(selected).astype(bool)
        if dots.shape != values.shape:
            raise ValueError(f"selected has shape {dots.shape}; expected {values.shape}.")
        ys, xs = np.nonzero(dots)
        cell_pts = min(figsize[0] * 72 * 0.8 / n, figsize[1] * 72 * 0.6 / num_layers)
        ax.scatter(xs, ys, s=float(np.clip((0.28 * cell_pts) ** 2, 0.5, 40)), c="black",
                   marker="o", linewidths=0, label="routed")

    # Cell separators when cells are large enough to see them.
    if n <= 128:
        ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, num_layers, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6 if n <= 64 else 0.3)
        ax.tick_params(which="minor", length=0)

    if token_labels:
        ax.set_xticks(np.arange(n))
        size = 9 if n <= 32 else 7 if n <= 48 else 6
        ax.set_xticklabels([display_token(t) for t in tokens], rotation=90, fontsize=size)
        ax.set_xlabel("token")
    else:
        step = _nice_step(n, 24 if figsize[0] >= 10 else 12)
        ax.set_xticks(np.arange(0, n, step))
        ax.set_xticklabels([str(i) for i in range(0, n, step)], fontsize=8)
        ax.set_xlabel("token position")
    ystep = _nice_step(num_layers, 32)
    ax.set_yticks(np.arange(0, num_layers, ystep))
    ax.set_yticklabels(labels[::ystep], fontsize=8)
    ax.set_ylabel("encoder layer")

    cbar = fig.colorbar(im, ax=ax, pad=0.01, fraction=0.04 if figsize[0] >= 10 else 0.06)
    if kind == "selected":
        cbar.set_ticks([0, 1])
        cbar.set_ticklabels(["adapter\nonly", "routed"], fontsize=8)
    else:
        label = "router $\\lambda$" if kind == "lam" else "router score"
        cbar.set_label(label + ("  (dots: routed)" if selected is not None else ""), fontsize=9)
        cbar.ax.tick_params(labelsize=8)

    if bar_ax is not None:
        frac = np.where(valid_mask, values.astype(np.float64).mean(axis=0), 0.0)
        bar_ax.bar(np.arange(n), frac, width=0.85 if n <= 128 else 1.0,
                   color=SELECTED_COLORS[1] if kind == "selected" else "#4c72b0")
        bar_ax.set_ylim(0, 1 if kind != "score" else None)
        bar_ax.set_ylabel("share of\nlayers" if kind == "selected" else
                          "mean\n$\\lambda$" if kind == "lam" else "mean", fontsize=8)
        bar_ax.tick_params(axis="x", labelbottom=False)
        bar_ax.tick_params(axis="y", labelsize=7)
        bar_ax.spines[["top", "right"]].set_visible(False)
        bar_ax.set_xlim(-0.5, n - 0.5)
        # Keep the bar panel aligned with the heatmap (the colorbar steals width from it).
        fig.colorbar(im, ax=bar_ax, pad=0.01,
                     fraction=0.04 if figsize[0] >= 10 else 0.06).ax.set_visible(False)

    if not valid_mask.all():
        ax.set_xlabel(ax.get_xlabel() + f"  (grey: {int((~valid_mask).sum())} padding)")
    if title is None:
        title = {"selected": "CoDA routing: routed tokens per layer",
                 "lam": "CoDA routing: router $\\lambda$ per layer",
                 "score": "CoDA routing: router scores per layer"}[kind]
    fig.suptitle(title, fontsize=11)
    return _save(fig, path, dpi)


def _word_split(tokens: Sequence[str]) -> list[tuple[bool, str]]:
    """(starts a new word, text) per token; SentencePiece's U+2581 marks a word start."""
    sentencepiece = any("\u2581" in t for t in tokens)
    out = []
    for i, t in enumerate(tokens):
        if sentencepiece:
            if t.startswith("\u2581"):
                out.append((i > 0, t[1:]))
            else:
                out.append((False, t))
        else:
            out.append((i > 0, t))
    return out


def _rgba_hex(rgba) -> str:
    r, g, b = (int(round(255 * c)) for c in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _luminance(rgba) -> float:
    return 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]


def render_token_highlights(tokens: Sequence[str], weights_per_layer, path: str, *,
                            title: str | None = None, valid=None,
                            layer_labels: Sequence[Any] | None = None,
                            width_inches: float = 10.0, fontsize: float = 12.0,
                            dpi: int = 100) -> dict[str, str]:
    """The text with each token highlighted by how many layers route it.

    weights_per_layer: [L, n]; bool = routed (the colour is the number of routing layers),
    floats = lam (the colour is the sum of lam over layers). Writes `<stem>.html` (hover a token
    for the layers that route it) and `<stem>.png` (matplotlib text rendering, `width_inches`
    wide, height from the number of lines), where stem is `path` without .html / .png.
    Padding positions (valid False) are left out. Returns {"html": path, "png": path}.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import (BoundaryNorm, LinearSegmentedColormap, ListedColormap,
                                   Normalize)

    values = _as_2d(weights_per_layer, "weights_per_layer")
    num_layers, n = values.shape
    tokens = _check_tokens(tokens, n)
    if tokens is None:
        raise ValueError("render_token_highlights needs the tokens (strings or ids as strings).")
    valid_mask = _valid_mask(valid, n)
    labels = _layer_labels(layer_labels, num_layers)
    routed_bool = values.dtype == bool
    score = values.astype(np.float64).sum(axis=0)                      # [n]
    cmap = matplotlib.colormaps[COUNT_CMAP]
    norm = Normalize(0.0, float(num_layers))
    colors = [cmap(norm(s) * 0.85) if s > 0 else (1, 1, 1, 1) for s in score]
    stem = os.fspath(path)
    for ext in (".html", ".png"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    html_path, png_path = stem + ".html", stem + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(html_path)), exist_ok=True)
    if title is None:
        title = "Tokens coloured by how many CoDA encoder layers route them"
    keep = [i for i in range(n) if valid_mask[i]]
    split = _word_split([tokens[i] for i in keep])
    num_padding = n - len(keep)
    unit = "layers" if routed_bool else "summed lam over layers"

    # ---- HTML
    spans = []
    for (new_word, text), i in zip(split, keep):
        rgba = colors[i]
        fg = "#ffffff" if _luminance(rgba) < 0.5 else "#000000"
        by = [labels[l] for l in range(num_layers) if values[l, i] > (0.5 if routed_bool else 0.0)]
        tip = (f"position {i}: routed by {int(score[i])}/{num_layers} layers"
               f" ({', '.join(by) if by else 'none'})" if routed_bool else
               f"position {i}: sum of lam {score[i]:.3f} over {num_layers} layers")
        if new_word:
            spans.append(" ")
        spans.append(f'<span class="t" style="background:{_rgba_hex(rgba)};color:{fg}" '
                     f'title="{html.escape(tip)}">{html.escape(text) or "&#8203;"}</span>')
    legend = "".join(
        f'<span class="t" style="background:{_rgba_hex(cmap(norm(c) * 0.85) if c else (1, 1, 1, 1))};'
        f'color:{"#fff" if c and _luminance(cmap(norm(c) * 0.85)) < 0.5 else "#000"}">{c}</span> '
        for c in range(num_layers + 1))
    note = (f"<p class='note'>{num_padding} padding positions not shown.</p>"
            if num_padding else "")
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; line-height: 2.1; }}
.text {{ font-family: monospace; font-size: 15px; white-space: pre-wrap; }}
.t {{ padding: 2px 1px; border-radius: 3px; border: 1px solid #ddd; }}
.legend, .note {{ font-size: 13px; color: #444; }}
</style></head>
<body>
<h3>{html.escape(title)}</h3>
<p class="legend">Colour = number of {num_layers} encoder layers that send the token through the
frozen Transformer layer ({unit}); uncoloured tokens see only the adapter. Hover a token for
the layers. Legend: {legend}</p>
<div class="text">{"".join(spans)}</div>
{note}
</body></html>
"""
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(doc)

    # ---- PNG: lay tokens out in lines (in inches), then size the figure to fit.
    fig = _figure((width_inches, 2.0), dpi, layout=None)
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    margin, gap, word_gap = 0.3, 0.02, 0.09
    line_h = fontsize / 72.0 * 1.9
    pad_pts = 1.5
    placed, x, line = [], margin, 0
    for (new_word, text), i in zip(split, keep):
        label = display_token(text) if text else " "
        probe = fig.text(0, 0, label, fontsize=fontsize, family="DejaVu Sans Mono")
        w = probe.get_window_extent(renderer).width / dpi + 2 * pad_pts / 72.0
        probe.remove()
        step = word_gap if new_word else gap
        if x > margin and x + step + w > width_inches - margin:
            x, line = margin, line + 1
        elif x > margin:
            x += step
        placed.append((x, line, label, i))
        x += w
    num_lines = line + 1
    header, legend_h = 0.55, 0.75
    height = header + num_lines * line_h + legend_h + 0.2
    fig.set_size_inches(width_inches, height)
    fig.text(margin / width_inches, 1 - 0.3 / height, title, fontsize=11, va="center")
    for x, line, label, i in placed:
        rgba = colors[i]
        y = height - header - (line + 0.5) * line_h
        fig.text(x + pad_pts / 72.0, y, label, transform=fig.dpi_scale_trans, fontsize=fontsize,
                 family="DejaVu Sans Mono", va="center", ha="left",
                 color="white" if _luminance(rgba) < 0.5 else "black",
                 bbox=dict(boxstyle=f"square,pad={pad_pts / fontsize:.3f}", facecolor=rgba,
                           edgecolor="#cccccc", linewidth=0.5))
    cax = fig.add_axes([margin / width_inches, 0.25 / height, min(0.5, 4.0 / width_inches),
                        0.18 / height])
    if routed_bool:
        legend_colors = [(1, 1, 1, 1)] + [cmap(norm(c) * 0.85) for c in range(1, num_layers + 1)]
        cb = ColorbarBase(cax, cmap=ListedColormap(legend_colors),
                          norm=BoundaryNorm(np.arange(-0.5, num_layers + 1), num_layers + 1),
                          orientation="horizontal")
        step = _nice_step(num_layers + 1, 13)
        cb.set_ticks(np.arange(0, num_layers + 1, step))
    else:
        cb = ColorbarBase(cax, cmap=LinearSegmentedColormap.from_list(
            "c", [(1, 1, 1, 1)] + [cmap(v) for v in np.linspace(0, 0.85, 8)]),
            norm=norm, orientation="horizontal")
    cb.outline.set_linewidth(0.5)
    cax.tick_params(labelsize=8)
    cax.set_title(f"number of layers routing the token (of {num_layers})" if routed_bool
                  else f"sum of lam over {num_layers} layers", fontsize=9, loc="left")
    if num_padding:
        fig.text(1 - margin / width_inches, 0.3 / height,
                 f"{num_padding} padding positions not shown", fontsize=8, ha="right",
                 color="#555555")
    _save(fig, png_path, dpi)
    return {"html": html_path, "png": png_path}


def plot_patch_routing(selected, grid_hw: tuple[int, int], path: str, image=None, *,
                       layer_labels: Sequence[Any] | None = None, title: str | None = None,
                       ncols: int | None = None, panel_inches: float = 2.6,
                       dpi: int = 100) -> str:
    """Routing over image patches: one panel per layer, patches in row-major (ViT) order.

    selected: [L, rows * cols] bool (routed) or floats in [0, 1] (lam; warm = preferred).
    grid_hw: (rows, cols) of the patch grid. image: optional [H, W] or [H, W, C] array (floats
    in [0, 1] or uint8) drawn under the overlay: skipped patches are dimmed, routed ones tinted
    (for lam, a translucent heatmap). Without an image the grid itself is drawn. Returns path.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap

    values = _as_2d(selected, "selected")
    num_layers, num_patches = values.shape
    rows, cols = (int(x) for x in grid_hw)
    if rows * cols != num_patches:
        raise ValueError(f"grid_hw={tuple(grid_hw)} has {rows * cols} patches but selected has "
                         f"{num_patches} per layer.")
    labels = _layer_labels(layer_labels, num_layers)
    kind = _values_kind(values, None)
    if image is not None:
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise ValueError(f"image must be [H, W] or [H, W, C], got shape {image.shape}.")
        if image.dtype.kind == "f":
            image = np.clip(image, 0.0, 1.0)
    ncols = ncols or min(num_layers, 4)
    nrows = math.ceil(num_layers / ncols)
    aspect = rows / cols
    figsize = (ncols * panel_inches + 0.9, nrows * panel_inches * aspect + 0.7)
    fig = _figure(figsize, dpi)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    h, w = (image.shape[:2] if image is not None else (rows, cols))
    extent = (0, w, h, 0)
    mappable = None
    for l, ax in enumerate(axes.flat):
        if l >= num_layers:
            ax.set_visible(False)
            continue
        grid = values[l].reshape(rows, cols).astype(np.float64)
        if image is not None:
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=extent,
                      interpolation="nearest")
            if kind == "selected":
                overlay = np.zeros((rows, cols, 4))
                overlay[grid > 0.5] = (0.85, 0.15, 0.1, 0.28)       # routed: red tint
                overlay[grid <= 0.5] = (0.0, 0.0, 0.0, 0.62)        # adapter only: dimmed
                ax.imshow(overlay, extent=extent, interpolation="nearest")
            else:
                mappable = ax.imshow(grid, cmap=LAM_CMAP, vmin=0, vmax=1, alpha=0.55,
                                     extent=extent, interpolation="nearest")
        elif kind == "selected":
            cmap = ListedColormap(SELECTED_COLORS)
            mappable = ax.imshow(grid, cmap=cmap, norm=BoundaryNorm([-0.5, 0.5, 1.5], 2),
                                 extent=extent, interpolation="nearest")
        else:
            mappable = ax.imshow(grid, cmap=LAM_CMAP, vmin=0, vmax=1, extent=extent,
                                 interpolation="nearest")
        if rows <= 48 and cols <= 48:                                # patch boundaries
            ax.set_xticks(np.linspace(0, w, cols + 1), minor=True)
            ax.set_yticks(np.linspace(0, h, rows + 1), minor=True)
            ax.grid(which="minor", color="white", linewidth=0.4, alpha=0.6)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        routed = int((grid > 0.5).sum()) if kind == "selected" else None
        ax.set_title(f"layer {labels[l]}" + (f"  ({routed}/{num_patches} routed)"
                                               if routed is not None else ""), fontsize=9)
    if mappable is not None:
        cbar = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8, pad=0.02)
        if kind == "selected":
            cbar.set_ticks([0, 1])
            cbar.set_ticklabels(["adapter\nonly", "routed"], fontsize=8)
        else:
            cbar.set_label("router $\\lambda$", fontsize=9)
    if title is None:
        title = ("CoDA routing over image patches" + (" (dimmed: adapter only)"
                                                     if image is not None and kind == "selected"
                                                     else ""))
    _suptitle(fig, title, 11)
    return _save(fig, path, dpi)



# -------------------------------------------------------------------------------------- images


def plot_ink_share(stats: Mapping[str, Any], path: str, *,
                   layer_labels: Sequence[Any] | None = None, title: str | None = None,
                   figsize: tuple[float, float] | None = None, dpi: int = 100) -> str:
    """Bars: the share of each layer's routed patches that hold ink; dashed line: the share of
    ink patches on the page (= what routing blind to the content would give); dots: the share
    of the ink patches each layer routes. `stats` is `ink_share`'s result, or {variant: its
    result} for several models on the same pages (grouped bars, one colour per variant, the
    coverage dots left out). Returns path."""
    named = {"": stats} if "routed_ink_share" in stats else dict(stats)
    shares = {name: np.asarray(s["routed_ink_share"], np.float64) for name, s in named.items()}
    num_layers = len(next(iter(shares.values()), ()))
    if num_layers == 0:
        raise ValueError("ink_share statistics have no layers.")
    labels = _layer_labels(layer_labels, num_layers)
    if figsize is None:
        figsize = (float(np.clip(4.7 + 0.35 * num_layers * len(named), 7.0, 16.0)), 3.6)
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(num_layers)
    width = 0.7 / len(named)
    for i, (name, share) in enumerate(shares.items()):
        ax.bar(x + (i - (len(named) - 1) / 2) * width, share, width=width,
               color=SELECTED_COLORS[1] if len(named) == 1 else None,
               label=f"{name + ': ' if name else ''}routed patches with ink")
    for page in sorted({float(s["page_ink_share"]) for s in named.values()}):
        ax.axhline(page, color="black", linestyle="--", linewidth=1.2,
                   label=f"ink patches on the page ({page:.2f})")
    only = next(iter(named.values()))
    if len(named) == 1 and "ink_coverage" in only:
        ax.plot(x, np.asarray(only["ink_coverage"], np.float64), "o", color="#4c72b0",
                markersize=4, label="share of ink patches routed")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1.02)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _suptitle(fig, title or "Do the routers pick the ink? Routed-patch ink share per layer", 11)
    return _save(fig, path, dpi)


def plot_image_routing(values, patches, path: str, *, patch_size: int,
                       grid_hw: tuple[int, int] | None = None, image=None,
                       layer_labels: Sequence[Any] | None = None, title: str | None = None,
                       ncols: int | None = None, panel_inches: float = 2.6,
                       dpi: int = 100) -> str:
    """Routing over an image, one panel per layer: `values` [L, n] (bool routed, or lam) in the
    order of `patches` [n, 2 + p*p*C] are placed on their cells by the patches' (row, column)
    ids (place_patches) and drawn over the page rebuilt from the pixels (patch_image; or
    `image`, which must cover the grid at p pixels per patch). Returns path."""
    v = _as_2d(values, "values")
    grid = place_patches(v, patches, grid_hw, fill=False if v.dtype == bool else 0.0)
    num_layers, rows, cols = grid.shape
    if image is None:
        image = patch_image(patches, patch_size, (rows, cols))
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    return plot_patch_routing(grid.reshape(num_layers, rows * cols), (rows, cols), path,
                              image=image, layer_labels=layer_labels, title=title, ncols=ncols,
                              panel_inches=panel_inches, dpi=dpi)


# --------------------------------------------------------------------------------------- audio


def audio_routing_strips(values, num_frames: int, subsampling: int = SUBSAMPLING) -> np.ndarray:
    """Encoder-token values on the input frame axis: [L, n] -> [L, num_frames].

    The 4x convolutional subsampling (two stride-2 convolutions) makes encoder token j from
    the frames around 4j: token j is drawn over frames [4j, 4j + 4) (the last token's span is
    cut at num_frames). n must be ceil(num_frames / subsampling)."""
    v = _as_2d(values, "values")
    n = v.shape[1]
    if subsampling < 1 or n != -(-int(num_frames) // subsampling):
        raise ValueError(f"{n} encoder tokens do not match {num_frames} frames at "
                         f"{subsampling}x subsampling (expected "
                         f"{-(-int(num_frames) // max(subsampling, 1))}).")
    return np.repeat(v, subsampling, axis=1)[:, :int(num_frames)]


def plot_audio_routing(values, frames, path: str, *, frame_step_ms: float = 10.0,
                       subsampling: int = SUBSAMPLING,
                       layer_labels: Sequence[Any] | None = None, title: str | None = None,
                       kind: str | None = None, figsize: tuple[float, float] | None = None,
                       dpi: int = 100) -> str:
    """Routing over time: the log-mel spectrogram on top, one strip per encoder layer under it
    (routed: red, adapter only: light grey; or lam), all on one time axis in seconds.

    values: [L, n] per encoder token (n = ceil(T / subsampling)); frames: the model's input
    [T, 1 + mel] (column 0 = 1-based frame index, 0 = padding: shown grey). Returns path."""
    import matplotlib
    from matplotlib.colors import BoundaryNorm, ListedColormap

    f = np.asarray(frames, np.float32)
    if f.ndim == 3 and f.shape[0] == 1:
        f = f[0]
    if f.ndim != 2 or f.shape[1] < 2:
        raise ValueError(f"frames must be [T, 1 + mel] (frame index, log-mel), got shape "
                         f"{f.shape}.")
    v = _as_2d(values, "values")
    num_layers = v.shape[0]
    T = f.shape[0]
    strips = audio_routing_strips(v, T, subsampling)
    kind = _values_kind(v, kind)
    labels = _layer_labels(layer_labels, num_layers)
    real = f[:, 0] > 0
    step = frame_step_ms / 1000.0
    seconds = T * step
    if figsize is None:
        figsize = (float(np.clip(3.0 + 0.9 * seconds, 7.0, 18.0)),
                   float(np.clip(2.6 + 0.22 * num_layers, 3.6, 11.0)))
    fig = _figure(figsize, dpi)
    grid = fig.add_gridspec(2, 1, height_ratios=[1.0, max(1.0, 0.12 * num_layers)])
    ax_spec = fig.add_subplot(grid[0])
    ax = fig.add_subplot(grid[1], sharex=ax_spec)
    mel = np.ma.masked_array(f[:, 1:].T, mask=np.broadcast_to(~real[None], f[:, 1:].T.shape))
    spec = ax_spec.imshow(mel, aspect="auto", origin="lower", interpolation="nearest",
                          extent=(0, seconds, 0, f.shape[1] - 1),
                          cmap=matplotlib.colormaps["magma"].with_extremes(bad=PADDING_COLOR))
    ax_spec.set_ylabel("mel bin", fontsize=8)
    ax_spec.tick_params(labelsize=7, labelbottom=False)
    fig.colorbar(spec, ax=ax_spec, pad=0.01, fraction=0.03).set_label("log-mel", fontsize=8)
    data = np.ma.masked_array(strips.astype(np.float64),
                              mask=np.broadcast_to(~real[None], strips.shape))
    if kind == "selected":
        cmap = ListedColormap(SELECTED_COLORS).with_extremes(bad=PADDING_COLOR)
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap,
                       norm=BoundaryNorm([-0.5, 0.5, 1.5], 2),
                       extent=(0, seconds, num_layers - 0.5, -0.5))
    else:
        lim = (0.0, 1.0) if kind == "lam" else (float(np.min(v)), float(np.max(v)))
        im = ax.imshow(data, aspect="auto", interpolation="nearest",
                       cmap=matplotlib.colormaps[LAM_CMAP].with_extremes(bad=PADDING_COLOR),
                       vmin=lim[0], vmax=lim[1], extent=(0, seconds, num_layers - 0.5, -0.5))
    ystep = _nice_step(num_layers, 32)
    ax.set_yticks(np.arange(0, num_layers, ystep))
    ax.set_yticklabels(labels[::ystep], fontsize=7)
    ax.set_ylabel("encoder layer", fontsize=8)
    ax.set_xlabel(f"time (s); encoder token = {subsampling} frames = "
                  f"{subsampling * frame_step_ms:g} ms", fontsize=8)
    ax.tick_params(labelsize=7)
    cbar = fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03)
    if kind == "selected":
        cbar.set_ticks([0, 1])
        cbar.set_ticklabels(["adapter\nonly", "routed"], fontsize=7)
    else:
        cbar.set_label("router $\\lambda$" if kind == "lam" else "router score", fontsize=8)
    _suptitle(fig, title or "CoDA routing over time (top: log-mel input)", 11)
    return _save(fig, path, dpi)
