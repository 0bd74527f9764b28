"""The README's library examples run as they are written: a user copies them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README's ``## section``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_the_library_examples_run_as_written(monkeypatch):
    monkeypatch.chdir(ROOT)  # the example's photo path is relative to the repository
    photos, engine_only = python_blocks("As a library")

    scope: dict = {}
    exec(compile(photos, "README.md (photos to maps)", "exec"), scope)
    explanation = scope["explanation"]
    assert explanation.maps[0].shape == (3, 224, 224) and explanation.maps[0].dtype == np.float32
    assert explanation.class_names == ["espresso"]
    assert explanation.probabilities.shape == (1000,)

    torch.manual_seed(0)
    my_classifier = nn.Sequential(  # the reader's own model: any classifier of 224² images
        nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 5),
    )  # fmt: skip
    scope = {"my_classifier": my_classifier}
    exec(compile(engine_only, "README.md (the engine)", "exec"), scope)
    maps = scope["maps"]
    assert maps.shape == (4, 3, 224, 224) and torch.isfinite(maps).all() and maps.abs().sum() > 0
