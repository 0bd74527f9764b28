"""Photo → model input with explicit geometry: the resize, the centred crop and the
normalisation each family's library applies, reproduced step for step so that the same photo
gives the same tensor (tested pixel for pixel) and ``crop_box`` can invert exactly what was
done.

The libraries differ in small ways that matter for a map laid back on a photo: torchvision
and timm resize the PIL image with PIL and round the crop offset (``round((n − c) / 2)``);
transformers' default processors resize the uint8 tensor with torchvision's antialiased
kernel and truncate the offset (``int((n − c) / 2)``); their PIL processors resize with PIL
and truncate. Each is a field here rather than a subclass, so one ``crop_box`` serves all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification
from torchvision.transforms.v2 import functional as F2

#: how the centred crop's offset is rounded when the resized side ``n`` exceeds the crop ``c``
ROUND, TRUNCATE = "round", "truncate"
#: how the resize is computed: PIL's resampling of the photo, or torchvision's antialiased
#: kernel on the uint8 tensor (transformers' torchvision processors)
PIL_RESIZE, TENSOR_RESIZE = "pil", "tensor"
#: the arithmetic of rescaling and normalising, each as its library writes it, so that the
#: float32 results are bit for bit the same: torchvision's ``x / 255`` then ``(x − m) / s``;
#: transformers' fused ``(x − m/k) / (s/k)`` (k the rescale factor); transformers' NumPy
#: ``float32(float64(x) · k)`` then ``(x − m) / s``; transformers' torchvision ``x · k`` alone
#: (a processor that rescales without normalising)
DIVIDE, FUSED, NUMPY, RESCALE = "divide", "fused", "numpy", "rescale"


@dataclass(frozen=True)
class Preprocess:
    """An RGB photo → the model's input ``(C, H, W)`` float32 tensor.

    ``resize`` is the shorter side's new length (the aspect ratio kept, the longer side
    truncated as torchvision and transformers both compute it) or an exact ``(H, W)``;
    ``size`` is the centred crop taken from the resized photo, the model's input size.
    """

    size: tuple[int, int]
    resize: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    offset: str = ROUND
    backend: str = PIL_RESIZE
    arithmetic: str = DIVIDE
    scale: float = 1 / 255  # transformers' rescale_factor (1 when it does not rescale)

    @classmethod
    def from_torchvision(cls, preset: ImageClassification) -> Preprocess:
        """The geometry and normalisation of torchvision's ``ImageClassification`` preset."""
        crop = int(preset.crop_size[0])
        return cls(
            size=(crop, crop),
            resize=int(preset.resize_size[0]),
            mean=tuple(preset.mean),
            std=tuple(preset.std),
            interpolation=preset.interpolation,
        )

    # --- geometry ----------------------------------------------------------------------------

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(H, W)`` of a ``width × height`` photo after the resize."""
        if not isinstance(self.resize, int):
            return (int(self.resize[0]), int(self.resize[1]))
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def crop_offset(self, resized: int, crop: int) -> int:
        """Where the crop starts along a side of ``resized`` pixels (negative: padded)."""
        if crop > resized:
            # Both torchvision and transformers pad (c − n) // 2 before the photo, then crop.
            return -((crop - resized) // 2)
        if self.offset == ROUND:
            return int(round((resized - crop) / 2.0))
        return int((resized - crop) / 2.0)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width × height`` photo the model sees, in the photo's pixels."""
        new_h, new_w = self.resized_size(width, height)
        crop_h, crop_w = self.size
        top, left = self.crop_offset(new_h, crop_h), self.crop_offset(new_w, crop_w)
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)

    @property
    def unit_mean(self) -> tuple[float, ...]:
        """The mean for pixel values in [0, 1]: input = (v − unit_mean) / unit_std."""
        return tuple(m / (255 * self.scale) for m in self.mean)

    @property
    def unit_std(self) -> tuple[float, ...]:
        return tuple(s / (255 * self.scale) for s in self.std)

    # --- the transform -----------------------------------------------------------------------

    def __call__(self, photo: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(photo, Image.Image):
            width, height = photo.size
        else:
            height, width = photo.shape[-2:]
        new_h, new_w = self.resized_size(width, height)
        crop_h, crop_w = self.size
        top, left = self.crop_offset(new_h, crop_h), self.crop_offset(new_w, crop_w)
        if isinstance(photo, Image.Image) and self.backend == PIL_RESIZE:
            # torchvision's resize of a PIL image is PIL's own, antialiased; its crop of a PIL
            # image fills what lies outside with black, as the tensor crop pads with zeros.
            photo = F.resize(photo, [new_h, new_w], self.interpolation)
            pixels = F.pil_to_tensor(F.crop(photo, top, left, crop_h, crop_w))
        else:
            pixels = F.pil_to_tensor(photo) if isinstance(photo, Image.Image) else photo
            pixels = F2.resize(pixels, [new_h, new_w], self.interpolation, antialias=True)
            pixels = F2.crop(pixels, top, left, crop_h, crop_w)
        return self._normalise(pixels)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.arithmetic == DIVIDE:
            return F.normalize(pixels.float().div(255), self.mean, self.std)
        if self.arithmetic == FUSED:
            # transformers' torchvision processors: the rescale folded into mean and std
            mean = torch.tensor(self.mean) * (1.0 / self.scale)
            std = torch.tensor(self.std) * (1.0 / self.scale)
            return F2.normalize(pixels.to(torch.float32), mean, std)
        if self.arithmetic == RESCALE:
            return pixels * self.scale
        x = (pixels.double() * self.scale).float()
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (x - mean) / std


def as_preprocess(transform: Preprocess | ImageClassification) -> Preprocess:
    """The geometry of a transform: itself, or that of a torchvision preset."""
    if isinstance(transform, Preprocess):
        return transform
    return Preprocess.from_torchvision(transform)
