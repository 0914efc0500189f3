"""Pix2Struct variable-resolution patching (Lee et al. 2022, "Pix2Struct", section 2.2), the input
of CoDA's vision models (Lei et al. 2023, section 6: n = 4096 image patches).

Instead of resizing every image to one square resolution (ViT), Pix2Struct rescales the image,
keeping its aspect ratio, to the largest size whose grid of p x p patches fits in max_patches:

    scale = sqrt(max_patches * (p / H) * (p / W))
    rows  = max(min(floor(scale * H / p), max_patches), 1)
    cols  = max(min(floor(scale * W / p), max_patches), 1)          rows * cols <= max_patches

(computed exactly in integers: scale * H / p = sqrt(max_patches * H / W), independent of p.)

The image is standardised per image ((x - mean) / max(std, 1 / sqrt(num_values)), over all
pixels and channels, on the original image as Pix2Struct does), resized to (rows * p, cols * p)
(bilinear, antialiased), cut into rows x cols patches in row-major order and each patch
flattened row-major with channels last. Every patch row of the result is

    [row id (1-based), column id (1-based), p * p * C pixel values]

and rows past rows * cols are zero: padding (the model recognises it by its row id 0). The
result has exactly max_patches rows, so seqio's feature converter pads nothing further.

    patchify(image, max_patches)        -> float32 [max_patches, 2 + p*p*C]
    patch_grid(patches)                 -> (rows, cols) used
    unpatchify(patches)                 -> the (standardised, resized) image, for plots
    patch_ink(image, max_patches)       -> bool [max_patches]: patches with ink on a white page
    render_header(image, text, font)    -> Pix2Struct's VQA input: the question rendered above

Pure numpy + PIL: the TensorFlow wrapper for tf.data (tf_patchify) lives with the seqio tasks in
coda_flax.tasks.vision, so this module never imports coda_flax.tasks.

Tested against transformers' Pix2StructImageProcessor (tests/test_patches.py). uint8 inputs are
scaled to [0, 1] first (Pix2Struct's tf.image.convert_image_dtype); transformers standardises raw
0-255 values, which gives the same result except for near-constant images, where the std floor
1/sqrt(N) acts on a different scale.
"""

from __future__ import annotations

import math
import textwrap
from typing import Optional

import numpy as np

__all__ = ["grid_size", "patchify", "patch_grid", "unpatchify", "patch_ink", "render_header",
           "render_text", "standardize", "to_float_image", "check_sizes"]


# ----------------------------------------------------------------------------- input checks

def check_sizes(max_patches: int, patch_size: int) -> None:
    """Raises ValueError unless max_patches and patch_size are integers >= 1."""
    if int(max_patches) != max_patches or max_patches < 1:
        raise ValueError(f"max_patches must be an integer >= 1, got {max_patches!r}.")
    if int(patch_size) != patch_size or patch_size < 1:
        raise ValueError(f"patch_size must be an integer >= 1, got {patch_size!r}.")


def to_float_image(image, channels: Optional[int] = None) -> np.ndarray:
    """HxW or HxWxC image (uint8 / other unsigned ints / bool / float) -> float32 HxWxC.

    Unsigned integers are scaled to [0, 1] by their maximum (as tf.image.convert_image_dtype),
    floats are kept as they are. channels (optional) converts: grey -> RGB by repetition, RGBA ->
    RGB by dropping alpha, RGB -> grey by ITU-R 601-2 luma (as PIL's convert("L"))."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"image must be HxW (grey) or HxWxC, got shape {arr.shape}.")
    if 0 in arr.shape:
        raise ValueError(f"image is empty: shape {arr.shape}.")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.unsignedinteger):
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    else:
        raise ValueError(f"image dtype must be unsigned integer, bool or float, got {arr.dtype} "
                         f"(convert signed images to float first).")
    if channels is not None and arr.shape[2] != channels:
        arr = _convert_channels(arr, channels)
    return arr


def _convert_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    have = arr.shape[2]
    if channels == 3 and have == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 3 and have == 4:
        return arr[:, :, :3]
    if channels == 1 and have in (3, 4):
        rgb = arr[:, :, :3]
        return (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
    raise ValueError(f"cannot convert an image with {have} channels to {channels} channels "
                     f"(supported: grey -> RGB, RGBA -> RGB, RGB(A) -> grey).")


# ----------------------------------------------------------------------------- geometry

def grid_size(height: int, width: int, max_patches: int, patch_size: int = 16) -> tuple[int, int]:
    """(rows, cols) of the patch grid Pix2Struct resizes an H x W image to (module docstring)."""
    check_sizes(max_patches, patch_size)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}.")
    # scale * H / p = sqrt(max_patches * H / W), and floor(sqrt(x)) = isqrt(floor(x)): exact
    # integers, where float code (Pix2Struct's, transformers') can round an exact root such as
    # sqrt(25) down to 4.999... and lose a row or column.
    rows = max(min(math.isqrt(max_patches * height // width), max_patches), 1)
    cols = max(min(math.isqrt(max_patches * width // height), max_patches), 1)
    return rows, cols


def standardize(image: np.ndarray) -> np.ndarray:
    """Per-image standardisation (tf.image.per_image_standardization): over all values,
    (x - mean) / max(std, 1 / sqrt(N))."""
    image = np.asarray(image, np.float32)
    mean = image.mean(dtype=np.float64)
    std = image.std(dtype=np.float64)
    return ((image - mean) / max(std, 1.0 / math.sqrt(image.size))).astype(np.float32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, antialiased (PIL's BILINEAR filter; torch's interpolate(antialias=True))."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c]))
                         .resize((width, height), Image.Resampling.BILINEAR), np.float32)
              for c in range(image.shape[2])]
    return np.stack(planes, axis=-1)


# ----------------------------------------------------------------------------- patches

def patchify(image, max_patches: int, patch_size: int = 16, normalize: bool = True,
             channels: Optional[int] = None) -> np.ndarray:
    """Pix2Struct patches of one image: float32 [max_patches, 2 + p*p*C] (module docstring).

    image: HxW or HxWxC, uint8 (scaled to [0, 1]) or float. channels: convert to this many
    channels first (3: grey -> RGB, RGBA -> RGB); None keeps the image's own. normalize: per-image
    standardisation (Pix2Struct); False keeps the pixel values."""
    check_sizes(max_patches, patch_size)
    image = to_float_image(image, channels)
    if normalize:
        image = standardize(image)
    height, width, depth = image.shape
    rows, cols = grid_size(height, width, max_patches, patch_size)
    p = patch_size
    image = _resize(image, rows * p, cols * p)
    pixels = image.reshape(rows, p, cols, p, depth).transpose(0, 2, 1, 3, 4)
    pixels = pixels.reshape(rows * cols, p * p * depth)
    out = np.zeros((max_patches, 2 + p * p * depth), np.float32)
    out[:rows * cols, 0] = np.repeat(np.arange(1, rows + 1), cols)
    out[:rows * cols, 1] = np.tile(np.arange(1, cols + 1), rows)
    out[:rows * cols, 2:] = pixels
    return out


def patch_grid(patches) -> tuple[int, int]:
    """(rows, cols) of the grid patchify used, read from the row / column ids; (0, 0) when every
    row is padding."""
    patches = np.asarray(patches)
    if patches.ndim != 2 or patches.shape[1] < 2:
        raise ValueError(f"patches must be [n, 2 + p*p*C], got shape {patches.shape}.")
    real = patches[:, 0] > 0
    if not real.any():
        return 0, 0
    return int(patches[real, 0].max()), int(patches[real, 1].max())


def unpatchify(patches, rows: Optional[int] = None, cols: Optional[int] = None,
               patch_size: int = 16, channels: Optional[int] = None) -> np.ndarray:
    """The image the patches were cut from (after standardisation and resizing): float32
    [rows * p, cols * p, C]. rows / cols default to patch_grid(patches); channels to
    (dim - 2) / p^2. Patches are placed by their ids; padding rows are ignored."""
    patches = np.asarray(patches, np.float32)
    grid = patch_grid(patches)
    rows = grid[0] if rows is None else rows
    cols = grid[1] if cols is None else cols
    p = patch_size
    dim = patches.shape[1] - 2
    if channels is None:
        if dim % (p * p):
            raise ValueError(f"patch width {dim} is not a multiple of patch_size^2 = {p * p}; "
                             f"pass the patch_size used by patchify.")
        channels = dim // (p * p)
    if dim != p * p * channels:
        raise ValueError(f"patch width {dim} != patch_size^2 * channels = {p * p * channels}.")
    image = np.zeros((rows * p, cols * p, channels), np.float32)
    for row in patches[patches[:, 0] > 0]:
        r, c = int(row[0]) - 1, int(row[1]) - 1
        if r >= rows or c >= cols:
            raise ValueError(f"patch id ({r + 1}, {c + 1}) outside the {rows} x {cols} grid.")
        image[r * p:(r + 1) * p, c * p:(c + 1) * p] = row[2:].reshape(p, p, channels)
    return image


def patch_ink(image, max_patches: int, patch_size: int = 16, threshold: float = 0.5) -> np.ndarray:
    """Which patches of patchify(image, max_patches, patch_size) contain ink: bool [max_patches].

    A pixel is ink when its grey level (mean over channels, in [0, 1]: uint8 is divided by 255,
    floats are taken as [0, 1]) is below threshold (dark on a white page). Ink is looked up at the
    original resolution (the resize would blur thin strokes): original pixel (y, x) lies in patch
    (floor((y + 0.5) * rows / H), floor((x + 0.5) * cols / W)), where the resize puts its centre.
    Padding rows are False."""
    check_sizes(max_patches, patch_size)
    grey = to_float_image(image).mean(axis=2)
    height, width = grey.shape
    rows, cols = grid_size(height, width, max_patches, patch_size)
    row_of = np.minimum(((np.arange(height) + 0.5) * rows / height).astype(np.int64), rows - 1)
    col_of = np.minimum(((np.arange(width) + 0.5) * cols / width).astype(np.int64), cols - 1)
    ink = np.zeros((rows, cols), bool)
    ys, xs = np.nonzero(grey < threshold)
    ink[row_of[ys], col_of[xs]] = True
    out = np.zeros(max_patches, bool)
    out[:rows * cols] = ink.reshape(-1)
    return out


# ----------------------------------------------------------------------------- VQA header

def render_text(text: str, font_path: str, text_size: int = 36, wrap_width: int = 80,
                padding: int = 5):
    """Pix2Struct's text rendering: black text wrapped at wrap_width characters on a white
    canvas with `padding` pixels on each side (a PIL RGB image)."""
    from PIL import Image, ImageDraw, ImageFont

    wrapped = "\n".join(textwrap.TextWrapper(width=wrap_width).wrap(text=text))
    font = ImageFont.truetype(font_path, encoding="UTF-8", size=text_size)
    _, _, w, h = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), wrapped, font=font)
    canvas = Image.new("RGB", (w + 2 * padding, h + 2 * padding), "white")
    ImageDraw.Draw(canvas).text((padding, padding), wrapped, fill="black", font=font)
    return canvas


def render_header(image, text: str, font_path: str, text_size: int = 36,
                  wrap_width: int = 80) -> np.ndarray:
    """Pix2Struct's VQA input (section 2.5): the question rendered as a header above the image.
    Both parts are scaled to the wider one's width (PIL bicubic). Returns uint8 HxWx3.

    image: HxW(xC) uint8 or float in [0, 1]; font_path: a TrueType font (DejaVuSans.ttf from
    coda_flax.datasets.vision.find_fonts)."""
    from PIL import Image

    arr = to_float_image(image, channels=3)
    pil = Image.fromarray(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8))
    header = render_text(text, font_path, text_size=text_size, wrap_width=wrap_width)
    width = max(header.width, pil.width)
    height = int(pil.height * (width / pil.width))
    header_height = int(header.height * (width / header.width))
    out = Image.new("RGB", (width, height + header_height), "white")
    out.paste(header.resize((width, header_height), Image.Resampling.BICUBIC), (0, 0))
    out.paste(pil.resize((width, height), Image.Resampling.BICUBIC), (0, header_height))
    return np.asarray(out, np.uint8)
