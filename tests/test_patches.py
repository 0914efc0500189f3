"""coda_flax.frontends.patches: Pix2Struct patching against an integer re-derivation of the
grid, numpy re-derivations of patch pixels, and transformers' Pix2StructImageProcessor as an
external oracle."""

import math
import warnings

import numpy as np
import pytest

from coda_flax.frontends import patches as P


def _img(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _largest_root(num, den):
    """Largest r >= 0 with r^2 <= num / den, by counting up (no square roots)."""
    r = 0
    while (r + 1) ** 2 * den <= num:
        r += 1
    return r


def _reference_grid(h, w, max_patches):
    """floor(scale * H / p) = floor(sqrt(max_patches * H / W)), independent of the patch size."""
    rows = max(min(_largest_root(max_patches * h, w), max_patches), 1)
    cols = max(min(_largest_root(max_patches * w, h), max_patches), 1)
    return rows, cols


def _float_grid(h, w, max_patches, p):
    """Pix2Struct's / transformers' floating-point form of the same formula."""
    scale = math.sqrt(max_patches * (p / h) * (p / w))
    return (max(min(math.floor(scale * h / p), max_patches), 1),
            max(min(math.floor(scale * w / p), max_patches), 1))


# ----------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("patch_size", [16, 7])
def test_grid_matches_integer_rederivation_over_aspect_ratios(patch_size):
    sizes = [1, 2, 3, 15, 16, 17, 31, 64, 100, 255, 256, 640, 1000, 3000]
    for max_patches in (1, 2, 5, 16, 50, 256, 1000, 4096):
        for h in sizes:
            for w in sizes:
                rows, cols = P.grid_size(h, w, max_patches, patch_size)
                assert (rows, cols) == _reference_grid(h, w, max_patches), (h, w, max_patches)
                assert 1 <= rows and 1 <= cols and rows * cols <= max_patches


def test_float_formula_agrees_except_at_exact_roots():
    """Where max_patches * H / W is a perfect square the float formula may round sqrt down by
    one (640 x 1000, 16 patches of 7 px: sqrt(25) -> 4.999...); the exact grid keeps it."""
    assert _float_grid(640, 1000, 16, 7) == (3, 4)
    assert P.grid_size(640, 1000, 16, 7) == (3, 5)
    sizes = [3, 16, 17, 64, 100, 255, 640, 1000]
    for max_patches in (5, 16, 256, 4096):
        for h in sizes:
            for w in sizes:
                for p in (7, 16):
                    exact, approx = P.grid_size(h, w, max_patches, p), _float_grid(h, w,
                                                                                   max_patches, p)
                    for e, a, num, den in ((exact[0], approx[0], max_patches * h, w),
                                           (exact[1], approx[1], max_patches * w, h)):
                        assert e == a or (e == a + 1 and e * e * den == num), (h, w, max_patches)


def test_grid_preserves_aspect_ratio():
    for h, w in [(100, 400), (400, 100), (300, 300), (1000, 37), (123, 457)]:
        rows, cols = P.grid_size(h, w, 2048)
        # floor() loses less than one patch per side
        assert rows <= math.sqrt(2048 * h / w) < rows + 1
        assert cols <= math.sqrt(2048 * w / h) < cols + 1
        assert abs(math.log((rows / cols) / (h / w))) < 0.1


def test_square_image_fills_square_budget_exactly():
    assert P.grid_size(256, 256, 256) == (16, 16)
    assert P.grid_size(64, 64, 4096) == (64, 64)
    assert P.grid_size(10, 10_000, 16) == (1, 16)       # clamped: at least one row


# ----------------------------------------------------------------------------- patchify

def test_shape_ids_row_major_and_zero_padding():
    out = P.patchify(_img(40, 70), max_patches=20, patch_size=8)
    rows, cols = _reference_grid(40, 70, 20)
    n = rows * cols
    assert out.shape == (20, 2 + 8 * 8 * 3) and out.dtype == np.float32
    want_ids = [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]
    assert [tuple(x) for x in out[:n, :2].astype(int)] == want_ids
    assert np.all(out[n:] == 0)
    assert P.patch_grid(out) == (rows, cols)


def test_pixels_without_resize_match_numpy_slices():
    img = _img(32, 48)              # max_patches 6, p 16: scale 1, grid 2 x 3, no resize
    raw = P.patchify(img, 6, 16, normalize=False)
    assert P.patch_grid(raw) == (2, 3)
    for index, (r, c) in enumerate([(r, c) for r in range(2) for c in range(3)]):
        want = img[16 * r:16 * (r + 1), 16 * c:16 * (c + 1), :].reshape(-1) / 255.0
        np.testing.assert_allclose(raw[index, 2:], want, rtol=0, atol=1e-7)
        assert tuple(raw[index, :2]) == (r + 1, c + 1)
    x = img.astype(np.float64) / 255.0
    std = (x - x.mean()) / max(x.std(), 1 / math.sqrt(x.size))
    normed = P.patchify(img, 6, 16)
    np.testing.assert_allclose(normed[4, 2:], std[16:32, 16:32].reshape(-1), atol=1e-5)


def test_grey_and_channel_conversion():
    grey = _img(20, 30, 1)[:, :, 0]
    out = P.patchify(grey, 6, 10, normalize=False)
    assert out.shape == (6, 2 + 100)
    rgb = P.patchify(grey, 6, 10, normalize=False, channels=3)
    assert rgb.shape == (6, 2 + 300)
    np.testing.assert_array_equal(rgb[:, 2::3], out[:, 2:])            # channels last
    rgba = _img(20, 30, 4)
    np.testing.assert_array_equal(P.patchify(rgba, 6, 10, channels=3),
                                  P.patchify(rgba[:, :, :3], 6, 10))


def test_float_images_are_taken_as_they_are():
    img = _img(32, 32)
    np.testing.assert_allclose(P.patchify(img.astype(np.float32) / 255.0, 4, 16),
                               P.patchify(img, 4, 16), atol=1e-6)


def test_constant_image_is_zero_pixels_but_not_padding():
    out = P.patchify(np.full((32, 32), 255, np.uint8), 4)
    assert np.all(out[:, 2:] == 0) and np.all(out[:, 0] > 0)


def test_resized_grid_covers_rows_times_cols():
    img = _img(300, 170)
    out = P.patchify(img, 64)
    rows, cols = _reference_grid(300, 170, 64)
    back = P.unpatchify(out)
    assert back.shape == (rows * 16, cols * 16, 3)
    assert (out[:, 0] > 0).sum() == rows * cols


def test_unpatchify_round_trip_without_resize():
    img = _img(48, 32)
    out = P.patchify(img, 6, 16, normalize=False)
    np.testing.assert_allclose(P.unpatchify(out), img / 255.0, atol=1e-7)
    shuffled = out[np.random.default_rng(0).permutation(6)]          # placed by ids, not order
    np.testing.assert_allclose(P.unpatchify(shuffled), img / 255.0, atol=1e-7)


@pytest.mark.parametrize("bad, match", [
    (dict(image=np.zeros(5)), "HxW"),
    (dict(image=np.zeros((2, 3, 4, 5))), "HxW"),
    (dict(image=np.zeros((0, 5))), "empty"),
    (dict(image=np.zeros((4, 4)), max_patches=0), "max_patches"),
    (dict(image=np.zeros((4, 4)), patch_size=0), "patch_size"),
    (dict(image=np.zeros((4, 4), np.int32)), "dtype"),
    (dict(image=np.zeros((4, 4, 2)), channels=3), "channels"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    kwargs = dict(max_patches=4, patch_size=2)
    kwargs.update(bad)
    with pytest.raises(ValueError, match=match):
        P.patchify(**kwargs)


# ----------------------------------------------------------------------------- ink

def test_patch_ink_without_resize_equals_blocks_with_dark_pixels():
    page = np.full((32, 48), 255, np.uint8)
    page[3, 5] = 0                   # patch (0, 0)
    page[20:22, 40:47] = 30          # patch (1, 2)
    page[10, 20] = 200               # light grey: not ink
    ink = P.patch_ink(page, 8, 16)
    assert ink.shape == (8,)
    assert np.flatnonzero(ink).tolist() == [0, 5]


def test_patch_ink_with_resize_uses_pixel_centres():
    page = np.full((100, 100, 3), 255, np.uint8)
    page[30, 80] = 0                  # 4 x 4 grid: row floor(30.5 * 4 / 100) = 1, col 3
    page[99, 0] = 0                   # row 3, col 0
    ink = P.patch_ink(page, 16)
    assert np.flatnonzero(ink).tolist() == [1 * 4 + 3, 3 * 4 + 0]
    assert not P.patch_ink(np.full((100, 100), 255, np.uint8), 20).any()
    assert P.patch_ink(np.zeros((100, 100), np.uint8), 20).sum() == 16   # padding stays False


# ----------------------------------------------------------------------------- TensorFlow

def test_tf_patchify_in_a_dataset():
    import tensorflow as tf

    from coda_flax.tasks.vision import tf_patchify
    images = np.stack([_img(40, 56, seed=s) for s in range(2)])
    ds = tf.data.Dataset.from_tensor_slices(images).map(lambda im: tf_patchify(im, 12, 8))
    assert ds.element_spec.shape.as_list() == [12, 2 + 8 * 8 * 3]
    for got, img in zip(ds.as_numpy_iterator(), images):
        np.testing.assert_array_equal(got, P.patchify(img, 12, 8, channels=3))


# ----------------------------------------------------------------------------- transformers

def _hf_processor():
    import transformers as tr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from transformers.models.pix2struct.image_processing_pil_pix2struct import (
                Pix2StructImageProcessorPil as Processor)
        except ImportError:
            Processor = getattr(tr, "Pix2StructImageProcessor", None)
    assert Processor is not None, (f"transformers {tr.__version__} has no Pix2Struct image "
                                   f"processor: the oracle of these tests is gone")
    return Processor()


@pytest.mark.parametrize("h, w, max_patches", [
    (64, 64, 16), (100, 37, 50), (37, 250, 64), (300, 200, 256), (32, 32, 4), (20, 500, 30),
    (256, 256, 256), (17, 23, 2048)])
def test_matches_transformers_pix2struct_processor(h, w, max_patches):
    proc = _hf_processor()
    img = _img(h, w, seed=h * w)
    ref = proc(images=img, max_patches=max_patches, return_tensors="np")["flattened_patches"][0]
    ours = P.patchify(img, max_patches)
    assert ref.shape == ours.shape
    np.testing.assert_array_equal(ref[:, :2], ours[:, :2])
    np.testing.assert_allclose(ours, ref, atol=2e-4)   # standardised units; PIL vs torch resize


def _font():
    """No skip: find_fonts falls back to the DejaVu copy bundled with matplotlib (a test
    dependency), so a missing font means a broken environment or a broken find_fonts."""
    from coda_flax.datasets.vision import find_fonts
    return find_fonts(download=False, log=lambda s: None)["sans"]


def test_render_header_matches_transformers():
    proc = _hf_processor()
    font = _font()
    for shape in [(64, 64, 3), (120, 40, 3), (30, 400, 3)]:
        img = _img(*shape)
        question = "what color is the shape in this image?"
        ref = proc.render_header(img.transpose(2, 0, 1), question, font_path=font)
        ours = P.render_header(img, question, font)
        np.testing.assert_array_equal(ours, ref.transpose(1, 2, 0))
        flat = proc(images=ours, max_patches=256, return_tensors="np")["flattened_patches"][0]
        np.testing.assert_allclose(P.patchify(ours, 256), flat, atol=2e-4)


def test_render_header_puts_text_above_the_image():
    font = _font()
    img = np.zeros((64, 64, 3), np.uint8)               # black image
    out = P.render_header(img, "is there a circle?", font)
    width = out.shape[1]
    assert width > 64                                    # the header is wider: image scaled up
    image_rows = int(64 * width / 64)
    header = out[:-image_rows]
    assert header.shape[0] > 10 and (header < 128).any() and (header > 250).mean() > 0.5
    assert (out[-image_rows:] == 0).all()
