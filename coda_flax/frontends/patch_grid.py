"""Where Pix2Struct patches sit on the page, the page rebuilt from them, and which patches
hold ink.

Patches are [n, 2 + p*p*C]: row id, column id (1-based, 0 = padding), pixels.

    patch_grid_positions(patches) -> (rows [n], cols [n]) 0-based cells (-1: padding), grid_hw
    place_patches(values [L, n], patches) -> [L, rows, cols]  values put on their patch cells
    patch_image(patches, patch_size) -> [H, W, C] in [0, 1]  the page, rebuilt from the pixels
    patch_ink_from_patches(patches, patch_size)  -> bool [n]  patches with ink (dark pixels)
"""

from __future__ import annotations

import numpy as np

__all__ = ["INK_THRESHOLD", "patch_grid_positions", "place_patches", "patch_image",
           "patch_ink_from_patches"]

INK_THRESHOLD = 0.5                            # grey level below which a pixel is ink


def _patches_2d(patches) -> np.ndarray:
    arr = np.asarray(patches)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"patches must be [n, 2 + p*p*C] (row id, column id, pixels), got "
                         f"shape {arr.shape}.")
    return arr


def patch_grid_positions(patches, grid_hw: tuple[int, int] | None = None):
    """Where each patch sits: (rows [n], cols [n]) 0-based cells, -1 for padding, and
    grid_hw = (rows, cols) of the grid (default: the largest row / column id).

    patches: [n, 2 + ...] (only the two id columns are read; [n, 2] ids work too). Row id 0
    marks padding. Raises if a patch lies outside grid_hw or two patches share a cell.
    """
    arr = _patches_2d(patches)
    ids = np.rint(arr[:, :2]).astype(np.int64)
    real = ids[:, 0] > 0
    if grid_hw is None:
        grid_hw = ((int(ids[real, 0].max()), int(ids[real, 1].max())) if real.any()
                   else (0, 0))
    rows_n, cols_n = (int(x) for x in grid_hw)
    rows = np.where(real, ids[:, 0] - 1, -1)
    cols = np.where(real, ids[:, 1] - 1, -1)
    if real.any():
        if (rows[real] >= rows_n).any() or (cols[real] >= cols_n).any() or (cols[real] < 0).any():
            raise ValueError(f"patch ids outside the {rows_n} x {cols_n} grid (row ids "
                             f"{ids[real, 0].min()}..{ids[real, 0].max()}, column ids "
                             f"{ids[real, 1].min()}..{ids[real, 1].max()}).")
        cells = rows[real] * cols_n + cols[real]
        if len(np.unique(cells)) != len(cells):
            raise ValueError("two patches have the same (row, column) id.")
    return rows, cols, (rows_n, cols_n)


def place_patches(values, patches, grid_hw: tuple[int, int] | None = None, fill=0):
    """Puts per-patch values on the image grid by the patches' own (row, column) ids.

    values: [n] or [L, n] (bool or float), in the order of `patches` ([n, 2 + ...]).
    Returns [rows, cols] or [L, rows, cols] of values' dtype; cells without a patch (and
    padding patches) get `fill`.
    """
    v = np.asarray(values)
    squeeze = v.ndim == 1
    if squeeze:
        v = v[None]
    rows, cols, (rows_n, cols_n) = patch_grid_positions(patches, grid_hw)
    if v.ndim != 2 or v.shape[1] != rows.shape[0]:
        raise ValueError(f"values must be [n] or [layers, n] with n = {rows.shape[0]} patches, "
                         f"got shape {np.shape(values)}.")
    grid = np.full((v.shape[0], rows_n, cols_n), fill, dtype=v.dtype)
    real = rows >= 0
    grid[:, rows[real], cols[real]] = v[:, real]
    return grid[0] if squeeze else grid


def _unpatchify(patches, patch_size: int, channels: int, grid_hw) -> np.ndarray:
    """The image [rows * p, cols * p, C] from patch pixels (row-major p x p x C per patch)."""
    arr = _patches_2d(patches).astype(np.float32)
    rows, cols, (rows_n, cols_n) = patch_grid_positions(arr, grid_hw)
    p = patch_size
    image = np.zeros((rows_n * p, cols_n * p, channels), np.float32)
    for i in np.flatnonzero(rows >= 0):
        r, c = rows[i], cols[i]
        image[r * p:(r + 1) * p, c * p:(c + 1) * p] = arr[i, 2:].reshape(p, p, channels)
    return image


def _patch_channels(patches, patch_size: int) -> int:
    dim = _patches_2d(patches).shape[1] - 2
    if dim < 1 or dim % (patch_size * patch_size):
        raise ValueError(f"patch width {dim} is not a multiple of patch_size^2 = "
                         f"{patch_size * patch_size}; pass the model's patch_size.")
    return dim // (patch_size * patch_size)


def _minmax(x: np.ndarray, mask=None) -> np.ndarray:
    """x rescaled to [0, 1] by the min / max over mask (patchify standardises each image, an
    affine map: min-max undoes it for a page with both black and white pixels)."""
    ref = x if mask is None else x[mask]
    if ref.size == 0:
        return np.zeros_like(x, np.float32)
    lo, hi = float(ref.min()), float(ref.max())
    return np.clip((x - lo) / (hi - lo), 0, 1).astype(np.float32) if hi > lo else \
        np.ones_like(x, np.float32)


def patch_image(patches, patch_size: int, grid_hw: tuple[int, int] | None = None,
                channels: int | None = None) -> np.ndarray:
    """The page the patches were cut from, for drawing: float32 [rows * p, cols * p, C] in
    [0, 1] (the standardised pixels min-max rescaled over the real patches; cells without a
    patch are white). Uses coda_flax.frontends.patches.unpatchify when it is there."""
    arr = _patches_2d(patches).astype(np.float32)
    channels = channels or _patch_channels(arr, patch_size)
    _, _, grid_hw = patch_grid_positions(arr, grid_hw)
    try:
        from coda_flax.frontends.patches import unpatchify
        image = unpatchify(arr, grid_hw[0], grid_hw[1], patch_size=patch_size,
                           channels=channels)
    except ImportError:
        image = _unpatchify(arr, patch_size, channels, grid_hw)
    present = place_patches(np.ones(arr.shape[0], bool), arr, grid_hw, fill=False)
    cover = np.repeat(np.repeat(present, patch_size, 0), patch_size, 1)      # [H, W]
    out = _minmax(image, np.broadcast_to(cover[..., None], image.shape))
    out[~cover] = 1.0
    return out


def patch_ink_from_patches(patches, patch_size: int, threshold: float = INK_THRESHOLD,
                           channels: int | None = None) -> np.ndarray:
    """bool [n]: patches holding ink, from their own pixels.

    The pixels are rescaled to [0, 1] over all real patches (patch_image: undoes patchify's
    standardisation on a page with white paper and black ink); a patch has ink when some pixel's
    grey level (mean over channels) is below `threshold`. Padding patches are False. The
    patches are resized, which greys thin strokes: coda_flax.frontends.patches.patch_ink, which
    looks at the original image, is the better mask when the image is at hand."""
    arr = _patches_2d(patches).astype(np.float32)
    channels = channels or _patch_channels(arr, patch_size)
    real = arr[:, 0] > 0
    grey = arr[:, 2:].reshape(arr.shape[0], -1, channels).mean(axis=2)      # [n, p*p]
    grey = _minmax(grey, np.broadcast_to(real[:, None], grey.shape))
    return (grey < threshold).any(axis=1) & real
