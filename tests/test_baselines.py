"""Integrated gradients from other starting images: white, blurred, uniform noise, a file.

A linear model makes the check exact: for S(x) = w·x + b, IG's map is (x − x′) ⊙ w whatever the
number of steps, and it sums to S(x) − S(x′) (completeness)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms._presets import ImageClassification
from torchvision.transforms.functional import gaussian_blur
from typer.testing import CliRunner

from smoothgrad_cli import Explainer, MapSettings, engine, explainer
from smoothgrad_cli.check import Checker, parse_spec
from smoothgrad_cli.cli import app
from smoothgrad_cli.explainer import BLUR_SIGMA, PreparedModel
from smoothgrad_cli.models import LoadedModel
from smoothgrad_cli.settings import SettingsError

SIZE = 16


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * SIZE * SIZE, 3)
        torch.nn.init.normal_(self.fc.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.fc(x.flatten(1))


def loaded_linear() -> LoadedModel:
    transform = ImageClassification(
        crop_size=SIZE, resize_size=SIZE, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)
    )
    return LoadedModel("linear", "random", Linear().eval(), transform, ["a", "b", "c"])


@pytest.fixture()
def prepared() -> PreparedModel:
    return PreparedModel.load("linear", device="cpu", loader=lambda m, w: loaded_linear())


@pytest.fixture()
def photo() -> Image.Image:
    pixels = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def ig(prepared, baseline: str, **changes) -> Explainer:
    settings = MapSettings(
        method="integrated-gradients", smoothing="none", ig_steps=3, precision="fp32",
        baseline=baseline, **changes,
    )  # fmt: skip
    return Explainer(settings, prepared)


def x_prime(explainer: Explainer, x: torch.Tensor) -> torch.Tensor:
    base = explainer.smoother.base.baseline
    return base(x) if callable(base) else base.expand_as(x)


@pytest.mark.parametrize("baseline", ["black", "white", "uniform", "blur"])
def test_the_map_is_x_minus_the_baseline_times_the_weights_and_complete(prepared, photo, baseline):
    e = ig(prepared, baseline)
    x = e.transform(photo)[None]
    explanation = e.explain(x)[0]
    c = explanation.classes[0]
    weight = e.model.fc.weight[c].detach().view(1, 3, SIZE, SIZE)
    start = x_prime(e, x)
    np.testing.assert_allclose(explanation.maps[0], ((x - start) * weight)[0], atol=1e-5)
    with torch.no_grad():
        gap = e.model(x)[0, c] - e.model(start)[0, c]
    assert explanation.maps[0].sum() == pytest.approx(float(gap), rel=1e-4, abs=1e-4)


def test_each_named_baseline_is_the_image_it_says(prepared, photo):
    loaded = prepared.loaded
    mean = torch.tensor(loaded.mean).view(3, 1, 1)
    std = torch.tensor(loaded.std).view(3, 1, 1)
    x = ig(prepared, "black").transform(photo)[None]
    torch.testing.assert_close(
        x_prime(ig(prepared, "black"), x)[0, :, 0, 0], (-mean / std)[:, 0, 0]
    )
    torch.testing.assert_close(
        x_prime(ig(prepared, "white"), x)[0, :, 0, 0], ((1 - mean) / std)[:, 0, 0]
    )
    # uniform: pixels in [0, 1], drawn from the seed alone
    uniform = x_prime(ig(prepared, "uniform"), x)[0] * std + mean
    assert 0 <= float(uniform.min()) and float(uniform.max()) <= 1 and uniform.std() > 0.2
    torch.testing.assert_close(
        x_prime(ig(prepared, "uniform"), x), x_prime(ig(prepared, "uniform"), x)
    )
    assert not torch.equal(
        x_prime(ig(prepared, "uniform", seed=1), x), x_prime(ig(prepared, "uniform"), x)
    )
    # blur: each input Gaussian-blurred, σ = 5 % of its side
    sigma = BLUR_SIGMA * SIZE
    kernel = 2 * int(np.ceil(3 * sigma)) + 1
    torch.testing.assert_close(
        x_prime(ig(prepared, "blur"), x), gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    )


def test_an_image_file_is_preprocessed_as_the_inputs_are(prepared, photo, tmp_path):
    reference = tmp_path / "reference.png"
    Image.new("RGB", (40, 30), (10, 200, 90)).save(reference)
    e = ig(prepared, str(reference))
    expected = prepared.loaded.transform(Image.open(reference).convert("RGB"))
    torch.testing.assert_close(e.smoother.base.baseline, expected)


def test_a_baseline_that_is_neither_a_name_nor_an_image_is_refused(prepared, tmp_path):
    with pytest.raises(SettingsError) as info:
        ig(prepared, str(tmp_path / "nope.png"))
    assert info.value.key == "baseline"
    assert "not black, white, blur or uniform, and not an image that can be used" in str(info.value)


def test_callable_baselines_are_applied_per_chunk_as_the_tensor_would_be():
    model = Linear().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    target = torch.tensor([0, 1])
    constant = torch.full((3, 1, 1), 0.3)
    by_tensor = engine.IntegratedGradients(4, baseline=constant).attribute(model, x, target)
    by_function = engine.IntegratedGradients(4, baseline=lambda rows: constant.expand_as(rows))
    torch.testing.assert_close(by_function.attribute(model, x, target), by_tensor)


def test_explain_and_check_take_the_baseline(tmp_path, monkeypatch, photo):
    monkeypatch.setattr(explainer, "load_model", lambda m, w: loaded_linear())
    photo.save(tmp_path / "p.png")
    result = CliRunner().invoke(
        app,
        ["explain", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"), "--method",
         "integrated-gradients", "--baseline", "white", "--smoothing", "none",
         "--batch-size", "2", "--device", "cpu", "-q", "--save-raw"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    line = json.loads((tmp_path / "out" / "manifest.jsonl").read_text())
    assert line["parameters"]["baseline"] == "white"
    bad = CliRunner().invoke(
        app,
        ["explain", str(tmp_path / "p.png"), "-o", str(tmp_path / "o2"), "--method",
         "integrated-gradients", "--baseline", "nope.png", "--device", "cpu", "-q"],
    )  # fmt: skip
    assert bad.exit_code == 2
    assert bad.stderr.startswith("smoothgrad: error: nope.png: not black, white, blur or uniform")
    assert len(bad.stderr.splitlines()) == 1
    # in a spec, a baseline file lies beside the spec
    (tmp_path / "spec").mkdir()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(tmp_path / "spec" / "grey.png")
    (tmp_path / "spec" / "s.toml").write_text(
        textwrap.dedent(
            f"""
            [defaults]
            method = "integrated-gradients"
            smoothing = "none"
            baseline = "grey.png"
            [[case]]
            name = "p"
            image = "{tmp_path / "p.png"}"
            region = [0, 0, 8, 16]
            pointing = true
            pointing_tolerance = 100
            """
        )
    )
    spec = parse_spec(tmp_path / "spec" / "s.toml")
    assert spec.cases[0].settings.baseline == str(tmp_path / "spec" / "grey.png")
    run = Checker(spec, device="cpu", loader=lambda m, w: loaded_linear()).run()
    assert run.exit_code == 0, [r.message for r in run.results]
