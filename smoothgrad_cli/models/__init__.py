"""Classifiers by name, each with the preprocessing it was trained with, its class names and
the geometry that maps model-input pixels back onto the photo. Three families:

* the embedded EfficientNet-Lite0 (``efficientnet_lite0``, the default) and every
  torchvision classifier by name (``resnet50``): ``lite0``, ``torchvision_models``;
* timm models, ``timm:ARCH[.TAG]``: ``timm_models``;
* transformers image classifiers, ``hf:FOLDER`` or ``hf:org/name``: ``hf_models``.

Every file of weights, whatever the family, is read by ``checkpoints.read_state_dict``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from ..errors import did_you_mean
from ..model_names import HF, TIMM, looks_like_file, model_beside
from ..settings import EMBEDDED
from . import hf_models, hub, lite0, timm_models, torchvision_models
from .base import LoadedModel, ModelError, ModelInfo, crop_box
from .checkpoints import read_state_dict, torch_home
from .lite0 import EMBEDDED_PACKAGE, embedded_weights_file, lite0_key_map
from .preprocess import Preprocess
from .torchvision_models import classification_models, imagenet_categories


def load_model(name: str = EMBEDDED, weights: str | None = None) -> LoadedModel:
    """Build ``name`` with ``weights`` (an enum name such as ``DEFAULT``, a timm tag, or a
    local file: ``.pt``/``.pth``/``.bin`` state dict or ``.safetensors``).

    Raises ``ModelError`` with a one-line reason. The model is in eval mode on the CPU; see
    ``engine.prepare_model`` for freezing and moving it.
    """
    is_file = weights is not None and looks_like_file(weights)
    if name.startswith(TIMM):
        return timm_models.load(name, weights, is_file)
    if name.startswith(HF):
        return hf_models.load(name, weights, is_file)
    if name == EMBEDDED:
        return lite0.load(weights, is_file)
    if name not in classification_models():
        raise ModelError(
            f"unknown model {name!r}{_hint(name)} (`smoothgrad models` lists the "
            f"classifiers; {TIMM}NAME and {HF}NAME_OR_FOLDER name timm and "
            "transformers models)"
        )
    return torchvision_models.load(name, weights, is_file)


def _hint(name: str) -> str:
    """A "did you mean": the saved folder or timm model meant, or close torchvision names."""
    if Path(name, "config.json").is_file():
        return f"; did you mean '{HF}{name}'?"
    import timm

    if timm.is_model(name.split(".", 1)[0]):
        return f"; did you mean '{TIMM}{name}'?"
    return did_you_mean(name, [EMBEDDED, *classification_models()])


def list_models(pattern: str | None = None) -> list[ModelInfo]:
    """Classifiers matching a glob (or substring) pattern, marked usable offline or not:
    the embedded and torchvision ones; timm's for ``timm:PATTERN``; the transformers
    classifiers in the hub cache for ``hf:[PATTERN]``."""
    if pattern and pattern.startswith(TIMM):
        return timm_models.infos(pattern.removeprefix(TIMM))
    if pattern and pattern.startswith(HF):
        return hf_models.infos(pattern.removeprefix(HF))
    names = [EMBEDDED, *classification_models()]
    if pattern:
        glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, glob)]
    return [
        ModelInfo(n, EMBEDDED_PACKAGE, True, "embedded (default)")
        if n == EMBEDDED
        else torchvision_models.info(n)
        for n in names
    ]


def weights_cache(pattern: str | None = None) -> str:
    """Where the weights of the models ``pattern`` lists are kept, for ``smoothgrad models``."""
    if pattern and pattern.startswith((TIMM, HF)):
        return f"weights cache: {hub.hub_cache()} (set HF_HOME to move it)"
    return f"weights cache: {torch_home()} (set TORCH_HOME to move it)"


__all__ = [
    "EMBEDDED", "EMBEDDED_PACKAGE", "HF", "TIMM", "LoadedModel", "ModelError", "ModelInfo",
    "Preprocess", "classification_models", "crop_box", "embedded_weights_file",
    "imagenet_categories", "lite0_key_map", "list_models", "load_model", "looks_like_file",
    "model_beside", "read_state_dict", "torch_home", "weights_cache",
]  # fmt: skip
