"""What decides a map, in one frozen object, validated once (no torch here: ``--help`` lists
these choices without loading it).

``explain``'s options and ``check``'s ``[defaults]``/``[[case]]`` keys both become a
``MapSettings``; the enums below are what ``--help`` lists. The noise level is given in
percent of (max − min) of each model-input tensor, as the paper reports it; ``noise_level``
is the one place that turns it into the engine's fraction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

#: the default classifier, shipped with the package (see ``models``)
EMBEDDED = "efficientnet_lite0"


class Method(str, Enum):
    """The base method M_c(x) that is smoothed."""

    GRADIENT = "gradient"
    INPUT_X_GRADIENT = "input-x-gradient"
    INTEGRATED_GRADIENTS = "integrated-gradients"
    GUIDED_BACKPROP = "guided-backprop"


class Smoothing(str, Enum):
    """What is taken over the noisy maps: their mean, mean of squares, variance, or none."""

    SMOOTHGRAD = "smoothgrad"
    SMOOTHGRAD_SQ = "smoothgrad-sq"
    VARGRAD = "vargrad"
    NONE = "none"


class Baseline(str, Enum):
    """Integrated gradients' starting image x′ (Sturmfels et al. 2020 compare them); any
    other value is an image file, preprocessed as the inputs are."""

    BLACK = "black"
    WHITE = "white"
    BLUR = "blur"  # each input Gaussian-blurred: no edges, the same colours
    UNIFORM = "uniform"  # uniform noise pixels, drawn once from the seed


class Precision(str, Enum):
    FP32 = "fp32"
    FP32_STRICT = "fp32-strict"  # no TF32 on CUDA (engine.PRECISIONS)
    BF16 = "bf16"
    FP16 = "fp16"
    AUTO = "auto"


class SettingsError(ValueError):
    """A setting with a value no map can be made with. ``key`` names the setting;
    ``message(option)`` words the reason for the caller's own name of it (``--samples`` on
    the command line, ``samples`` in a spec)."""

    def __init__(self, key: str, template: str) -> None:
        super().__init__(template.format(option=key))
        self.key = key
        self.template = template

    def message(self, option: str) -> str:
        return self.template.format(option=option)

    def command_line_message(self) -> str:
        """Worded with the setting's option: ``top_k`` → ``--top-k``."""
        return self.message("--" + self.key.replace("_", "-"))


@dataclass(frozen=True)
class MapSettings:
    model: str = EMBEDDED
    weights: str | None = None
    labels: str | None = None  # a file of class names for the model's own head
    method: str = Method.GRADIENT.value
    smoothing: str = Smoothing.SMOOTHGRAD.value
    noise: float = 15.0  # percent of (max − min) of each image's model-input tensor
    samples: int = 50
    seed: int = 0
    ig_steps: int = 256  # integrated gradients: the most quadrature nodes
    #: integrated gradients: the completeness gap each map is refined to (0: ig_steps nodes)
    ig_tolerance: float = 0.05
    baseline: str = Baseline.BLACK.value  # integrated gradients: a name above or an image file
    precision: str = Precision.AUTO.value
    batch_size: int | None = None  # noisy copies per chunk; None: tuned or the default
    target: str | int | None = None  # a class index or name; None: the top-k predictions
    top_k: int = 1

    def __post_init__(self) -> None:
        for key, kind in (("method", Method), ("smoothing", Smoothing), ("precision", Precision)):
            value = getattr(self, key)
            value = value.value if isinstance(value, Enum) else value
            if value not in {choice.value for choice in kind}:
                choices = ", ".join(choice.value for choice in kind)
                raise SettingsError(key, f"unknown {{option}} {value!r}: use one of {choices}")
            object.__setattr__(self, key, value)  # plain strings, in JSON and comparisons
        if isinstance(self.baseline, Enum):
            object.__setattr__(self, "baseline", self.baseline.value)
        checks = (
            ("samples", self.samples >= 1, f"{{option}} must be >= 1, got {self.samples}"),
            (
                "noise",
                math.isfinite(self.noise) and self.noise >= 0,
                f"{{option}} must be a percentage >= 0, got {self.noise}",
            ),
            (
                "batch_size",
                self.batch_size is None or self.batch_size >= 1,
                "{option} must be >= 1",
            ),
            ("ig_steps", self.ig_steps >= 1, f"{{option}} must be >= 1, got {self.ig_steps}"),
            (
                "ig_tolerance",
                math.isfinite(self.ig_tolerance) and self.ig_tolerance >= 0,
                f"{{option}} must be a fraction >= 0 (0.05 is 5 %), got {self.ig_tolerance}",
            ),
            ("top_k", self.top_k >= 1, f"{{option}} must be >= 1, got {self.top_k}"),
        )
        for key, ok, template in checks:
            if not ok:
                raise SettingsError(key, template)
        if self.target is not None and self.top_k > 1:
            raise SettingsError(
                "top_k",
                "--target and --top-k are exclusive: one names the class, the other ranks them",
            )

    def warnings(self, option: str = "--noise") -> list[str]:
        """Values that are valid but most likely not meant (said, not refused): a noise
        level under 1 % reads like a fraction (PAIR's ``stdev_spread=0.15`` is 15 % here),
        one over 100 % buries the image in its noise."""
        said = []
        smoothed = self.smoothing != Smoothing.NONE
        if smoothed and 0 < self.noise < 1:
            said.append(
                f"{option} {self.noise:g} is {self.noise:g} % of the input range, not "
                f"{self.noise * 100:g} %: the noise level is a percentage (the paper's 10–20 % "
                f"is {option} 10 to 20; PAIR's stdev_spread={self.noise:g} is {option} "
                f"{self.noise * 100:g})"
            )
        elif smoothed and self.noise > 100:
            said.append(
                f"{option} {self.noise:g} is more than 100 % of the input range: the noise "
                "buries the image (the paper finds 10–20 % best)"
            )
        return said

    @property
    def noise_level(self) -> float:
        """σ / (max − min): the engine's fraction for the percent given."""
        return self.noise / 100.0

    @property
    def model_key(self) -> tuple[str, str | None, str | None]:
        """What the model depends on: settings with the same key share one loaded model."""
        return (self.model, self.weights, self.labels)

    def replace(self, **changes: Any) -> MapSettings:
        return dataclasses.replace(self, **changes)

    def parameters(self) -> dict[str, Any]:
        """What determines a map, for the manifest and JSON (IG's settings only for IG)."""
        values = {
            key: getattr(self, key)
            for key in (
                "model",
                "weights",
                "method",
                "smoothing",
                "noise",
                "samples",
                "seed",
                "ig_steps",
                "ig_tolerance",
                "precision",
            )
        }
        if self.method == Method.INTEGRATED_GRADIENTS:
            values["baseline"] = self.baseline
        else:
            values.pop("ig_steps")
            values.pop("ig_tolerance")
        return values


__all__ = ["Baseline", "MapSettings", "Method", "Precision", "SettingsError", "Smoothing"]
