"""Quantus as a test oracle for ``check``'s measures, where the two define the same thing.

Quantus measures on the model's input grid with a segmentation mask of that grid; ``check``
measures in the photo's own pixels, each map pixel weighted by the share of its footprint
inside the region. When the photo *is* the model's input (no resize, no crop: the view is the
whole photo), the weights are the mask itself and the definitions agree:

* ``min_mass`` is Arras et al.'s relevance mass accuracy, Σ_mask a / Σ a
  (``quantus.RelevanceMassAccuracy``), of the normalised map (the paper's display);
* ``pointing`` with no tolerance is the pointing game (``quantus.PointingGame``) on
  |attribution| summed over channels: a hit when the largest pixel lies in the mask;
* ``spearman`` is Quantus' rank correlation (``similarity_func.correlation_spearman``).

The sanity check is not compared: it re-draws layers with its own random weights, so no two
libraries' numbers can agree. Everything else runs through the real code: the spec is read
from a file, the case runs in ``Checker``, and the map Quantus scores is the one ``Explainer``
makes with the case's settings (same seed, so the same map ``check`` scored).
"""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
from PIL import Image
from test_compare import SIZE, tiny_model

from smoothgrad_cli import MapSettings, render
from smoothgrad_cli.check import Checker, parse_spec
from smoothgrad_cli.check.metrics import (
    distance_to_region,
    mass_in_region,
    peak_point,
    region_weights,
    spearman,
)
from smoothgrad_cli.explainer import Explainer, PreparedModel

WHOLE = (0.0, 0.0, float(SIZE), float(SIZE))  # the view when the photo is the model's input


def quantus_scores(metric, model, x: np.ndarray, a: np.ndarray, masks: np.ndarray) -> list:
    """``metric`` on maps ``a`` (N, H, W) with masks (N, H, W), as Quantus is called with
    precomputed attributions (no explain_func), no absolute value and no normalisation."""
    n = a.shape[0]
    return metric(
        model=model,
        x_batch=np.repeat(x[None], n, axis=0),
        y_batch=np.zeros(n, dtype=int),
        a_batch=a[:, None].astype(np.float64),
        s_batch=masks[:, None].astype(np.float64),
        channel_first=True,
        device="cpu",
    )


def test_check_measures_equal_quantus_on_a_real_case(tmp_path):
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    settings = MapSettings(model="tiny", samples=6, seed=2, precision="fp32", batch_size=4)
    prepared = PreparedModel.load("tiny", device="cpu", loader=lambda name, weights: tiny_model())
    made = Explainer(settings, prepared)
    with Image.open(tmp_path / "p.png") as image:
        x = made.transform(image.convert("RGB"))
    assert prepared.loaded.crop_box(SIZE, SIZE) == pytest.approx(WHOLE)
    target = made.classes(made.predict(x[None]))[0][0]
    raw = made.attributions(x[None], [[target]])[0][0, 0]
    normalised = render.magnitude_map(raw)
    magnitude = np.abs(raw.astype(np.float64)).sum(axis=0)

    # masks: a random one, the peak's pixel with its neighbours (a hit), and all but it (a miss)
    i, j = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
    random_mask = rng.random((SIZE, SIZE)) > 0.55
    hit = np.zeros((SIZE, SIZE), dtype=bool)
    hit[max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3] = True
    masks = {"random": random_mask, "hit": hit, "miss": ~hit}
    cases = []
    for name, mask in masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"{name}.png")
        cases.append(
            f'[[case]]\nname = "{name}"\nimage = "p.png"\nmask = "{name}.png"\n'
            "min_mass = 0.01\npointing = true\n"
        )
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[defaults]\nmodel = "tiny"\nsamples = 6\nseed = 2\nprecision = "fp32"\n'
        f"target = {target}\n\n" + "\n".join(cases)
    )
    run = Checker(parse_spec(spec), device="cpu", loader=lambda name, weights: tiny_model()).run()
    by = {(r.case, r.check): r for r in run.results}

    model = tiny_model().model
    stacked = np.stack(list(masks.values()))
    theirs_mass = quantus_scores(
        quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True),
        model, x.numpy(), np.stack([normalised] * len(masks)), stacked,
    )  # fmt: skip
    theirs_hit = quantus_scores(
        quantus.PointingGame(abs=False, normalise=False, disable_warnings=True),
        model, x.numpy(), np.stack([magnitude] * len(masks)), stacked,
    )  # fmt: skip
    for name, mass, hit_ in zip(masks, theirs_mass, theirs_hit, strict=True):
        assert by[name, "min_mass"].value == pytest.approx(float(mass), rel=1e-12, abs=1e-15)
        ours_hit = by[name, "pointing"].value == 0  # the distance to the region, in pixels
        assert ours_hit == bool(hit_), name
    assert by["hit", "pointing"].passed and not by["miss", "pointing"].passed


@pytest.mark.parametrize("seed", range(5))
def test_mass_and_pointing_equal_quantus_on_random_maps_and_masks(seed):
    rng = np.random.default_rng(seed)
    n = 6
    maps = rng.random((n, SIZE, SIZE)) ** 3  # skewed, as saliency is
    masks = rng.random((n, SIZE, SIZE)) > rng.uniform(0.3, 0.9, (n, 1, 1))
    masks[:, 0, 0] = True  # never empty
    model = tiny_model().model
    x = rng.normal(size=(3, SIZE, SIZE)).astype(np.float32)
    theirs_mass = quantus_scores(
        quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True),
        model, x, maps, masks,
    )  # fmt: skip
    theirs_hit = quantus_scores(
        quantus.PointingGame(abs=False, normalise=False, disable_warnings=True),
        model, x, maps, masks,
    )  # fmt: skip
    for m, mask, mass, hit in zip(maps, masks, theirs_mass, theirs_hit, strict=True):
        weights = region_weights(m.shape, WHOLE, mask=mask)
        np.testing.assert_array_equal(weights, mask.astype(np.float64))
        assert mass_in_region(m, weights) == pytest.approx(float(mass), rel=1e-12)
        distance = distance_to_region(peak_point(m, WHOLE), mask=mask)
        assert (distance == 0) == bool(hit)


@pytest.mark.parametrize("seed", range(5))
def test_spearman_equals_quantus_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 200).astype(float)  # many ties
    b = a + rng.integers(0, 4, 200)
    c, d = rng.random(300), rng.random(300)
    for u, v in ((a, b), (c, d), (a, c[:200])):
        theirs = quantus.similarity_func.correlation_spearman(u, v)
        assert spearman(u, v) == pytest.approx(float(theirs), abs=1e-12)


def test_the_tiny_model_view_is_the_whole_photo():
    """What the comparison above rests on: a photo of the model's input size is seen whole."""
    loaded = tiny_model()
    assert loaded.crop_box(SIZE, SIZE) == pytest.approx(WHOLE)
    photo = torch.rand(3, SIZE, SIZE)
    assert loaded.transform(photo).shape == (3, SIZE, SIZE)
