"""Overlays that show (issue 14): opacity that follows the map, a perceptual colormap, a
display-only blur stated in a legend — on hand-made maps, then through the CLI."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from smoothgrad_cli import render
from smoothgrad_cli.cli import app
from smoothgrad_cli.explain import ExplainOptions, UsageError

BOX = (60.0, 10.0, 300.0, 250.0)  # a 240 × 240 region of a 360 × 260 photo


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (260, 360, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture
def speckled() -> np.ndarray:
    """A map like SmoothGrad's: a strong region made of specks, faint noise elsewhere."""
    rng = np.random.default_rng(2)
    map01 = rng.uniform(0.0, 0.25, (64, 64))
    blob = np.zeros((64, 64), dtype=bool)
    blob[10:30, 34:54] = True
    map01[blob & (rng.uniform(size=(64, 64)) < 0.3)] = 1.0
    return map01.astype(np.float32)


def inside(box, shape) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    left, top, right, bottom = (int(v) for v in box)
    mask[top:bottom, left:right] = True
    return mask


# --- size, zero map, alpha ---------------------------------------------------------------------


@pytest.mark.parametrize("blur", [0.0, 3.0, None])
@pytest.mark.parametrize("legend", [None, "SmoothGrad |map|"])
@pytest.mark.parametrize("size", [(240, 180), (180, 240), (33, 17)])
def test_overlay_is_the_photos_size_whatever_the_blur_and_legend(size, blur, legend, speckled):
    width, height = size
    picture = Image.new("RGB", size, (90, 120, 150))
    box = (0.1 * width, 0.05 * height, 0.9 * width, 0.95 * height)
    out = render.overlay(picture, speckled, box, blur=blur, legend=legend)
    assert out.size == picture.size and out.mode == "RGB"


@pytest.mark.parametrize("blur", [0.0, 2.5, 40.0, None])
def test_a_zero_map_leaves_the_photo_unchanged_at_any_blur(photo, blur):
    zero = np.zeros((64, 64), dtype=np.float32)
    out = render.overlay(photo, zero, BOX, blur=blur)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(photo))
    assert render.overlay_alpha(zero).max() == 0.0


def _alpha_of_blend(value: float, opacity: float = 0.7) -> np.ndarray:
    """The opacity an overlay used, read back from two renders: on black the result is α·c,
    on white (1 − α) + α·c, so α = 1 − (white − black)."""
    uniform = np.full((8, 8), value, dtype=np.float32)
    box = (0.0, 0.0, 16.0, 16.0)
    renders = [
        np.asarray(render.overlay(Image.new("RGB", (16, 16), shade), uniform, box), dtype=float)
        for shade in ((0, 0, 0), (255, 255, 255))
    ]
    return 1.0 - (renders[1] - renders[0]).mean() / 255.0


def test_opacity_rises_with_the_maps_magnitude_from_zero():
    values = np.linspace(0.0, 1.0, 21)
    alphas = np.array([_alpha_of_blend(v) for v in values])
    assert alphas[0] == 0.0
    assert (np.diff(alphas) >= -1 / 255).all()  # monotone, to the 8-bit rounding
    assert alphas[-1] == pytest.approx(0.7, abs=1 / 255)
    np.testing.assert_allclose(alphas, 0.7 * render.overlay_alpha(values), atol=1.5 / 255)
    ramp = render.overlay_alpha(np.linspace(0.0, 1.0, 1001))
    assert (np.diff(ramp) >= 0).all() and ramp[0] == 0.0 and ramp[-1] == 1.0


def test_the_default_colormap_is_perceptual_and_rises_in_lightness():
    assert render.DEFAULT_OVERLAY_CMAP == "viridis"
    rgb = matplotlib.colormaps[render.DEFAULT_OVERLAY_CMAP](np.linspace(0, 1, 32))[:, :3]
    luma = rgb @ [0.2126, 0.7152, 0.0722]
    assert (np.diff(luma) > 0).all()  # brighter means more: never jet's up-and-down


# --- the display-only blur -------------------------------------------------------------------


def test_no_blur_shows_the_map_itself(speckled):
    np.testing.assert_array_equal(render.display_map(speckled, BOX, 0.0), speckled)


def test_blur_joins_the_specks_and_keeps_the_maps_values(speckled):
    shown = render.display_map(speckled, BOX, 6.0)
    # the same values, rank for rank: as much of the photo is tinted, as strongly
    np.testing.assert_array_equal(np.sort(shown, axis=None), np.sort(speckled, axis=None))
    # ... now gathered where the specks were dense: the strong pixels lie in the blob
    strong = shown >= 1.0
    assert strong.sum() == (speckled >= 1.0).sum()
    assert strong[8:32, 32:56].sum() == strong.sum()
    # and make one region: neighbours of a strong pixel are mostly strong too
    neighbours = strong[1:, :] & strong[:-1, :]
    assert neighbours.sum() > 0.7 * strong.sum()
    before = (speckled[1:, :] >= 1) & (speckled[:-1, :] >= 1)
    assert before.sum() < 0.4 * (speckled >= 1).sum()


def test_blur_is_in_the_photos_pixels(speckled):
    """σ is in photo pixels: the same blur over a box twice the size is half as wide on
    the map, so a box twice as large with twice the blur shows the same."""
    small = render.display_map(speckled, (0, 0, 64, 64), 3.0)
    large = render.display_map(speckled, (0, 0, 128, 128), 6.0)
    np.testing.assert_array_equal(small, large)
    assert not np.array_equal(small, render.display_map(speckled, (0, 0, 128, 128), 3.0))


def test_the_blur_is_a_gaussian_with_mirrored_edges():
    rng = np.random.default_rng(3)
    vector = rng.uniform(size=40)
    sigma = 2.5
    matrix = render._gaussian_matrix(40, sigma)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    expected = np.convolve(np.pad(vector, radius, mode="reflect"), kernel / kernel.sum(), "valid")
    np.testing.assert_allclose(matrix @ vector, expected)
    assert render._gaussian_matrix(1, 5.0).tolist() == [[1.0]]


def test_a_blur_wider_than_the_photo_is_fast_and_finite(photo, speckled):
    shown = render.display_map(speckled, BOX, 1e6)
    assert np.isfinite(shown).all()
    np.testing.assert_array_equal(np.sort(shown, axis=None), np.sort(speckled, axis=None))
    assert render.overlay(photo, speckled, BOX, blur=1e6).size == photo.size


def test_blur_changes_the_overlay_inside_the_box_only(photo, speckled):
    sharp = np.asarray(render.overlay(photo, speckled, BOX, blur=0.0))
    blurred = np.asarray(render.overlay(photo, speckled, BOX, blur=6.0))
    box = inside(BOX, sharp.shape[:2])
    assert (sharp != blurred).any(axis=-1)[box].mean() > 0.05
    np.testing.assert_array_equal(blurred[~box], np.asarray(photo)[~box])


def test_auto_blur_is_two_percent_of_the_view():
    assert render.auto_overlay_blur((125, 25, 475, 375)) == 7.0  # coffee.png's 350 px view
    assert render.auto_overlay_blur((0, 0, 300, 200)) == 4.0
    photo = Image.new("RGB", (360, 260), (128, 128, 128))
    rng = np.random.default_rng(4)
    map01 = rng.uniform(size=(64, 64)).astype(np.float32)
    auto = render.overlay(photo, map01, BOX, blur=None)
    explicit = render.overlay(photo, map01, BOX, blur=render.auto_overlay_blur(BOX))
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(explicit))


@pytest.mark.parametrize("blur", [-1.0, -0.01, float("nan"), float("inf")])
def test_a_negative_blur_is_refused(blur, photo, speckled):
    with pytest.raises(ValueError, match="blur must be >= 0"):
        render.overlay(photo, speckled, BOX, blur=blur)
    with pytest.raises(
        UsageError, match=r"^--overlay-blur must be >= 0 \(pixels\) and finite, got "
    ):
        ExplainOptions(inputs=[], overlay=True, overlay_blur=blur).validate()


def test_overlay_options_without_overlay_are_refused():
    with pytest.raises(UsageError, match="--overlay-blur is about the overlay: give --overlay"):
        ExplainOptions(inputs=[], overlay_blur=3.0).validate()
    with pytest.raises(UsageError, match="--no-overlay-legend is about the overlay"):
        ExplainOptions(inputs=[], overlay_legend=False).validate()


# --- the legend ------------------------------------------------------------------------------


def _legend_region(with_legend: np.ndarray, without: np.ndarray) -> tuple[slice, slice]:
    ys, xs = np.nonzero((with_legend != without).any(axis=-1))
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def test_the_legend_is_a_small_strip_in_a_corner_of_the_box(photo, speckled):
    plain = np.asarray(render.overlay(photo, speckled, BOX, blur=4.0))
    shown = np.asarray(render.overlay(photo, speckled, BOX, blur=4.0, legend="SmoothGrad |map|"))
    rows, cols = _legend_region(shown, plain)
    box = inside(BOX, plain.shape[:2])
    assert box[rows, cols].all()  # on the part of the photo the model saw, never beyond
    assert (rows.stop - rows.start) * (cols.stop - cols.start) < 0.15 * box.sum()
    left, top, right, bottom = BOX
    assert rows.start - top < 10 or bottom - rows.stop < 10  # against an edge of the box
    assert cols.start - left < 10 or right - cols.stop < 10  # ... in a corner


def test_the_legend_has_the_colour_bar_low_to_high():
    gray = Image.new("RGB", (360, 260), (128, 128, 128))
    zero = np.zeros((64, 64), dtype=np.float32)
    legend = np.asarray(render.overlay(gray, zero, BOX, "viridis", legend="SmoothGrad |map|"))
    rows, cols = _legend_region(legend, np.asarray(gray))
    strip = legend[rows, cols].astype(int)
    ends = []
    for value in (0.0, 1.0):
        colour = np.asarray(matplotlib.colormaps["viridis"](value, bytes=True)[:3], dtype=int)
        near = np.abs(strip - colour).sum(axis=-1) < 30  # no gray (backing, text) is this close
        assert near.any(), value
        ends.append(np.nonzero(near)[1].mean())
    assert ends[0] < ends[1]  # 0 on the left, the percentile on the right


def test_the_legend_avoids_the_salient_corner(photo):
    """Saliency in the bottom-left corner of the box (where a legend goes first): the legend
    moves to a corner where it hides none."""
    map01 = np.zeros((64, 64), dtype=np.float32)
    map01[40:, :24] = 1.0
    plain = np.asarray(render.overlay(photo, map01, BOX))
    shown = np.asarray(render.overlay(photo, map01, BOX, legend="x"))
    rows, cols = _legend_region(shown, plain)
    alpha = render.overlay_alpha(render._on_photo(map01, photo.size, BOX))
    assert alpha[rows, cols].max() == 0.0
    # with nothing salient it is bottom-left
    zero = np.zeros((64, 64), dtype=np.float32)
    base = np.asarray(render.overlay(photo, zero, BOX))
    rows, cols = _legend_region(np.asarray(render.overlay(photo, zero, BOX, legend="x")), base)
    left, _, _, bottom = BOX
    assert cols.start < left + 10 and rows.stop > bottom - 10


def test_no_legend_is_drawn_where_the_box_cannot_hold_one(speckled):
    small = Image.new("RGB", (60, 40), (200, 200, 200))
    box = (10.0, 0.0, 50.0, 40.0)
    np.testing.assert_array_equal(
        np.asarray(render.overlay(small, speckled, box, legend="SmoothGrad |map|")),
        np.asarray(render.overlay(small, speckled, box)),
    )


def test_the_legend_states_the_scale_and_the_blur():
    assert render._legend_lines("SmoothGrad |map|", 99.0, 7.0) == (
        "0 – 99th pct",
        "SmoothGrad |map| · blur 7 px",
    )
    assert render._legend_lines("SmoothGrad |map|", 99.5, 0.0) == (
        "0 – 99.5th pct",
        "SmoothGrad |map|",
    )
    assert render._legend_lines("x", 92, 5.25)[0] == "0 – 92nd pct"
    assert render._legend_lines("x", 100, 1)[0] == "0 – max"
    assert render.legend_title() == "SmoothGrad |map|"
    assert render.legend_title("gradient", "none", "positive") == "gradient positive part"
    assert (
        render.legend_title("integrated-gradients", "vargrad", "all")
        == "VarGrad of integrated gradients |map|"
    )


# --- through the CLI (the embedded model, 2 noisy samples) -----------------------------------

FAST = ["-n", "2", "--device", "cpu", "-q"]
COFFEE_VIEW = (125, 25, 475, 375)  # what the model sees of coffee.png (600 × 400)


def smoothgrad(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cli_runs(sample_images, tmp_path_factory) -> dict:
    """coffee.png three ways: the defaults, no blur, no legend; outputs read back."""
    coffee = sample_images / "coffee.png"
    runs = {}
    for name, extra in {
        "default": [],
        "sharp": ["--overlay-blur", "0"],
        "bare": ["--no-overlay-legend"],
    }.items():
        out = tmp_path_factory.mktemp(name)
        result = smoothgrad("explain", coffee, "-o", out, *FAST, "--overlay", "--save-raw", *extra)
        assert result.exit_code == 0, result.stderr
        runs[name] = {
            kind: (out / f"coffee.png.{kind}").read_bytes()
            for kind in ("map.png", "raw.npy", "overlay.png")
        }
        with Image.open(out / "coffee.png.overlay.png") as image:
            runs[name]["overlay"] = np.asarray(image.convert("RGB"))
            runs[name]["mode"], runs[name]["size"] = image.mode, image.size
    with Image.open(coffee) as image:
        runs["photo"] = np.asarray(image.convert("RGB"))
    return runs


def test_cli_overlay_is_rgb_at_the_photos_size(cli_runs):
    for name in ("default", "sharp", "bare"):
        assert (cli_runs[name]["mode"], cli_runs[name]["size"]) == ("RGB", (600, 400))


def test_cli_blur_changes_the_overlay_but_never_the_map_or_the_raw_attribution(cli_runs):
    default, sharp = cli_runs["default"], cli_runs["sharp"]
    assert default["map.png"] == sharp["map.png"] == cli_runs["bare"]["map.png"]
    assert default["raw.npy"] == sharp["raw.npy"] == cli_runs["bare"]["raw.npy"]
    view = inside(COFFEE_VIEW, (400, 600))
    changed = (default["overlay"] != sharp["overlay"]).any(axis=-1)
    assert changed[view].mean() > 0.05
    assert not changed[~view].any()  # the part the model did not see is the photo, both times
    np.testing.assert_array_equal(default["overlay"][~view], cli_runs["photo"][~view])


def test_cli_legend_is_on_by_default_and_no_overlay_legend_leaves_it_out(cli_runs):
    default, bare = cli_runs["default"]["overlay"], cli_runs["bare"]["overlay"]
    changed = (default != bare).any(axis=-1)
    assert changed.any()  # the default has a legend
    rows, cols = _legend_region(default, bare)
    assert inside(COFFEE_VIEW, (400, 600))[rows, cols].all()
    assert changed.mean() < 0.05  # a small strip, nothing else differs


@pytest.mark.parametrize("value", ["-1", "-0.5"])
def test_cli_negative_blur_is_a_one_line_usage_error(sample_images, tmp_path, value):
    result = smoothgrad(
        "explain", sample_images / "coffee.png", "-o", tmp_path, "-q", "--overlay",
        "--overlay-blur", value,
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"smoothgrad: error: --overlay-blur must be >= 0 (pixels) and finite, got {float(value):g}"
    ]
    assert not any(tmp_path.iterdir())
