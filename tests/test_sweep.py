"""``smoothgrad sweep``: the grid over noise level × sample count from one run per level, its
cells equal to ``explain``'s maps, and the convergence numbers against a hand computation on
a model whose gradient is known: S_c(x) = ½ Σ w_c ⊙ x², so ∂S_c/∂x = w_c ⊙ x and the noisy
gradient of copy j is w_c ⊙ (x + σ ε_j), ε_j drawn by ``engine.sample_noise``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_compare import SIZE, assert_grid_size, photo, smoothgrad, tiny_model
from torch import nn
from torchvision.transforms._presets import ImageClassification

from smoothgrad_cli import MapSettings, engine, explainer, render
from smoothgrad_cli.check.metrics import spearman
from smoothgrad_cli.explainer import Explainer
from smoothgrad_cli.models import LoadedModel
from smoothgrad_cli.sweep import rows_of_work, run_sweep

TRANSFORM = ImageClassification(
    crop_size=SIZE, resize_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
)


class Quadratic(nn.Module):
    """S_c(x) = ½ Σ_i w_ci x_i²: the input gradient of class c is w_c ⊙ x."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.w = nn.Parameter(torch.randn((classes, 3 * SIZE * SIZE), generator=generator))

    def forward(self, x):
        return 0.5 * (x.flatten(1) ** 2) @ self.w.T


def quadratic_model(name="quadratic", weights=None) -> LoadedModel:
    return LoadedModel("quadratic", "random", Quadratic().eval(), TRANSFORM, ["a", "b"])


@pytest.fixture()
def picture(tmp_path):
    return photo(tmp_path / "p.png", 3)


def sweep(*args):
    return smoothgrad("sweep", "-q", "--device", "cpu", "--precision", "fp32", *args)


# --- the convergence numbers, by hand ----------------------------------------------------------

SEED, TARGET, LEVELS, COUNTS, POOL = 5, 1, [0.0, 10.0, 40.0], [1, 4, 9, 16], 2


def shown(m: np.ndarray) -> np.ndarray:
    """The display convergence is measured on: the paper's, averaged over POOL × POOL
    blocks (a 16-pixel map in 8 × 8 blocks of 2 × 2)."""
    side = SIZE // POOL
    return render.magnitude_map(m).reshape(side, POOL, side, POOL).mean(axis=(1, 3))


def hand_sweep(x: torch.Tensor, w: torch.Tensor) -> dict:
    """Split-half ρ per level and count, and ρ between levels at the largest count, from
    the noisy gradients w ⊙ (x + σ ε_j) written out."""
    sigma_unit = float(x.max() - x.min())
    eps = [engine.sample_noise(SEED, j, x.shape) for j in range(COUNTS[-1])]
    split, means = {}, {}
    for level in LEVELS:
        sigma = level / 100 * sigma_unit
        grads = [(w * (x + sigma * e)).double().numpy() for e in eps]
        for n in COUNTS:
            if n >= 2:
                even = np.mean(grads[0:n:2], axis=0)
                odd = np.mean(grads[1:n:2], axis=0)
                split[level, n] = spearman(shown(even), shown(odd))
        means[level] = np.mean(grads, axis=0)
    change = [
        spearman(shown(means[a]), shown(means[b])) for a, b in zip(LEVELS, LEVELS[1:], strict=False)
    ]
    return {"split": split, "change": change}


def first_stable(values: list, threshold: float):
    """The first position from which on every value is ≥ threshold (None: never)."""
    at = None
    for i in range(len(values) - 1, -1, -1):
        if values[i] is None or values[i] < threshold:
            break
        at = i
    return at


# Here split-half ρ is 0.89, 0.94, 0.94 at 10 % (n = 4, 9, 16) and 0.54, 0.61, 0.61 at 40 %,
# ρ between levels 0.98 (0 → 10 %) and 0.95 (10 → 40 %). So at 0.6 every level is stable
# (40 % from n = 9: over the image, n = 9) and the noise from 0 %; at 0.9 the 10 % level from
# n = 9 but not 40 %; at 0.96 no level above 0 %, and the step 10 → 40 % changes the map.
OVERALL = {0.6: (9, 0.0), 0.9: (None, 0.0), 0.96: (None, None)}


@pytest.mark.parametrize("threshold", sorted(OVERALL))
def test_convergence_numbers_match_the_hand_computation(picture, tmp_path, monkeypatch, threshold):
    monkeypatch.setattr(explainer, "load_model", quadratic_model)
    with Image.open(picture) as image:
        x = TRANSFORM(image.convert("RGB"))
    w = Quadratic().w.detach()[TARGET].view(3, SIZE, SIZE)
    hand = hand_sweep(x, w)
    noise, samples = ",".join(f"{v:g}" for v in LEVELS), ",".join(map(str, COUNTS))
    result = sweep(picture, "--noise", noise, "--samples", samples, "--seed", SEED,
                   "--target", TARGET, "--threshold", threshold, "--pool", POOL, "--json",
                   "-o", tmp_path / "sweep.png")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (line,) = result.stdout.splitlines()
    got = json.loads(line)
    assert got["noise"] == LEVELS and got["samples"] == COUNTS and got["class_index"] == TARGET
    stable = []
    for level, row in zip(LEVELS, got["levels"], strict=True):
        expected = [None] + [hand["split"][level, n] for n in COUNTS[1:]]
        assert row["split_half"][0] is None
        np.testing.assert_allclose(row["split_half"][1:], expected[1:], atol=1e-6)
        if level == 0:
            assert row["split_half"][1:] == pytest.approx([1.0, 1.0, 1.0])  # copies: the image
        at = first_stable(expected, threshold)
        assert row["stable_samples"] == (COUNTS[at] if at is not None else None)
        stable.append(row["stable_samples"])
    noisy_stable = stable[1:]
    assert got["stable_samples"] == (None if None in noisy_stable else max(noisy_stable))
    changes = [row["noise_change"] for row in got["levels"][:-1]]
    np.testing.assert_allclose(changes, hand["change"], atol=1e-6)
    assert got["levels"][-1]["noise_change"] is None
    at = first_stable(hand["change"], threshold)
    assert got["stable_noise"] == (LEVELS[at] if at is not None else None)
    assert (got["stable_samples"], got["stable_noise"]) == OVERALL[threshold]


def test_stable_from_is_the_first_count_after_which_every_one_passes():
    from smoothgrad_cli.sweep import stable_from

    assert stable_from([None, 0.5, 0.97, 0.96], 0.95) == 2
    assert stable_from([None, 0.96, 0.9, 0.97], 0.95) == 3  # a dip after: from the last on
    assert stable_from([None, 0.99, 0.9], 0.95) is None
    assert stable_from([], 0.95) is None


# --- one batched run per level, and the cells are explain's maps ----------------------------


@pytest.mark.parametrize("smoothing", ["smoothgrad", "smoothgrad-sq", "vargrad"])
def test_a_cell_is_the_map_explain_makes_with_the_same_settings(
    picture, tmp_path, monkeypatch, smoothing
):
    monkeypatch.setattr(explainer, "load_model", tiny_model)
    made = Explainer.load(MapSettings(model="tiny", seed=3, precision="fp32", batch_size=4), "cpu")
    with Image.open(picture) as image:
        x = made.transform(image.convert("RGB"))
    target = made.classes(made.predict(x[None]))[0][0]
    result = run_sweep(made, x, target, [0.0, 20.0], [1, 6, 10], threshold=0.9,
                       smoothing=smoothing)  # fmt: skip
    assert result.to_json()["smoothing"] == smoothing
    for level, n, column in ((20.0, 6, 1), (20.0, 10, 2), (0.0, 6, 1)):
        out = tmp_path / f"explain-{level:g}-{n}"
        run = smoothgrad("explain", picture, "-o", out, "--noise", f"{level:g}", "-n", n,
                         "--seed", 3, "--save-raw", "--precision", "fp32", "--device", "cpu",
                         "--batch-size", 8, "--smoothing", smoothing, "-q")  # fmt: skip
        assert run.exit_code == 0, run.stderr
        (raw,) = out.rglob("*.npy")
        expected = np.load(raw)
        cell = result.levels[[0.0, 20.0].index(level)].maps[column]
        # tolerances on the scale of the noisy maps (0 % VarGrad is zero, up to rounding)
        scale = np.abs(result.levels[1].maps[-1]).max()
        np.testing.assert_allclose(cell, expected, rtol=1e-5, atol=1e-6 * scale)


class Counting(engine.Gradient):
    """The plain gradient, counting the rows of each call."""

    calls: list[int] = []

    def attribute(self, model, x, target, precision="fp32"):
        type(self).calls.append(x.shape[0])
        return super().attribute(model, x, target, precision)


@pytest.mark.parametrize("batch, calls", [(64, [1, 8, 8]), (3, [1, 3, 3, 2, 3, 3, 2])])
def test_the_engine_runs_once_per_noise_level(picture, tmp_path, monkeypatch, batch, calls):
    """max(samples) copies per level, in chunks of --batch-size, and one row at 0 %: no cell
    is computed on its own."""
    monkeypatch.setattr(explainer, "load_model", tiny_model)
    monkeypatch.setitem(engine.BASE_METHODS, "gradient", Counting)
    monkeypatch.setattr(Counting, "calls", [])
    result = sweep(picture, "--noise", "0,10,30", "--samples", "2,5,8", "--batch-size", batch,
                   "-o", tmp_path / "sweep.png")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert Counting.calls == calls
    assert sum(calls) == rows_of_work([0, 10, 30], [2, 5, 8])


def test_the_chunk_size_is_chosen_for_the_sweeps_passes(picture, tmp_path, monkeypatch):
    """As explain chooses it: the cached size, else timed when the sweep's passes pay."""
    from smoothgrad_cli import tuning

    monkeypatch.setattr(explainer, "load_model", tiny_model)
    monkeypatch.setitem(engine.BASE_METHODS, "gradient", Counting)
    monkeypatch.setattr(Counting, "calls", [])
    asked = []

    def choose(model, device, shape, precision, *, model_name=None, say=None, run_rows=None):
        asked.append(run_rows)
        return tuning.Choice(3, False, {}, cached=False)

    monkeypatch.setattr(tuning, "choose_batch_size", choose)
    result = sweep(picture, "--noise", "0,10", "--samples", "2,5", "-o", tmp_path / "s.png")
    assert result.exit_code == 0, result.stderr
    assert asked == [rows_of_work([0, 10], [2, 5])] == [6]
    assert Counting.calls == [1, 3, 2]


# --- what it prints and draws -----------------------------------------------------------------


def test_the_table_the_summary_and_the_figure(picture, tmp_path, monkeypatch):
    monkeypatch.setattr(explainer, "load_model", tiny_model)
    figure = tmp_path / "sweep.png"
    result = sweep(picture, "--noise", "0,10,30", "--samples", "1,4", "--dpi", "80", "-o", figure)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("noise"))
    assert "n=1" in header and "n=4" in header and "stable from" in header
    assert any(line.strip().startswith("30%") for line in lines)
    assert any(line.startswith("samples: ") for line in lines)
    assert any(line.startswith("noise: ") for line in lines)
    assert lines[-1] == f"figure: {figure}"
    # rows: the noise levels; columns: the sample counts; labels beside the rows, under cells
    assert_grid_size(figure, rows=3, cols=2, dpi=80, row_labels=True, cell_labels=True)


def test_a_bad_image_is_one_line_and_exit_1(tmp_path, monkeypatch):
    monkeypatch.setattr(explainer, "load_model", tiny_model)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = sweep(
        tmp_path / "bad.png", "--noise", "10", "--samples", "2", "-o", tmp_path / "s.png"
    )
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {tmp_path / 'bad.png'}: ")
    assert result.stdout == "" and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--noise", "10,abc"], "--noise takes a comma-separated list of numbers, got 'abc'"),
        (["--noise", "-5,10"], "--noise must be a percentage >= 0, got -5.0"),
        (["--samples", "0,5"], "--samples must be >= 1, got 0"),
        (["--samples", "2.5"], "--samples takes a comma-separated list of whole numbers"),
        (["--threshold", "1.5"], "--threshold must be a rank correlation in (0, 1], got 1.5"),
        (["-o", "s.gif"], "s.gif: unknown figure format '.gif'"),
        (["--smoothing", "none"], "--smoothing none takes no samples, so there is nothing"),
        (["--method", "guided-backprop", "--model", "silu"], "guided-backprop needs a model"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(picture, tmp_path, monkeypatch, options, message):
    def silu_model(name, weights):
        loaded = tiny_model()
        loaded.model[1] = nn.SiLU()
        return loaded

    monkeypatch.setattr(explainer, "load_model", silu_model)
    result = sweep(picture, "-o", tmp_path / "s.png", *options)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("smoothgrad: error: ") and message in line
    assert result.stdout == ""
