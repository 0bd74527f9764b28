"""The ``smoothgrad`` command end to end: files written (names, modes, sizes, values checked
against the engine and the renderer), JSON results, options that change the map, and one-line
errors with exit code 2. Runs use 2 noisy samples to stay fast."""

from __future__ import annotations

import copy
import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from smoothgrad_cli import Explainer, MapSettings, __version__, cli, render
from smoothgrad_cli.cli import app
from smoothgrad_cli.explainer import PreparedModel

ESPRESSO = 967
FAST = ["-n", "2", "-q"]


def smoothgrad(*args) -> object:
    """``smoothgrad ARGS`` through Typer's runner; stdout and stderr kept apart."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def explain(photo: Path, out: Path, *options) -> object:
    result = smoothgrad("explain", photo, "-o", out, *FAST, *options)
    assert result.exit_code == 0, result.stderr
    return result


def png(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
    return image


@pytest.fixture(scope="module")
def coffee(sample_images) -> Path:
    return sample_images / "coffee.png"


@pytest.fixture(scope="module")
def prepared(lite0) -> PreparedModel:
    """The embedded model as every command prepares it (the shared copy stays as is)."""
    return PreparedModel.load(
        "efficientnet_lite0", device="cpu", loader=lambda m, w: copy.deepcopy(lite0)
    )


def engine_map(prepared: PreparedModel, photo: Path, target: int, **options) -> np.ndarray:
    """The map the explainer computes for ``photo`` with the CLI's defaults and ``options``
    (``tests/test_explainer.py`` checks it against the engine built by hand)."""
    settings = MapSettings(samples=2, precision="fp32", target=target, **options)
    return Explainer(settings, prepared).explain_file(photo).maps[0]


@pytest.fixture(scope="module")
def full_run(coffee, tmp_path_factory):
    """One run with every output: map, overlay, raw attribution, JSON on stdout."""
    out = tmp_path_factory.mktemp("full")
    result = explain(coffee, out, "--overlay", "--save-raw", "--json")
    return out, result


@pytest.fixture(scope="module")
def default_run(coffee, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default")
    explain(coffee, out)
    return out


# --- the happy path --------------------------------------------------------------------------


def test_explain_writes_an_8_bit_grayscale_map_at_the_models_input_size(default_run):
    files = sorted(p.name for p in default_run.iterdir() if not p.name.startswith("manifest"))
    assert files == ["coffee.png.map.png"]
    image = png(default_run / "coffee.png.map.png")
    assert image.mode == "L"
    assert image.size == (224, 224)
    pixels = np.asarray(image)
    # the display is scaled min → 0 and the 99th percentile → 255
    assert pixels.min() == 0 and pixels.max() == 255
    assert (pixels == 255).mean() == pytest.approx(0.01, abs=0.005)


def test_explain_prints_a_table_with_the_class(coffee, tmp_path):
    result = explain(coffee, tmp_path)
    assert "espresso (967)" in result.stdout
    assert "coffee.png" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "1 image explained"


def test_json_prints_one_object_per_image(full_run):
    out, result = full_run
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["input"].endswith("coffee.png")
    assert record["status"] == "ok"
    assert len(record["maps"]) == 1
    top = record["maps"][0]
    assert (top["rank"], top["class_index"], top["class_name"]) == (1, ESPRESSO, "espresso")
    assert 0.5 < top["probability"] <= 1.0
    assert set(top["outputs"]) == {"map", "overlay", "raw"}
    assert Path(top["outputs"]["map"]) == out / "coffee.png.map.png"
    for path in top["outputs"].values():
        assert Path(path).is_file()


def test_save_raw_is_the_engines_float32_map(full_run, lite0, prepared, coffee):
    out, _ = full_run
    raw = np.load(out / "coffee.png.raw.npy", allow_pickle=False)
    assert raw.dtype == np.float32
    assert raw.shape == (3, 224, 224)
    expected = engine_map(prepared, coffee, ESPRESSO)
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_map_png_is_the_rendered_raw_map(full_run):
    out, _ = full_run
    raw = np.load(out / "coffee.png.raw.npy")
    expected = np.asarray(render.grayscale(render.magnitude_map(raw)))
    np.testing.assert_array_equal(np.asarray(png(out / "coffee.png.map.png")), expected)


def test_overlay_is_rgb_at_the_photos_size_and_keeps_the_uncropped_border(full_run, coffee):
    out, _ = full_run
    overlay = png(out / "coffee.png.overlay.png")
    photo = np.asarray(png(coffee).convert("RGB"))
    assert overlay.mode == "RGB"
    assert overlay.size == (600, 400)
    pixels = np.asarray(overlay)
    # the model saw (125, 25)–(475, 375) of the photo; the rest is the photo unchanged
    outside = np.ones((400, 600), dtype=bool)
    outside[25:375, 125:475] = False
    np.testing.assert_array_equal(pixels[outside], photo[outside])
    assert (pixels[~outside] != photo[~outside]).any()


# --- options that change the map -------------------------------------------------------------


def test_top_k_writes_one_distinct_map_per_class(coffee, tmp_path):
    result = explain(coffee, tmp_path, "--top-k", "2", "--json")
    record = json.loads(result.stdout)
    ranks = [(m["rank"], m["class_index"]) for m in record["maps"]]
    assert ranks[0] == (1, ESPRESSO)
    assert ranks[1][0] == 2 and ranks[1][1] != ESPRESSO
    assert record["maps"][0]["probability"] >= record["maps"][1]["probability"]
    first = tmp_path / "coffee.png.top1.map.png"
    second = tmp_path / "coffee.png.top2.map.png"
    assert {Path(m["outputs"]["map"]) for m in record["maps"]} == {first, second}
    a = np.asarray(png(first), dtype=np.float32)
    b = np.asarray(png(second), dtype=np.float32)
    # discriminativity: the two classes' maps differ, not just by rounding
    assert np.abs(a - b).mean() > 5


def test_top_1_map_equals_the_default_map(coffee, tmp_path, default_run):
    explain(coffee, tmp_path, "--top-k", "2")
    top1 = (tmp_path / "coffee.png.top1.map.png").read_bytes()
    assert top1 == (default_run / "coffee.png.map.png").read_bytes()


def test_target_by_name_and_by_index(coffee, tmp_path, default_run):
    explain(coffee, tmp_path / "by_name", "--target", "Espresso")
    explain(coffee, tmp_path / "by_index", "--target", "967")
    explain(coffee, tmp_path / "tench", "--target", "0", "--json")
    default = (default_run / "coffee.png.map.png").read_bytes()
    # espresso is the top-1 class: naming it gives the default map
    assert (tmp_path / "by_name" / "coffee.png.map.png").read_bytes() == default
    assert (tmp_path / "by_index" / "coffee.png.map.png").read_bytes() == default
    tench = np.asarray(png(tmp_path / "tench" / "coffee.png.map.png"), dtype=np.float32)
    assert np.abs(tench - np.asarray(png(default_run / "coffee.png.map.png"))).mean() > 5


def test_target_is_reported_with_its_probability(coffee, tmp_path):
    result = explain(coffee, tmp_path, "--target", "tench", "--json")
    top = json.loads(result.stdout)["maps"][0]
    assert (top["class_index"], top["class_name"]) == (0, "tench")
    assert 0 <= top["probability"] < 0.01


def test_cmap_writes_the_colormapped_display(coffee, tmp_path):
    explain(coffee, tmp_path, "--cmap", "viridis", "--save-raw")
    image = png(tmp_path / "coffee.png.map.png")
    assert image.mode == "RGB" and image.size == (224, 224)
    raw = np.load(tmp_path / "coffee.png.raw.npy")
    expected = render.colorize(render.magnitude_map(raw), "viridis")
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


def test_diverging_writes_the_signed_map_around_the_cmap_centre(coffee, tmp_path):
    explain(coffee, tmp_path, "--diverging", "--save-raw")
    image = png(tmp_path / "coffee.png.map.png")
    assert image.mode == "RGB" and image.size == (224, 224)
    raw = np.load(tmp_path / "coffee.png.raw.npy")
    expected = render.diverging(render.signed_map(raw), "coolwarm")
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
    # both signs are present: pixels on both sides of the centre colour
    signed = render.signed_map(raw)
    assert (signed > 0.5).any() and (signed < -0.5).any()


def test_smoothing_none_ignores_noise_and_seed(coffee, tmp_path, lite0, prepared):
    for name, options in {"a": ["--noise", "0"], "b": ["--noise", "50", "--seed", "7"]}.items():
        explain(coffee, tmp_path / name, "--smoothing", "none", "--save-raw", *options)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "coffee.png.map.png").read_bytes() == (b / "coffee.png.map.png").read_bytes()
    raw = np.load(a / "coffee.png.raw.npy")
    np.testing.assert_array_equal(raw, np.load(b / "coffee.png.raw.npy"))
    # the plain gradient on the clean input
    expected = engine_map(prepared, coffee, ESPRESSO, smoothing="none")
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_same_seed_same_bytes_other_seed_other_map(coffee, tmp_path, default_run):
    explain(coffee, tmp_path / "again", "--seed", "0")
    explain(coffee, tmp_path / "other", "--seed", "1")
    default = (default_run / "coffee.png.map.png").read_bytes()
    assert (tmp_path / "again" / "coffee.png.map.png").read_bytes() == default
    other = np.asarray(png(tmp_path / "other" / "coffee.png.map.png"), dtype=np.float32)
    reference = np.asarray(png(default_run / "coffee.png.map.png"), dtype=np.float32)
    assert np.abs(other - reference).mean() > 1


def test_missing_input_fails_alone(coffee, tmp_path):
    missing = tmp_path / "no_such_photo.jpg"
    result = smoothgrad("explain", missing, coffee, "-o", tmp_path / "out", *FAST, "--json")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0]
    assert (tmp_path / "out" / "coffee.png.map.png").is_file()
    statuses = {json.loads(line)["status"] for line in result.stdout.splitlines()}
    assert statuses == {"ok", "error"}


# --- bad values: exit 2, one line, nothing written -------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--samples", "0"], "--samples must be >= 1, got 0"),
        (["--noise", "-5"], "--noise must be a percentage >= 0"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--target", "not a class"], "unknown class name 'not a class'"),
        (["--target", "1000"], "class index 1000 out of range"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--target", "x", "--top-k", "2"], "--target and --top-k are exclusive"),
        (["--cmap", "nope"], "unknown colormap 'nope'"),
        (["--percentile", "0"], "percentile must be in (0, 100]"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--weights", "IMAGENET9K"], "unknown weights 'IMAGENET9K'"),
    ],
)
def test_bad_values_exit_2_with_one_line(coffee, tmp_path, options, message):
    out = tmp_path / "out"
    result = smoothgrad("explain", coffee, "-o", out, "-q", *options)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("smoothgrad: error: ")
    assert message in lines[0]
    assert not out.exists() or not list(out.rglob("*.png"))


# --- other commands --------------------------------------------------------------------------


def test_models_lists_the_embedded_model_as_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    result = smoothgrad("models", "lite")
    assert result.exit_code == 0
    rows = [line for line in result.stdout.splitlines() if "efficientnet_lite0" in line]
    assert len(rows) == 1 and "yes" in rows[0] and "embedded" in rows[0]
    assert str(tmp_path) in result.stderr

    result = smoothgrad("models", "resnet18", "--json")
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"name": "resnet18", "default_weights": "IMAGENET1K_V1", "offline": False,
         "note": "download on first use"}
    ]  # fmt: skip
    result = smoothgrad("models", "lite", "--json")
    assert json.loads(result.stdout)["offline"] is True


def test_version():
    result = smoothgrad("--version")
    assert result.exit_code == 0
    assert result.stdout == f"smoothgrad {__version__}\n"


# --- the real entry point --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "x.png", "--samples", "abc"], "Invalid value for '--samples'"),
        (["explain", "x.png", "--no-such-option"], "No such option"),
        (["explain", "x.png", "--noise", "-5"], "--noise must be a percentage >= 0"),
        # choices are enums: Typer's own message, which names the valid values
        (["explain", "x.png", "--method", "nope"], "Invalid value for '--method'"),
        (["explain", "x.png", "--smoothing", "nope"], "Invalid value for '--smoothing'"),
        (["explain", "x.png", "--precision", "fp64"], "Invalid value for '--precision'"),
    ],
)
def test_main_turns_usage_errors_into_one_line_and_exit_2(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["smoothgrad", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("smoothgrad: error: ") and message in lines[0]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["explain", "x.png", "--method", "gradeint"],
         "Invalid value for '--method': 'gradeint' is not one of 'gradient', 'input-x-gradient', "
         "'integrated-gradients', 'guided-backprop'; did you mean 'gradient'?"),
        (["sweep", "x.png", "--smoothing", "median"],
         "Invalid value for '--smoothing': 'median' is not one of 'smoothgrad', 'smoothgrad-sq', "
         "'vargrad', 'none'."),
    ],
)  # fmt: skip
def test_a_bad_choice_is_said_in_our_words_with_the_closest_ones(monkeypatch, capsys, argv, line):
    """Typer's validation puts "Value error, " before the message; it is not ours to show."""
    monkeypatch.setattr(sys, "argv", ["smoothgrad", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    assert capsys.readouterr().err == f"smoothgrad: error: {line}\n"


def test_installed_command_one_line_error_and_exit_2(coffee, tmp_path):
    command = Path(sys.executable).with_name("smoothgrad")
    if not command.exists():
        pytest.skip("the smoothgrad command is not installed next to this Python")
    done = subprocess.run(
        [str(command), "explain", str(coffee), "-o", str(tmp_path), "--samples", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == "smoothgrad: error: --samples must be >= 1, got 0\n"
    assert "Traceback" not in done.stderr


def test_python_m_runs_the_same_entry_point(monkeypatch, capsys):
    """``python -m smoothgrad_cli --version``, run in this process to save a torch import."""
    monkeypatch.setattr(sys, "argv", ["smoothgrad", "--version"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("smoothgrad_cli", run_name="__main__")
    assert info.value.code == 0
    assert capsys.readouterr().out == f"smoothgrad {__version__}\n"
