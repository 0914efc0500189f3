"""Routing over images and audio: patches on their grid (one panel per layer), and encoder
frames as strips under the log-mel spectrogram on a common time axis."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from coda_flax.frontends.patch_grid import patch_image, place_patches
from coda_flax.inputs import SUBSAMPLING
from coda_flax.viz.draw import (LAM_CMAP, PADDING_COLOR, SELECTED_COLORS, _as_2d, _figure,
                                _layer_labels, _nice_step, _save, _suptitle, _values_kind)

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
