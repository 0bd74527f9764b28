"""A transformers image processor as a ``Preprocess``: its resize, centred crop, rescale and
normalisation reproduced with torch, so that the crop geometry behind overlays and region
checks is known exactly rather than hidden inside the processor.

Processors are many, and a few do more than these steps (flip channels, pad, resize their
own way). So the reproduction is checked when the model is loaded: the processor and the
``Preprocess`` are run on two test images, and a processor that gives anything else is
refused by name instead of being approximated.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .base import ModelError
from .preprocess import FUSED, NUMPY, PIL_RESIZE, RESCALE, TENSOR_RESIZE, TRUNCATE, Preprocess

#: the largest difference from the processor a reproduction may show: float32 rounding only
TOLERANCE = 1e-4
#: steps some processors take that a centred crop and a normalisation cannot express
_UNSUPPORTED_FLAGS = ("do_pad", "do_flip_channel_order", "do_split_into_patches")


def preprocess_of(processor, where: str) -> Preprocess:
    """The ``Preprocess`` that gives what ``processor`` gives, or ``ModelError``."""
    name = type(processor).__name__
    backend = getattr(processor, "backend", None)
    if backend not in ("torchvision", "pil"):
        raise ModelError(
            f"{where}: its image processor {name} is not one of transformers' "
            "torchvision or PIL processors (transformers 5.4 or later)"
        )
    for flag in _UNSUPPORTED_FLAGS:
        if getattr(processor, flag, False):
            raise ModelError(
                f"{where}: its image processor {name} sets {flag}, a step "
                "smoothgrad does not reproduce"
            )
    resize, crop = _geometry(processor, name, where)
    channels = 3
    mean = _per_channel(processor.image_mean, channels) if processor.do_normalize else (0.0,) * 3
    std = _per_channel(processor.image_std, channels) if processor.do_normalize else (1.0,) * 3
    from transformers.image_utils import pil_torch_interpolation_mapping

    if backend == "pil":
        arithmetic = NUMPY
    else:  # the torchvision backend fuses the rescale into normalising, or only rescales
        arithmetic = FUSED if processor.do_normalize else RESCALE

    transform = Preprocess(
        size=crop,
        resize=resize,
        mean=mean,
        std=std,
        interpolation=pil_torch_interpolation_mapping[processor.resample],
        offset=TRUNCATE,
        backend=TENSOR_RESIZE if backend == "torchvision" else PIL_RESIZE,
        arithmetic=arithmetic,
        scale=float(processor.rescale_factor) if processor.do_rescale else 1.0,
    )
    difference = _difference(processor, transform)
    if difference > TOLERANCE:
        raise ModelError(
            f"{where}: its image processor {name} prepares images in a way smoothgrad does "
            f"not reproduce (a difference of {difference:.3g} on a test image), so maps would "
            "not be of what the model sees"
        )
    return transform


def _geometry(processor, name: str, where: str) -> tuple[int | tuple[int, int], tuple[int, int]]:
    """(resize, crop): the shorter side or an exact size, and the model's input size."""
    size = processor.size
    if not processor.do_resize:
        raise ModelError(
            f"{where}: its image processor {name} does not resize: inputs would "
            "be of each photo's own size"
        )
    if name.startswith("ConvNextImageProcessor"):
        # ConvNeXT's own resize: below 384 the shorter side to size / crop_pct and a centred
        # square of size; at 384 and above, both sides to size (no crop).
        edge = int(size.shortest_edge)
        if edge < 384:
            resize: int | tuple[int, int] = int(edge / processor.crop_pct)
            if not processor.do_center_crop:
                return resize, (edge, edge)
        else:
            resize = (edge, edge)
    elif size.height and size.width:
        resize = (int(size.height), int(size.width))
    elif size.shortest_edge and not size.longest_edge:
        resize = int(size.shortest_edge)
    else:
        raise ModelError(
            f"{where}: its image processor {name} resizes to {size}, which "
            "smoothgrad does not reproduce (height and width, or shortest_edge)"
        )
    if processor.do_center_crop:
        return resize, (int(processor.crop_size.height), int(processor.crop_size.width))
    if isinstance(resize, int):
        raise ModelError(
            f"{where}: its image processor {name} keeps the aspect ratio without "
            "cropping: inputs would be of each photo's own shape"
        )
    return resize, resize


def _per_channel(value, channels: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * channels
    return tuple(float(v) for v in value)


def _difference(processor, transform: Preprocess) -> float:
    """The largest difference between the processor and ``transform`` on two seeded noise
    images, landscape and portrait, of odd sizes (so the crop offsets' rounding shows)."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for width, height in ((301, 233), (233, 301)):
        photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        theirs = torch.as_tensor(processor(images=photo, return_tensors="pt")["pixel_values"][0])
        ours = transform(photo)
        if theirs.shape != ours.shape:
            return float("inf")
        worst = max(worst, float((theirs.float() - ours).abs().max()))
    return worst
