"""The experiments' summary figures: quality against measured speedup (paper Figure 5; the
demo and `coda compare`), the share of routed patches that hold ink per layer (`coda compare`,
`coda visualize`), and one input's routed tokens with an evidence span boxed (paper Figure 7;
the demo)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from coda_flax.viz.draw import SELECTED_COLORS, _figure, _layer_labels, _save, _suptitle

def label_positions(xs, ys, min_gap, top: float | None = None):
    """Vertical label positions, at least min_gap apart and in the order of ys (ties: of xs, so
    that leader lines to a label column on the right do not cross): pushed up from their points,
    then (when top is given) pushed down below top, so a crowd of points near the top of the
    plot keeps its labels inside it."""
    order = np.lexsort((np.asarray(xs, np.float64), np.asarray(ys, np.float64)))
    placed = np.array(ys, np.float64)
    last = -np.inf
    for i in order:
        placed[i] = max(placed[i], last + min_gap)
        last = placed[i]
    if top is not None:
        last = top + min_gap
        for i in order[::-1]:
            placed[i] = min(placed[i], last - min_gap)
            last = placed[i]
    return placed


def plot_speed_quality(points: dict, path: str, *, floor: float | None = None,
                       floor_label: str = "", ceiling: float | None = None,
                       ceiling_label: str = "",
                       xlabel: str = "measured encoder speedup over the Parallel Adapter",
                       ylabel: str = "validation accuracy, %", title: str = ""):
    """Quality (± SE) against measured speedup, one point per variant (paper Figure 5); labels
    sit in a column to the right of the points, spaced so they never overlap.

    Args:
      points: {variant: (speedup, quality %, standard error %)}; a name containing
        parallel_adapter / full_finetuning is drawn as a square, first_k / sigmoid as a cross.
      path: the PNG to write.
      floor / floor_label: an optional dashed reference line (e.g. the majority answer, %).
      ceiling / ceiling_label: an optional dotted line (e.g. the best possible without routing).
    """
    import matplotlib

    names = list(points)
    xs = np.array([points[k][0] for k in names], np.float64)
    ys = np.array([points[k][1] for k in names], np.float64)
    se = np.array([points[k][2] for k in names], np.float64)
    fig = _figure((8, 5.5), 120)
    ax = fig.add_subplot(1, 1, 1)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(names) > len(colors):        # one readable colour per variant: tab20b's dark shades
        tab20b = matplotlib.colormaps["tab20b"]
        colors = colors + [tab20b(i) for i in range(0, 20, 4)]
    refs = [v for v in (floor, ceiling) if v is not None]
    lo = min([float(ys.min() - se.max())] + refs) - 5
    hi = max([float(ys.max() + se.max())] + refs) + 5
    gap = (hi - lo) / 26
    top = min(hi + 2 * gap, 105) if ys.max() <= 100 else hi + 2 * gap    # (an error rate > 100%)
    label_y = label_positions(xs, ys, gap, top=top - gap)
    x_text = float(xs.max()) + 0.25 * max(float(np.ptp(xs)), 0.5)
    for i, name in enumerate(names):
        marker = "s" if name in ("parallel_adapter", "full_finetuning") else (
            "x" if "first_k" in name or "sigmoid" in name else "o")
        c = colors[i % len(colors)]
        ax.errorbar(xs[i], ys[i], yerr=se[i], fmt=marker, color=c, ms=7, capsize=3)
        ax.annotate(name, (xs[i], ys[i]), xytext=(x_text, label_y[i]), textcoords="data",
                    fontsize=8, color=c, va="center",
                    arrowprops=dict(arrowstyle="-", color=c, lw=0.5, alpha=0.6))
    if floor is not None:
        ax.axhline(floor, color="gray", lw=0.8, ls="--", label=floor_label)
    if ceiling is not None:
        ax.axhline(ceiling, color="tab:red", lw=0.8, ls=":", label=ceiling_label)
    ax.set_xlim(min(float(xs.min()), 1.0) - 0.1, x_text + 0.6 * max(float(np.ptp(xs)), 0.5))
    ax.set_ylim(lo, top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Speed-quality trade-off (cf. paper Figure 5); bars = standard error")
    if refs:
        ax.legend(loc="lower left", fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def plot_span_routing(selected, pieces, span, path: str, title: str = ""):
    """Figure 7 for one input: layers x tokens, routed cells dark, one span of tokens (the
    evidence, e.g. the needle) boxed and its token labels in bold blue.

    Args:
      selected: [L, n] bool, routed positions per encoder layer.
      pieces: the n token strings (x tick labels).
      span: (start, end) token offsets of the boxed span.
    Returns the path written."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    selected = np.asarray(selected, bool)
    num_layers, n = selected.shape
    if len(pieces) != n:
        raise ValueError(f"{len(pieces)} token labels for {n} positions")
    start, end = span
    fig = _figure((max(6.0, 0.13 * n + 1.5), 0.45 * num_layers + 1.8), 110)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(selected.astype(float), aspect="auto", interpolation="nearest", vmin=0, vmax=1,
              cmap=ListedColormap(["#f0f0f0", "#b2182b"]))
    ax.add_patch(Rectangle((start - 0.5, -0.5), end - start, num_layers, fill=False,
                           edgecolor="#2166ac", lw=2.0))
    ax.set_xticks(range(n))
    ax.set_xticklabels([p.strip() or "_" for p in pieces], rotation=90, fontsize=6)
    for i, label in enumerate(ax.get_xticklabels()):
        if start <= i < end:
            label.set_color("#2166ac")
            label.set_fontweight("bold")
    ax.set_yticks(range(num_layers))
    ax.set_yticklabels([f"layer {i}" for i in range(num_layers)], fontsize=8)
    ax.set_title(title or "routed tokens per layer", fontsize=9)
    ax.set_xlabel("input token (dark = routed through the frozen layer, light = adapter only)",
                  fontsize=8)
    fig.savefig(path, dpi=110)
    return path


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
