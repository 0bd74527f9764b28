"""Rendering and writing: exact pixels on hand-made maps, and writes that are never half-done."""

from __future__ import annotations

import os
import stat

import matplotlib
import numpy as np
import pytest
from PIL import Image

from smoothgrad_cli import files, render

# --- magnitude_map: the paper's display -----------------------------------------------------


def test_magnitude_map_abs_sum_min_to_zero_max_to_one():
    ch0 = [[3, -5, 7], [9, -11, 13]]
    ch1 = [[0, 0, -1], [1, 0, 0]]
    # |ch0| + |ch1| = [[3, 5, 8], [10, 11, 13]]; min 3 → 0, max 13 → 1.
    out = render.magnitude_map(np.array([ch0, ch1], dtype=np.float32), percentile=100)
    assert out.dtype == np.float32
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, [[0.0, 0.2, 0.5], [0.7, 0.8, 1.0]], atol=1e-7)


def test_magnitude_map_caps_at_the_percentile_and_clips():
    ch0 = [[3, -5, 7], [9, -11, 13]]
    ch1 = [[0, 0, -1], [1, 0, 0]]
    # Sorted values 3 5 8 10 11 13: the 80th percentile is the 5th value (index 0.8·5 = 4), 11.
    # (v − 3) / (11 − 3): 13 → 1.25, clipped to 1.
    out = render.magnitude_map(np.array([ch0, ch1], dtype=np.float32), percentile=80)
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.625], [0.875, 1.0, 1.0]], atol=1e-7)


def test_magnitude_map_default_percentile_is_99():
    values = np.arange(101, dtype=np.float32).reshape(1, 1, 101)  # 0..100, one channel
    out = render.magnitude_map(values)
    # 99th percentile of 0..100 is 99: 99 → 1, 100 → clipped to 1, 49.5 → 0.5.
    assert out[0, 99] == 1.0 and out[0, 100] == 1.0
    np.testing.assert_allclose(out[0, :99], np.arange(99) / 99, atol=1e-7)


@pytest.mark.parametrize("value", [0.0, 2.5, -3.0])
def test_magnitude_map_of_a_constant_map_is_zeros_not_nan(value):
    out = render.magnitude_map(np.full((3, 4, 5), value, dtype=np.float32))
    assert out.dtype == np.float32
    assert out.shape == (4, 5)
    assert not np.isnan(out).any()
    assert (out == 0).all()


# --- signed_map: zero stays at zero ----------------------------------------------------------


def test_signed_map_keeps_sign_and_zero():
    ch0 = [[1, -2, 0, 4]]
    ch1 = [[1, 0, 0, -8]]
    # Channel sum [2, −2, 0, −4]; the 100th percentile of |sum| is 4.
    out = render.signed_map(np.array([ch0, ch1], dtype=np.float32), percentile=100)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.5, -0.5, 0.0, -1.0]])


def test_signed_map_caps_and_clips_both_signs():
    ch0 = [[1, -2, 0, 4]]
    ch1 = [[1, 0, 0, -8]]
    # |sum| sorted 0 2 2 4: the 50th percentile is 2; −4 / 2 = −2 is clipped to −1.
    out = render.signed_map(np.array([ch0, ch1], dtype=np.float32), percentile=50)
    np.testing.assert_array_equal(out, [[1.0, -1.0, 0.0, -1.0]])


def test_signed_map_of_zeros_is_zeros():
    out = render.signed_map(np.zeros((3, 2, 2), dtype=np.float32))
    assert not np.isnan(out).any() and (out == 0).all()


# --- to pictures -----------------------------------------------------------------------------


def test_grayscale_is_8_bit_with_rounding_to_nearest():
    map01 = np.array([[0.0, 0.5, 1.0], [0.25, 1 / 255, -0.1], [1.2, 0.998, 0.002]])
    image = render.grayscale(map01)
    assert image.mode == "L"
    assert image.size == (3, 3)
    # 0.5·255 = 127.5 → 128 (rint), 0.25·255 = 63.75 → 64, out of range clipped.
    np.testing.assert_array_equal(np.asarray(image), [[0, 128, 255], [64, 1, 0], [255, 254, 1]])


@pytest.mark.parametrize("cmap", ["gray", "viridis", "inferno"])
def test_colorize_equals_matplotlibs_colormap_bytes(cmap):
    map01 = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    image = render.colorize(map01, cmap)
    assert image.mode == "RGB"
    assert image.size == (8, 8)
    expected = matplotlib.colormaps[cmap](map01, bytes=True)[..., :3]
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_colorize_gray_is_the_gray_ramp():
    image = render.colorize(np.array([[0.0, 1.0]]), "gray")
    np.testing.assert_array_equal(np.asarray(image), [[[0, 0, 0], [255, 255, 255]]])


@pytest.mark.parametrize("cmap", ["coolwarm", "RdBu_r", "bwr"])
def test_diverging_puts_zero_at_the_centre_of_the_cmap(cmap):
    signed = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    pixels = np.asarray(render.diverging(signed, cmap))
    lut = matplotlib.colormaps[cmap]
    np.testing.assert_array_equal(pixels[0, 0], lut(0.0, bytes=True)[:3])
    np.testing.assert_array_equal(pixels[0, 1], lut(0.5, bytes=True)[:3])
    np.testing.assert_array_equal(pixels[0, 2], lut(1.0, bytes=True)[:3])


def test_diverging_default_cmap_is_coolwarm_and_zero_is_neutral():
    pixels = np.asarray(render.diverging(np.zeros((2, 2), dtype=np.float32)))
    expected = matplotlib.colormaps["coolwarm"](0.5, bytes=True)[:3]
    assert (pixels == expected).all()
    # coolwarm's centre is a light grey: no channel dominates
    assert int(pixels.max()) - int(pixels.min()) < 30


# --- overlay ---------------------------------------------------------------------------------


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), mode="RGB")


BOX = (15.0, 5.0, 45.0, 35.0)  # a 30 × 30 region of the 60 × 40 photo


def _blend(rgb_u8: np.ndarray, weight: float, cmap: str, opacity: float = 0.7) -> np.ndarray:
    """The overlay formula, written out: photo·(1 − α) + colour·α, α = opacity·ramp(weight),
    the ramp being 1 at the full weight these tests use."""
    base = rgb_u8.astype(np.float32) / 255.0
    heat = np.asarray(matplotlib.colormaps[cmap](np.float32(weight))[:3], dtype=np.float32)
    alpha = np.float32(opacity) * np.float32(weight)
    out = base * (np.float32(1.0) - alpha) + heat * alpha
    return np.clip(np.rint(out.astype(np.float64) * 255), 0, 255).astype(np.uint8)


def test_overlay_is_at_the_photos_size_and_rgb(photo):
    out = render.overlay(photo, np.ones((10, 10), dtype=np.float32), BOX)
    assert out.size == photo.size == (60, 40)
    assert out.mode == "RGB"


def test_overlay_leaves_pixels_outside_the_crop_box_unchanged(photo):
    original = np.asarray(photo)
    out = np.asarray(render.overlay(photo, np.ones((10, 10), dtype=np.float32), BOX))
    outside = np.ones((40, 60), dtype=bool)
    outside[5:35, 15:45] = False
    np.testing.assert_array_equal(out[outside], original[outside])
    # ... and every pixel inside the box is changed by a full map
    assert (out[~outside] != original[~outside]).any(axis=-1).all()


def test_overlay_of_a_zero_map_is_the_photo(photo):
    out = render.overlay(photo, np.zeros((10, 10), dtype=np.float32), BOX)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(photo))


@pytest.mark.parametrize("cmap", ["inferno", "viridis"])
def test_overlay_blends_a_full_map_exactly_as_the_formula(photo, cmap):
    original = np.asarray(photo)
    out = np.asarray(render.overlay(photo, np.ones((10, 10), dtype=np.float32), BOX, cmap))
    for y, x in [(5, 15), (20, 30), (34, 44)]:
        np.testing.assert_array_equal(out[y, x], _blend(original[y, x], 1.0, cmap))


def test_overlay_opacity_scales_the_blend(photo):
    original = np.asarray(photo)
    out = np.asarray(
        render.overlay(photo, np.ones((10, 10), dtype=np.float32), BOX, "viridis", opacity=0.25)
    )
    np.testing.assert_array_equal(out[20, 30], _blend(original[20, 30], 1.0, "viridis", 0.25))


def test_overlay_puts_the_maps_corner_in_the_boxs_corner(photo):
    map01 = np.zeros((10, 10), dtype=np.float32)
    map01[0, 0] = 1.0  # top-left map pixel covers photo pixels 15..17 × 5..7
    original = np.asarray(photo)
    out = np.asarray(render.overlay(photo, map01, BOX))
    changed = (out != original).any(axis=-1)
    ys, xs = np.nonzero(changed)
    assert (xs.min(), ys.min()) == (15, 5)
    assert xs.max() <= 19 and ys.max() <= 9
    # the centre of that map pixel (photo pixel 16, 6) has the full weight
    np.testing.assert_array_equal(
        out[6, 16], _blend(original[6, 16], 1.0, render.DEFAULT_OVERLAY_CMAP)
    )


def test_faint_saliency_leaves_the_photo_untouched_so_the_crop_shows_no_edge(photo):
    """A map that is faint everywhere (most of a real map) must not tint the part of the photo
    the model saw: the crop would stand out as a rectangle against the untouched rest."""
    original = np.asarray(photo)
    faint = np.full((10, 10), 0.2, dtype=np.float32)  # about a real map's median
    np.testing.assert_array_equal(np.asarray(render.overlay(photo, faint, BOX)), original)
    # the alpha ramp: clear up to 0.2, the full opacity from 0.8, smooth (monotone) between
    ramp = render.overlay_alpha(np.linspace(0, 1, 101))
    assert ramp[:21].max() == 0.0 and ramp[80:].min() == 1.0
    assert (np.diff(ramp) >= 0).all()
    assert render.overlay_alpha(np.array([0.5]))[0] == pytest.approx(0.5)


def test_overlay_of_a_non_rgb_photo_is_rgb():
    gray = Image.new("L", (20, 10), 100)
    out = render.overlay(gray, np.zeros((4, 4), dtype=np.float32), (5, 0, 15, 10))
    assert out.mode == "RGB" and out.size == (20, 10)
    assert (np.asarray(out) == 100).all()


# --- argument checks -------------------------------------------------------------------------


def test_unknown_cmap_is_refused_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown colormap 'virdis'.*viridis"):
        render.colorize(np.zeros((2, 2)), "virdis")
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        render.check_cmap("nope")
    with pytest.raises(ValueError, match="unknown colormap"):
        render.overlay(Image.new("RGB", (4, 4)), np.zeros((2, 2)), (0, 0, 4, 4), "nope")


@pytest.mark.parametrize("percentile", [0, -1, 100.5, float("nan")])
def test_bad_percentile_is_refused(percentile):
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        render.magnitude_map(np.ones((1, 2, 2)), percentile)
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        render.signed_map(np.ones((1, 2, 2)), percentile)


# --- writing ---------------------------------------------------------------------------------


def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_writes_the_bytes_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "map.png"
    files.atomic_write(target, b"first")
    files.atomic_write(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert os.listdir(target.parent) == ["map.png"]
    # an ordinary file, not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


class _FailingHandle:
    """A file handle that writes part of the data, then fails (full disk, Ctrl-C)."""

    def __init__(self, handle, error: BaseException):
        self.handle = handle
        self.error = error

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
        return False


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=repr
)
def test_atomic_write_failing_midway_keeps_the_old_file(tmp_path, monkeypatch, error):
    target = tmp_path / "map.png"
    target.write_bytes(b"old complete file")
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        files.os, "fdopen", lambda fd, *a, **k: _FailingHandle(real_fdopen(fd, *a, **k), error)
    )
    with pytest.raises(type(error)):
        files.atomic_write(target, b"new data that never fully arrives")
    assert target.read_bytes() == b"old complete file"
    assert os.listdir(tmp_path) == ["map.png"]


def test_atomic_write_failing_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "map.png"

    def failing_replace(src, dst):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="Read-only"):
        files.atomic_write(target, b"data")
    assert os.listdir(tmp_path) == []


def test_save_png_and_npy_round_trip(tmp_path):
    image = render.grayscale(np.array([[0.0, 1.0]]))
    render.save_png(image, tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as loaded:
        assert loaded.mode == "L"
        np.testing.assert_array_equal(np.asarray(loaded), [[0, 255]])
    raw = np.arange(12, dtype=np.float64).reshape(3, 2, 2) / 7
    render.save_npy(raw, tmp_path / "m.npy")
    back = np.load(tmp_path / "m.npy", allow_pickle=False)
    assert back.dtype == np.float32 and back.shape == (3, 2, 2)
    np.testing.assert_array_equal(back, raw.astype(np.float32))
    assert _temp_files(tmp_path) == []
