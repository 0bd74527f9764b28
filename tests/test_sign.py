"""``--sign``: what the map shows, as Captum's ``visualize_image_attr`` offers it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from smoothgrad_cli import render
from smoothgrad_cli.cli import app

# two channels, 1×4 pixels: channel sums 3, −1, 0.5, −4
ATTRIBUTION = np.array([[[1.0, -2.0, 0.5, -1.0]], [[2.0, 1.0, 0.0, -3.0]]])


def test_positive_and_negative_parts_keep_zero_at_zero():
    positive = render.sign_map(ATTRIBUTION, "positive", percentile=100)
    np.testing.assert_allclose(positive, [[1.0, 0.0, 0.5 / 3, 0.0]], rtol=1e-6)
    negative = render.sign_map(ATTRIBUTION, "negative", percentile=100)
    np.testing.assert_allclose(negative, [[0.0, 0.25, 0.0, 1.0]], rtol=1e-6)


def test_absolute_is_the_papers_display_and_all_the_signed_map():
    np.testing.assert_array_equal(
        render.sign_map(ATTRIBUTION, "absolute", 100), render.magnitude_map(ATTRIBUTION, 100)
    )
    np.testing.assert_allclose(
        render.sign_map(ATTRIBUTION, "all", 100), [[0.75, -0.25, 0.125, -1.0]], rtol=1e-6
    )


def test_a_part_no_pixel_carries_is_all_zeros():
    assert not render.sign_map(np.abs(ATTRIBUTION), "negative").any()


def test_a_part_on_fewer_pixels_than_the_percentile_is_scaled_by_its_maximum():
    sparse = np.zeros((1, 10, 10))
    sparse[0, 0, 0] = 5.0  # 1 % of the pixels: the 99th percentile is 0
    shown = render.sign_map(sparse, "positive", 99)
    assert shown[0, 0] == 1.0 and shown.sum() == 1.0


def explain(photo, out, *options):
    return CliRunner().invoke(
        app,
        ["explain", str(photo), "-o", str(out), "-n", "2", "--batch-size", "2", "--device",
         "cpu", "-q", "--save-raw", *options],
    )  # fmt: skip


def test_sign_through_the_cli(sample_images, tmp_path):
    coffee = sample_images / "coffee.png"
    assert explain(coffee, tmp_path / "pos", "--sign", "positive").exit_code == 0
    raw = np.load(tmp_path / "pos" / "coffee.png.raw.npy")
    written = np.asarray(Image.open(tmp_path / "pos" / "coffee.png.map.png"), dtype=np.float64)
    expected = np.clip(np.rint(render.sign_map(raw, "positive") * 255.0), 0, 255)
    np.testing.assert_array_equal(written, expected)
    # --diverging is --sign all
    assert explain(coffee, tmp_path / "all", "--sign", "all").exit_code == 0
    assert explain(coffee, tmp_path / "div", "--diverging").exit_code == 0
    assert (tmp_path / "all" / "coffee.png.map.png").read_bytes() == (
        tmp_path / "div" / "coffee.png.map.png"
    ).read_bytes()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--diverging", "--sign", "negative"], "--diverging is --sign all"),
        (["--sign", "both"], "Invalid value for '--sign'"),
    ],
)
def test_bad_signs_are_usage_errors(sample_images, tmp_path, options, message):
    result = explain(sample_images / "coffee.png", tmp_path, *options)
    assert result.exit_code == 2 and message in result.output
