"""What every family's loader returns: a ``LoadedModel`` (the network, its preprocessing and
class names), a ``ModelInfo`` row for ``smoothgrad models``, and ``ModelError``."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.transforms._presets import ImageClassification

from ..errors import did_you_mean
from ..terminal import is_a_terminal
from .preprocess import Preprocess, as_preprocess


class ModelError(Exception):
    """A model or its weights cannot be loaded; the message is one line, fit for users."""


@dataclass
class LoadedModel:
    """A classifier in eval mode on the CPU whose forward returns ``(N, classes)`` scores.

    ``transform`` is a ``Preprocess`` or, for models built in code, torchvision's
    ``ImageClassification`` preset; either way ``preprocess`` gives its geometry.
    """

    name: str
    weights: str
    model: nn.Module
    transform: Preprocess | ImageClassification
    categories: list[str]
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def preprocess(self) -> Preprocess:
        return as_preprocess(self.transform)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One input's ``(C, H, W)``: the crop, which need not be square."""
        return (3, *self.preprocess.size)

    @property
    def crop_size(self) -> int:
        """The input's height (its side, for the square inputs of nearly every model)."""
        return int(self.preprocess.size[0])

    @property
    def resize_size(self) -> int:
        resize = self.preprocess.resize
        return int(resize if isinstance(resize, int) else resize[0])

    @property
    def mean(self) -> tuple[float, ...]:
        """Per channel, for pixel values in [0, 1]."""
        return self.preprocess.unit_mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocess.unit_std

    def black_baseline(self) -> torch.Tensor:
        """A black image in the model's input space, ``(C, 1, 1)``: (0 − mean) / std."""
        return self.to_input_space(torch.zeros(3, 1, 1))

    def to_input_space(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values in [0, 1], ``(C, H, W)`` → the model's input: (v − mean) / std."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (pixels - mean) / std

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width × height`` photo the model sees, in the photo's pixels: the
        resize and centred crop of the model's preprocessing, inverted exactly, so maps can
        be laid back on the photo."""
        return self.preprocess.crop_box(width, height)

    def class_index(self, target: str) -> int:
        """A class index from an index or a class name (case-insensitive)."""
        if re.fullmatch(r"\d+", target.strip()):
            index = int(target)
            if index >= len(self.categories):
                raise ValueError(
                    f"class index {index} out of range: {self.name} has "
                    f"{len(self.categories)} classes (0–{len(self.categories) - 1})"
                )
            return index
        if target.strip() in self.categories:  # exact case first: "Cardigan" ≠ "cardigan"
            return self.categories.index(target.strip())
        lowered = [c.lower() for c in self.categories]
        wanted = target.strip().lower()
        if lowered.count(wanted) > 1:
            found = [f"{i} ({self.categories[i]!r})" for i, c in enumerate(lowered) if c == wanted]
            raise ValueError(
                f"class name {target!r} is ambiguous for {self.name}: {', '.join(found)}; "
                "give the index or the exact name"
            )
        if wanted in lowered:
            return lowered.index(wanted)
        hint = did_you_mean(wanted, lowered, show=lambda c: repr(self.categories[lowered.index(c)]))
        raise ValueError(f"unknown class name {target!r} for {self.name}{hint}")


def crop_box(
    width: int, height: int, resize_size: int, crop_size: int
) -> tuple[float, float, float, float]:
    """``crop_box`` of torchvision's preset: shorter side to ``resize_size``, a centred
    square of ``crop_size``."""
    preset = Preprocess((crop_size, crop_size), resize_size, (0.0,) * 3, (1.0,) * 3)
    return preset.crop_box(width, height)


def stderr_is_a_terminal() -> bool:
    """Whether download progress bars belong on stderr: on a terminal they redraw one line;
    in a log they would write a line (or a carriage return) per update."""
    return is_a_terminal(sys.stderr)


def first_line(exc: BaseException) -> str:
    """What an error says is wrong, in one line: past the paragraphs of advice torch.load's
    errors open with; for load_state_dict, the line after "Error(s) in loading state_dict…:"."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(advice)] or lines
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[1]
    return lines[0] if lines else type(exc).__name__


def check_scores(model: nn.Module, input_shape: tuple[int, ...], classes: int, name: str) -> None:
    """One forward pass of two black inputs: the engine takes a model's output as class
    scores ``(N, classes)``, so anything else (features, an output object, a tuple) is
    refused here, in one line, rather than failing inside the first map."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:
        shape = "×".join(str(n) for n in input_shape[1:])
        raise ModelError(
            f"{name}: the model fails on a {shape} input ({type(exc).__name__}: "
            f"{first_line(exc)[:160]})"
        ) from exc
    if isinstance(out, torch.Tensor) and tuple(out.shape) == (2, classes):
        return
    got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
    raise ModelError(
        f"{name}: its forward returns {got} for 2 images, not class scores of shape "
        f"(N, {classes}): not a classifier's output"
    )


def numbered_classes(count: int) -> list[str]:
    """The names of a head nothing names: ``class 0 … class K−1``."""
    return [f"class {i}" for i in range(count)]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    default_weights: str
    offline: bool
    note: str
