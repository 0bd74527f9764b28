"""The explanation layer every command stands on: settings validated once, the explainer's
maps equal to the engine's built by hand, classes and probabilities, and ``predict``."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from smoothgrad_cli import Explainer, MapSettings, engine
from smoothgrad_cli.cli import app
from smoothgrad_cli.explainer import PreparedModel
from smoothgrad_cli.settings import Method, Precision, SettingsError, Smoothing

ESPRESSO = 967


def test_the_enums_name_what_the_engine_implements():
    assert [m.value for m in Method] == list(engine.BASE_METHODS)
    assert [s.value for s in Smoothing] == list(engine.SMOOTHINGS)
    assert [p.value for p in Precision] == list(engine.PRECISIONS)


def test_settings_are_plain_strings_and_the_noise_becomes_a_fraction_once():
    settings = MapSettings(method=Method.INTEGRATED_GRADIENTS, noise=20)
    assert settings.method == "integrated-gradients" and type(settings.method) is str
    assert settings.noise_level == pytest.approx(0.2)
    assert "ig_steps" in settings.parameters()
    assert "ig_steps" not in MapSettings().parameters()
    with pytest.raises(AttributeError):
        settings.samples = 3  # frozen


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"samples": 0}, "samples", "--samples must be >= 1, got 0"),
        ({"noise": float("nan")}, "noise", "--noise must be a percentage >= 0, got nan"),
        ({"method": "nope"}, "method", "unknown --method 'nope': use one of gradient, "),
        ({"top_k": 2, "target": "cat"}, "top_k", "--target and --top-k are exclusive"),
    ],
)
def test_settings_refuse_what_no_map_can_be_made_with(changes, key, message):
    with pytest.raises(SettingsError) as info:
        MapSettings(**changes)
    assert info.value.key == key
    assert info.value.command_line_message().startswith(message)


def test_a_spec_words_the_same_error_with_its_own_key_name():
    with pytest.raises(SettingsError) as info:
        MapSettings(ig_steps=0)
    assert info.value.message("ig_steps") == "ig_steps must be >= 1, got 0"
    assert info.value.command_line_message() == "--ig-steps must be >= 1, got 0"


@pytest.fixture(scope="module")
def coffee_photo(sample_images) -> Image.Image:
    with Image.open(sample_images / "coffee.png") as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def prepared(lite0) -> PreparedModel:
    return PreparedModel.load(
        "efficientnet_lite0", device="cpu", loader=lambda m, w: copy.deepcopy(lite0)
    )


def test_explainer_map_is_the_engines_map_built_by_hand(lite0, prepared, coffee_photo):
    settings = MapSettings(samples=3, noise=15, seed=4, precision="fp32", batch_size=2)
    explanation = Explainer(settings, prepared).explain_photos([coffee_photo])[0]
    model = engine.prepare_model(copy.deepcopy(lite0.model), "cpu", input_shape=(3, 224, 224))
    x = lite0.transform(coffee_photo)[None]
    by_hand = engine.SmoothGrad(
        engine.Gradient(), noise_level=0.15, samples=3, seed=4, precision="fp32"
    ).attribute(model, x, [ESPRESSO])
    assert explanation.classes == [ESPRESSO] and explanation.class_names == ["espresso"]
    np.testing.assert_allclose(explanation.maps[0], by_hand[0].numpy(), rtol=1e-5, atol=1e-7)
    probabilities = engine.predict(model, x)[0].numpy()
    np.testing.assert_allclose(explanation.probabilities, probabilities, rtol=1e-5)
    assert explanation.rank(ESPRESSO) == 1 and explanation.problem is None


def test_integrated_gradients_uses_the_black_baseline(lite0, prepared, coffee_photo):
    settings = MapSettings(
        method="integrated-gradients", smoothing="none", ig_steps=4, precision="fp32"
    )
    explainer = Explainer(settings, prepared)
    base = explainer.smoother.base
    assert isinstance(base, engine.IntegratedGradients)
    torch.testing.assert_close(base.baseline, lite0.black_baseline())


def test_top_k_and_target(prepared, coffee_photo):
    top3 = Explainer(MapSettings(samples=2, top_k=3, precision="fp32"), prepared)
    explanation = top3.explain_photos([coffee_photo])[0]
    assert explanation.maps.shape == (3, 3, 224, 224)
    assert explanation.classes[0] == ESPRESSO
    p = explanation.probabilities
    assert list(p[explanation.classes]) == sorted(p[explanation.classes], reverse=True)
    assert [explanation.rank(c) for c in explanation.classes] == [1, 2, 3]
    second = explanation.classes[1]
    by_target = top3.with_settings(MapSettings(samples=2, target=str(second), precision="fp32"))
    targeted = by_target.explain_photos([coffee_photo])[0]
    assert targeted.classes == [second]
    # the same noise for each class: the target's map is the top-k's second map
    np.testing.assert_allclose(targeted.maps[0], explanation.maps[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("changes", "key", "text"),
    [
        ({"target": "no such class"}, "target", "unknown class name 'no such class'"),
        ({"top_k": 1001}, "top_k", "top_k 1001 exceeds the model's 1000 classes"),
    ],
)
def test_settings_this_model_cannot_take_are_refused_when_the_explainer_is_made(
    prepared, changes, key, text
):
    with pytest.raises(SettingsError) as info:
        Explainer(MapSettings(**changes), prepared)
    assert info.value.key == key and text in info.value.message(key)


def test_guided_backprop_is_refused_on_activations_it_cannot_guide():
    class GELUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.act = torch.nn.GELU()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.act(self.conv(x)).mean((2, 3)))

    from torchvision.transforms._presets import ImageClassification

    from smoothgrad_cli.models import LoadedModel

    loaded = LoadedModel(
        "gelu", "random", GELUNet().eval(), ImageClassification(crop_size=8), ["a", "b"]
    )
    prepared = PreparedModel.load("gelu", device="cpu", loader=lambda m, w: loaded)
    with pytest.raises(SettingsError) as info:
        Explainer(MapSettings(method="guided-backprop"), prepared)
    assert info.value.key == "method" and "GELU" in str(info.value)


# --- smoothgrad predict: the smallest command on the explainer ----------------------------------


def test_predict_prints_the_top_k_classes_as_json(sample_images, lite0):
    result = CliRunner().invoke(
        app,
        ["predict", str(sample_images / "coffee.png"), "--top-k", "3", "--json", "--device", "cpu"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    predictions = line["predictions"]
    assert [p["rank"] for p in predictions] == [1, 2, 3]
    assert predictions[0]["class_name"] == "espresso" and predictions[0]["class_index"] == ESPRESSO
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert probabilities[0] == pytest.approx(0.951, abs=0.002)
    assert result.stderr.strip().splitlines()[-1] == "1 image classified"


def test_predict_table_and_a_bad_input(sample_images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    result = CliRunner().invoke(
        app,
        ["predict", str(sample_images / "chelsea.png"), str(bad), "--device", "cpu"],
        env={"COLUMNS": "200"},
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert "tiger cat (282)" in result.stdout and "outputs" not in result.stdout
    assert len([x for x in result.stdout.splitlines() if "chelsea.png" in x]) == 1
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert errors == [f"error: {bad}: not an image file Pillow can read"]
    assert result.stderr.strip().splitlines()[-1] == "1 image classified, 1 failed"


@pytest.mark.parametrize(
    ("noise", "said"),
    [
        (0.15, "--noise 0.15 is 0.15 % of the input range, not 15 %: the noise level is a "
         "percentage (the paper's 10–20 % is --noise 10 to 20; PAIR's stdev_spread=0.15 is "
         "--noise 15)"),
        (150, "--noise 150 is more than 100 % of the input range: the noise buries the image "
         "(the paper finds 10–20 % best)"),
        (15, None),
        (0, None),
        (100, None),
    ],
)  # fmt: skip
def test_noise_levels_that_look_like_a_fraction_or_exceed_100_percent_are_said(noise, said):
    settings = MapSettings(noise=noise)
    assert settings.warnings() == ([said] if said else [])
    assert MapSettings(noise=noise, smoothing="none").warnings() == []  # no noise is used


def test_explain_says_the_noise_warning_once_on_stderr(sample_images, tmp_path):
    result = CliRunner().invoke(
        app,
        ["explain", str(sample_images / "coffee.png"), "-o", str(tmp_path), "-n", "1",
         "--noise", "0.15", "--batch-size", "1", "--device", "cpu", "-q"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [x for x in result.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --noise 0.15 is 0.15 %")
