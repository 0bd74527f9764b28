"""SmoothGrad over a base method: noisy copies in chunks, their maps reduced per image."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .methods import BaseMethod
from .model import (
    PRECISIONS,
    autocast,
    float32_math,
    input_format,
    model_device,
    resolve_precision,
)
from .noise import draw_noise, sample_seed
from .stream import SMOOTHINGS, AttributionStream, _Moments, aggregate


class SmoothGrad:
    """M̂_c(x) = (1/n) Σ M_c(x + N(0, σ²)), with σ = noise_level · (max(x) − min(x)) per image.

    ``smoothing`` picks what is taken over the n noisy maps: their mean (SmoothGrad), the mean
    of their squares (SmoothGrad²), their variance (VarGrad), or ``none`` for the base method
    on the clean input. Noisy copies of all images are packed into chunks of ``batch_size``
    rows (images × samples), so n copies of an image are never held at once; ``stream`` packs
    those of images fed over many calls.
    """

    def __init__(
        self,
        base: BaseMethod,
        *,
        smoothing: str = "smoothgrad",
        noise_level: float = 0.15,
        samples: int = 50,
        seed: int = 0,
        batch_size: int | None = None,
        precision: str = "fp32",
    ) -> None:
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"unknown smoothing {smoothing!r}: use one of {', '.join(SMOOTHINGS)}")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if not (noise_level >= 0 and math.isfinite(noise_level)):
            raise ValueError(f"noise level must be a finite number >= 0, got {noise_level}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.base = base
        self.smoothing = smoothing
        self.noise_level = noise_level
        self.samples = samples
        self.seed = seed
        self.batch_size = batch_size
        self.precision = precision
        self._noise_bank: tuple[tuple, Tensor] | None = None

    @property
    def rows_per_input(self) -> int:
        return 1 if self.smoothing == "none" else self.samples

    def attribute(
        self,
        model: nn.Module,
        x: Tensor,
        target: Tensor | Sequence[int] | int,
        *,
        progress: Callable[[int], None] | None = None,
        on_oom: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Smoothed maps ``(N, C, H, W)`` in float32 for inputs ``x`` and one target each.

        ``x`` is not modified. ``progress`` is told how many rows (noisy copies) each chunk
        finished; ``on_oom`` is told the new chunk size when CUDA ran out of memory and the
        chunk was halved.
        """
        stream = self.stream(model, progress=progress, on_oom=on_oom)
        first = stream.feed(x, target)
        return torch.cat([first, stream.finish()])

    def stream(
        self,
        model: nn.Module,
        *,
        progress: Callable[[int], None] | None = None,
        on_oom: Callable[[int], None] | None = None,
    ) -> AttributionStream:
        """Maps for images fed over many calls, every chunk full but the last
        (``AttributionStream``): for a caller that decodes a folder as it goes."""
        chunk = self.batch_size or default_batch_size(model_device(model))
        return AttributionStream(self, model, chunk, progress=progress, on_oom=on_oom)

    def noise_bank(
        self,
        shape: torch.Size,
        device: torch.device,
        samples: int,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> Tensor | None:
        """The noise of samples 0..n−1 on ``device``, drawn once and kept for later images
        and calls.

        Every image's sample j gets the same draw (``noise.sample_noise``), so a run over a
        folder draws each sample once instead of once per image. Kept in the model's input
        layout, so a chunk is one elementwise x + σ·noise. Not kept when it would exceed
        ``_NOISE_BANK_BYTES`` (``_NOISE_BANK_BYTES_GPU`` on CUDA, where memory is larger and
        drawing chunk by chunk on the host would hold the GPU back): then each chunk draws
        its own.
        """
        key = (self.seed, tuple(shape), str(device), samples, memory_format)
        if self._noise_bank is not None and self._noise_bank[0] == key:
            return self._noise_bank[1]
        self._noise_bank = None
        limit = _NOISE_BANK_BYTES_GPU if device.type == "cuda" else _NOISE_BANK_BYTES
        if samples * math.prod(shape) * 4 > limit:
            return None
        bank = draw_noise(self.seed, range(samples), shape, device)
        if len(shape) == 3:
            bank = bank.contiguous(memory_format=memory_format)
        self._noise_bank = (key, bank)
        return bank


#: the largest noise bank SmoothGrad keeps (50 samples of 3×224×224 take 30 MB)
_NOISE_BANK_BYTES = 192 * 2**20
_NOISE_BANK_BYTES_GPU = 2**30


def default_batch_size(device: torch.device) -> int:
    """A chunk size that works without a probe: small on CPUs, where caches favour small
    chunks, larger on accelerators."""
    return 8 if device.type == "cpu" else 64


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 32, precision: str = "fp32") -> Tensor:
    """Class probabilities (softmax of the scores), ``(N, classes)``, in float32."""
    device = model_device(model)
    precision = resolve_precision(precision, device)
    memory_format = input_format(model)
    out = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size].to(device, torch.float32)
        with float32_math(device, precision), autocast(device, precision):
            scores = model(batch.contiguous(memory_format=memory_format))
        out.append(scores.float().softmax(-1))
    return torch.cat(out)


__all__ = [
    "SMOOTHINGS", "AttributionStream", "SmoothGrad", "_Moments", "aggregate",
    "default_batch_size", "predict", "sample_seed",
]  # fmt: skip
