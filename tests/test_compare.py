"""``smoothgrad compare``: one figure, a row per image (and class), a column per method; its
size in pixels from the layout's lengths, the labelled empty cell of a method the model
refuses, and one-line errors with their exit codes. Small models built here: a 16-pixel
ReLU network (loaded through the explainer's loader, as tests/test_baselines.py does) and
timm's tiny test ViT saved as a user's weights file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms._presets import ImageClassification
from typer.testing import CliRunner

from smoothgrad_cli import explainer, figures
from smoothgrad_cli.cli import app
from smoothgrad_cli.models import LoadedModel

SIZE = 16
CLASSES = ["cat", "dog", "fish"]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, len(CLASSES)),
    ).eval()  # fmt: skip


def tiny_model(name: str = "tiny", weights: str | None = None) -> LoadedModel:
    transform = ImageClassification(
        crop_size=SIZE, resize_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    return LoadedModel("tiny", "random", tiny_net(), transform, list(CLASSES))


@pytest.fixture()
def tiny(monkeypatch):
    monkeypatch.setattr(explainer, "load_model", tiny_model)


def photo(path: Path, seed: int, size: tuple[int, int] = (20, 18)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture()
def photos(tmp_path) -> list[Path]:
    return [photo(tmp_path / "a.png", 1), photo(tmp_path / "b.png", 2)]


def smoothgrad(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def compare(*args):
    return smoothgrad("compare", "-q", "-n", "2", "--device", "cpu", "--precision", "fp32", *args)


def expected_size(rows, cols, dpi, *, row_titles=False, row_labels=False, cell_labels=False):
    """The figure's (width, height without the caption, height of a caption line) in pixels,
    from the lengths of ``figures.GEOMETRY``: every length rounded to whole pixels first."""
    g = figures.GEOMETRY

    def px(inches: float) -> int:
        return round(inches * dpi)

    width = (
        2 * px(g.margin) + (px(g.row_label) if row_labels else 0)
        + cols * px(g.cell) + (cols - 1) * px(g.gap)
    )  # fmt: skip
    row = (px(g.row_title) if row_titles else 0) + px(g.cell)
    row += px(g.cell_label) if cell_labels else 0
    height = (
        px(g.margin) + px(g.title) + px(g.column_label) + rows * row + (rows - 1) * px(g.row_gap)
        + px(g.colorbar) + px(g.margin)
    )  # fmt: skip
    return width, height, px(g.caption_line)


def assert_grid_size(path: Path, rows: int, cols: int, dpi: int, **kinds) -> None:
    width, height, line = expected_size(rows, cols, dpi, **kinds)
    with Image.open(path) as image:
        got_width, got_height = image.size
    assert got_width == width
    caption_lines, rest = divmod(got_height - height, line)
    assert rest == 0 and 1 <= caption_lines <= 40, (got_height, height, line)


# --- the layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("dpi", [72, 150])
def test_a_grid_is_its_lengths_in_whole_pixels(tmp_path, dpi):
    rng = np.random.default_rng(0)
    cells = [[figures.Cell(rng.random((8, 8)), label="ρ 0.5") for _ in range(3)] for _ in range(2)]
    grid = figures.Grid(
        cells, ["a", "b", "c"], caption="one short line", title="t", row_labels=["x", "y"]
    )
    path = tmp_path / "grid.png"
    figures.save_figure(grid, path, dpi)
    width, height, line = expected_size(2, 3, dpi, row_labels=True, cell_labels=True)
    with Image.open(path) as image:
        assert image.size == (width, height + line)  # the caption is one line
    assert (figures.Layout(grid, dpi).width, figures.Layout(grid, dpi).height) == image.size
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary left


# --- compare ---------------------------------------------------------------------------------


def test_a_row_per_image_and_a_column_per_method_and_the_path_on_stdout(tiny, photos, tmp_path):
    figure = tmp_path / "fig.png"
    methods = "gradient,smoothgrad,input-x-gradient,smooth-integrated-gradients"
    result = compare(*photos, "--methods", methods, "--ig-steps", "4", "--dpi", "60",
                     "-o", figure)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{figure}\n"
    assert result.stderr.splitlines()[-1] == "2 images compared in 2 rows × 4 methods"
    # the photo, then the methods; each row titled with its image and class
    assert_grid_size(figure, rows=2, cols=1 + 4, dpi=60, row_titles=True)


def test_top_k_gives_a_row_per_image_and_class_best_first(tiny, photos, tmp_path):
    figure = tmp_path / "fig.png"
    result = compare(photos[0], "--methods", "gradient", "--top-k", "2", "--json", "-o", figure)
    assert result.exit_code == 0, result.stderr
    (line,) = result.stdout.splitlines()
    report = json.loads(line)
    assert report["figure"] == str(figure)
    assert [row["rank"] for row in report["rows"]] == [1, 2]
    assert report["rows"][0]["probability"] >= report["rows"][1]["probability"]
    assert len({row["class_index"] for row in report["rows"]}) == 2
    assert report["columns"] == [{"name": "gradient", "label": "Gradient", "available": True}]
    assert_grid_size(figure, rows=2, cols=2, dpi=150, row_titles=True)


def test_target_names_the_class_of_every_row(tiny, photos, tmp_path):
    result = compare(*photos, "--methods", "smoothgrad", "--target", "fish", "--json",
                     "-o", tmp_path / "fig.png")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [(r["class_name"], r["class_index"]) for r in rows] == [("fish", 2), ("fish", 2)]


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_the_extension_picks_the_format(tiny, photos, tmp_path, suffix, magic):
    figure = tmp_path / f"fig{suffix}"
    result = compare(photos[0], "--methods", "gradient", "-o", figure)
    assert result.exit_code == 0, result.stderr
    assert figure.read_bytes().startswith(magic)


def test_every_column_runs_at_the_one_chunk_size_chosen_for_the_whole_figure(
    tiny, photos, tmp_path, monkeypatch
):
    """The chunk size is chosen once, as explain chooses it, for all the figure's passes (2
    images × (1 + 2 + 1 + 2) here), and every column runs at it; --batch-size sets it."""
    from smoothgrad_cli import engine, tuning

    asked, chunks = [], []

    def choose(model, device, shape, precision, *, model_name=None, say=None, run_rows=None):
        asked.append(run_rows)
        return tuning.Choice(3, False, {}, cached=False)

    real = engine.SmoothGrad.attribute

    def attribute(self, model, x, target, **kwargs):
        chunks.append(self.batch_size)
        return real(self, model, x, target, **kwargs)

    monkeypatch.setattr(tuning, "choose_batch_size", choose)
    monkeypatch.setattr(engine.SmoothGrad, "attribute", attribute)
    columns = "gradient,smoothgrad,input-x-gradient,smooth-input-x-gradient"
    result = compare(*photos, "--methods", columns, "-o", tmp_path / "c.png")
    assert result.exit_code == 0, result.stderr
    assert asked == [2 * (1 + 2 + 1 + 2)]  # -n 2: two rows per image for a smoothed column
    assert chunks == [3, 3, 3, 3]
    asked.clear(), chunks.clear()
    result = compare(*photos, "--methods", columns, "--batch-size", 1, "-o", tmp_path / "d.png")
    assert result.exit_code == 0, result.stderr
    assert asked == [] and chunks == [1, 1, 1, 1]


def test_a_model_refusing_guided_backprop_gets_labelled_empty_cells(photos, tmp_path):
    """timm's test ViT (GELU), saved as the user's own weights file."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), weights)
    figure = tmp_path / "fig.png"
    result = compare(photos[0], "--model", "timm:test_vit", "--weights", weights,
                     "--methods", "gradient,guided-backprop,smooth-guided-backprop",
                     "--dpi", "100", "--json", "-o", figure)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    columns = json.loads(result.stdout)["columns"]
    assert [c["available"] for c in columns] == [True, False, False]
    for column in columns[1:]:
        assert "guided-backprop" in column["reason"] and "GELU" in column["reason"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("not available" in w and "GELU" in w for w in warnings)
    # The cells themselves: the gradient is a map, the guided ones the empty cell's grey.
    layout = figures.Layout(
        figures.Grid([[figures.Cell()] * 4], ["", "", "", ""], title="t", row_titles=["r"]), 100
    )
    with Image.open(figure) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)

    def cell(col: int) -> np.ndarray:
        left, top, width, height = layout.cell_box(0, col)
        return pixels[top + 3 : top + height - 3, left + 3 : left + width - 3]

    assert cell(1).std() > 20  # a map
    for col in (2, 3):
        empty = cell(col)
        assert np.median(empty) == pytest.approx(0.93 * 255, abs=2)  # the empty cell's face
        assert empty.min() < 128  # and its note, written on it


def test_bad_inputs_fail_alone_in_one_line_each_and_the_rest_is_drawn(tiny, photos, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    figure = tmp_path / "fig.png"
    result = compare(photos[0], tmp_path / "gone.png", tmp_path / "notes.png",
                     "--methods", "gradient", "--json", "-o", figure)  # fmt: skip
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path / 'gone.png'}: no such file or folder",
        f"error: {tmp_path / 'notes.png'}: not an image file Pillow can read",
    ]
    report = json.loads(result.stdout)
    assert [row["input"] for row in report["rows"]] == [str(photos[0])]
    failed = [str(tmp_path / name) for name in ("gone.png", "notes.png")]
    assert [f["input"] for f in report["failed"]] == failed
    assert_grid_size(figure, rows=1, cols=2, dpi=150, row_titles=True)


def test_no_usable_input_writes_no_figure(tiny, tmp_path):
    figure = tmp_path / "fig.png"
    result = compare(tmp_path / "gone.png", "--methods", "gradient", "-o", figure)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'gone.png'}: no such file or folder",
        "no figure written: no input could be used",
    ]
    assert result.stdout == "" and not figure.exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--methods", "gradient,smoothgrd"], "unknown method 'smoothgrd' in --methods; did"),
        (["-o", "fig.jpg"], "fig.jpg: unknown figure format '.jpg': end the file name in .png"),
        (["--samples", "0"], "--samples must be >= 1, got 0"),
        (["--target", "dog", "--top-k", "2"], "--target and --top-k are exclusive"),
        (["--target", "cow"], "unknown class name 'cow' for tiny"),
        (["--dpi", "5"], "--dpi must be between 20 and 1200, got 5"),
        (["--cmap", "viridus"], "unknown colormap 'viridus'; did you mean viridis"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(tiny, photos, tmp_path, options, message):
    result = compare(photos[0], "-o", tmp_path / "fig.png", *options)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("smoothgrad: error: ") and message in line
    assert result.stdout == "" and not (tmp_path / "fig.png").exists()
