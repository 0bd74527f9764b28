"""Every torchvision classification model by name, with an enum's weights (fetched into the
torch hub cache) or a local state dict; preprocessing from ``weights.transforms()`` and class
names from ``weights.meta["categories"]``."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torchvision
from torchvision.models import ResNet50_Weights

from .base import LoadedModel, ModelError, ModelInfo, first_line, numbered_classes
from .checkpoints import (
    CACHE_REMEDY,
    checkpoint_path,
    fetch_checkpoint,
    fit_state,
    num_classes,
    read_state_dict,
)

_BUILD_LOCK = threading.Lock()


def imagenet_categories() -> list[str]:
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def info(name: str) -> ModelInfo:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = checkpoint_path(weights.url).is_file()
    note = "cached" if cached else "download on first use"
    return ModelInfo(name, str(weights).split(".", 1)[1], cached, note)


def load(name: str, weights: str | None, is_file: bool) -> LoadedModel:
    """``name`` (a torchvision classifier) with an enum's weights or a local file."""
    enum = torchvision.models.get_model_weights(name)
    if weights is not None and is_file:
        default = enum.DEFAULT
        state = read_state_dict(weights)
        kwargs = _builder_kwargs(name, state)
        with torch.device("meta"):  # the network's order of keys, without its weights
            order = list(torchvision.models.get_model(name, weights=None, **kwargs).state_dict())
        classes = num_classes(state, len(default.meta["categories"]), order=order)
        model = torchvision.models.get_model(name, weights=None, num_classes=classes, **kwargs)
        fit_state(model, state, weights, name)
        categories = (
            list(default.meta["categories"])
            if classes == len(default.meta["categories"])
            else numbered_classes(classes)
        )
        return LoadedModel(name, str(Path(weights)), model.eval(), default.transforms(), categories)

    try:
        chosen = enum.DEFAULT if weights is None else enum[weights.upper()]
    except KeyError:
        choices = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ModelError(
            f"unknown weights {weights!r} for {name}: use one of {choices}, or a local file"
        ) from None
    checkpoint = fetch_checkpoint(chosen.url, name, str(chosen))
    state = read_state_dict(checkpoint, remedy=f"; {CACHE_REMEDY}")
    try:
        # torchvision's builder, not weights=None + load_state_dict: some builders adapt the
        # network to its weights (googlenet/inception_v3 transform_input, ViT SWAG image size).
        with _builder_gets(chosen, state):
            model = torchvision.models.get_model(name, weights=chosen, progress=False)
    except ModelError:
        raise
    except Exception as exc:  # the file is a state dict, but not one that fits the network
        raise ModelError(
            f"cached weights {checkpoint} for {name} cannot be loaded "
            f"({type(exc).__name__}: {first_line(exc)[:200]}); {CACHE_REMEDY}"
        ) from exc
    return LoadedModel(
        name, chosen.name, model.eval(), chosen.transforms(), list(chosen.meta["categories"])
    )


@contextmanager
def _builder_gets(weights, state: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """While torchvision builds a model, ``weights.get_state_dict()`` returns ``state``.

    Every torchvision builder fetches its weights with ``weights.get_state_dict(...)``, which
    is ``torch.hub.load_state_dict_from_url(..., weights_only=False)``: it unpickles whatever
    the cache holds. That method is the one seam: the builders' arguments are fixed, and
    ``WeightsEnum.verify`` takes only the enum's own members, which cannot be subclassed. So
    it is replaced on this weights' enum class alone, under a lock; a builder (or another
    thread) asking that class for other weights meanwhile gets an error, never the unsafe load.
    """
    cls = type(weights)

    def get_state_dict(self, *args, **kwargs) -> Mapping[str, torch.Tensor]:
        if self is not weights:
            raise ModelError(f"{self} requested while {weights} were being loaded; try again")
        return state

    with _BUILD_LOCK:
        own = cls.__dict__.get("get_state_dict")
        cls.get_state_dict = get_state_dict
        try:
            yield
        finally:
            if own is None:
                del cls.get_state_dict
            else:
                cls.get_state_dict = own


def _builder_kwargs(name: str, state: Mapping[str, torch.Tensor]) -> dict[str, bool]:
    """What torchvision's builder sets when it is given weights and ``weights=None`` does not:
    googlenet and inception_v3 weights expect ``transform_input``; their auxiliary heads are
    in a state dict only when it was saved with them."""
    if name in ("googlenet", "inception_v3"):
        aux = any(k.startswith(("aux1.", "AuxLogits.")) for k in state)
        return {"transform_input": True, "aux_logits": aux, "init_weights": False}
    return {}
