"""The check package's structure: check names come from the registry of check functions, and
a case's settings are a ``MapSettings`` whose explainer is shared by cases that agree."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.transforms._presets import ImageClassification

from smoothgrad_cli import check
from smoothgrad_cli.check import checks, metrics
from smoothgrad_cli.check.spec import Case, Region, Sanity
from smoothgrad_cli.explainer import Explainer
from smoothgrad_cli.models import LoadedModel
from smoothgrad_cli.settings import MapSettings

COFFEE = Path(__file__).resolve().parents[1] / "sample_images" / "coffee.png"

#: the report order of a case's results, which JSON and JUnit consumers see
REPORT_ORDER = (
    "expect_class", "min_probability", "min_mass", "pointing",
    "min_rank_correlation", "max_mean_abs_diff", "sanity", "max_ig_gap",
)  # fmt: skip


def test_check_names_are_the_registry_in_order():
    assert checks.CHECK_NAMES == tuple(checks.CHECKS)
    assert check.CHECK_NAMES is checks.CHECK_NAMES
    assert checks.CHECK_NAMES == REPORT_ORDER
    for name, kind in checks.CHECKS.items():
        assert kind.name == name and callable(kind.run) and callable(kind.applies)


def _case(**checks_given) -> Case:
    return Case(name="c", image=COFFEE, settings=MapSettings(), **checks_given)


EVERY_KIND = {
    "expect_class": [967],
    "min_probability": 0.5,
    "region": Region(box=(0, 0, 10, 10), source="box"),
    "min_mass": 0.5,
    "pointing": True,
    "golden": Path("g.npy"),
    "min_rank_correlation": 0.9,
    "max_mean_abs_diff": 0.1,
    "sanity": Sanity(),
    "max_ig_gap": 0.05,
}


def test_a_case_with_every_kind_lists_each_kind():
    assert _case(**EVERY_KIND).check_names() == list(checks.CHECK_NAMES)
    assert _case().check_names() == []


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ({"expect_class": [1]}, ["expect_class"]),
        ({"expect_class": [1], "min_probability": 0.1}, ["expect_class", "min_probability"]),
        ({"region": EVERY_KIND["region"], "min_mass": 0.5}, ["min_mass"]),
        ({"region": EVERY_KIND["region"], "pointing": True}, ["pointing"]),
        ({"golden": Path("g.npy"), "max_mean_abs_diff": 0.1}, ["max_mean_abs_diff"]),
        ({"sanity": Sanity(layers=2)}, ["sanity"]),
    ],
)
def test_each_kind_on_its_own(given, names):
    assert _case(**given).check_names() == names


def test_parsed_case_with_every_kind_lists_each_kind(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [[case]]
            name = "all"
            image = "{COFFEE}"
            expect_class = "espresso"
            min_probability = 0.5
            region = [170, 15, 410, 310]
            min_mass = 0.6
            pointing = true
            golden = "g.npy"
            min_rank_correlation = 0.9
            max_mean_abs_diff = 0.1
            sanity = true
            method = "integrated-gradients"
            max_ig_gap = 0.05
            """
        )
    )
    (case,) = check.parse_spec(spec).cases
    assert case.check_names() == list(checks.CHECK_NAMES)


def test_one_spearman_for_the_project():
    assert check.spearman is metrics.spearman
    assert checks.spearman is metrics.spearman


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_settings_are_map_settings_and_explainers_are_shared(tmp_path):
    loads = []

    def loader(name, weights):
        loads.append((name, weights))
        torch.manual_seed(0)
        transform = ImageClassification(crop_size=32, resize_size=36)
        return LoadedModel("tiny", "random", _Tiny().eval(), transform, ["a", "b", "c"])

    spec = tmp_path / "spec.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [defaults]
            samples = 2
            [[case]]
            name = "a"
            image = "{COFFEE}"
            expect_class = "a"
            top_k = 3
            [[case]]
            name = "b"
            image = "{COFFEE}"
            sanity = true
            [[case]]
            name = "c"
            image = "{COFFEE}"
            sanity = true
            seed = 1
            """
        )
    )
    parsed = check.parse_spec(spec)
    # check's precision default is fp32; its top_k is for expect_class, not the map's
    assert parsed.cases[0].settings == MapSettings(samples=2, precision="fp32")
    assert parsed.cases[0].top_k == 3
    checker = check.Checker(parsed, device="cpu", loader=loader)
    checker.prepare()
    assert len(loads) == 1  # one model key, loaded once
    a, b, c = (checker.explainers[name] for name in "abc")
    assert isinstance(a, Explainer) and a is b and c is not a
    assert c.prepared is a.prepared
    run = checker.run()
    assert [r.check for r in run.results] == ["expect_class", "sanity", "sanity"]
