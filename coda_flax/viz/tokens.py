"""Routing over tokens: the layers x tokens heatmap and the text coloured by how many layers
route each token (HTML + PNG)."""

from __future__ import annotations

import html
import os
from typing import Any, Sequence

import numpy as np

from coda_flax.viz.draw import (COUNT_CMAP, LAM_CMAP, PADDING_COLOR, SELECTED_COLORS,
                                _as_2d, _check_tokens, _figure, _layer_labels, _nice_step,
                                _save, _valid_mask, _values_kind, display_token)

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
