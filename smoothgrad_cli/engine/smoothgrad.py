"""SmoothGrad over a base method: noisy copies in chunks, their maps reduced per image."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .methods import BaseMethod
from .model import PRECISIONS, autocast, input_format, model_device, resolve_precision

SMOOTHINGS = ("smoothgrad", "smoothgrad-sq", "vargrad", "none")


def sample_seed(seed: int, sample: int) -> int:
    """The generator seed for noisy copy number ``sample``.

    Noise depends on (seed, sample index) only, never on which image or chunk it lands in, so an
    image's map is the same whatever else is in the run and however the work is chunked.
    """
    return int(np.random.SeedSequence([seed, sample]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class _Moments:
    """Per-image running count, mean and sum of squared deviations (Chan et al.'s merge).

    Float32 sums stay accurate for the variance because deviations, not raw squares, are summed.
    """

    count: Tensor
    mean: Tensor
    m2: Tensor

    @classmethod
    def zeros(cls, shape: torch.Size, device: torch.device) -> _Moments:
        n = shape[0]
        return cls(
            torch.zeros(n, device=device),
            torch.zeros(shape, dtype=torch.float32, device=device),
            torch.zeros(shape, dtype=torch.float32, device=device),
        )

    def add(self, index: int, maps: Tensor) -> None:
        m = maps.shape[0]
        batch_mean = maps.mean(0)
        batch_m2 = (maps - batch_mean).square().sum(0)
        n_old = self.count[index]
        n_new = n_old + m
        delta = batch_mean - self.mean[index]
        self.mean[index] += delta * (m / n_new)
        self.m2[index] += batch_m2 + delta.square() * (n_old * m / n_new)
        self.count[index] = n_new


def aggregate(moments_mean: Tensor, moments_m2: Tensor, count: int, smoothing: str) -> Tensor:
    """The smoothed map from running moments: mean, mean of squares or variance."""
    if smoothing == "smoothgrad":
        return moments_mean
    if smoothing == "smoothgrad-sq":
        return moments_m2 / count + moments_mean.square()
    if smoothing == "vargrad":
        return moments_m2 / count
    raise ValueError(f"unknown smoothing {smoothing!r}: use one of {', '.join(SMOOTHINGS)}")


def _check_inputs(x: Tensor, target: Tensor | Sequence[int] | int) -> tuple[Tensor, Tensor]:
    if x.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"inputs must be a floating-point tensor, got {x.dtype}")
    target = torch.as_tensor(target, dtype=torch.long, device=x.device)
    if target.dim() == 0:
        target = target.expand(x.shape[0])
    if target.shape != (x.shape[0],):
        raise ValueError(
            f"need one target per input: {x.shape[0]} inputs, {target.numel()} targets"
        )
    return x, target


class SmoothGrad:
    """M̂_c(x) = (1/n) Σ M_c(x + N(0, σ²)), with σ = noise_level · (max(x) − min(x)) per image.

    ``smoothing`` picks what is taken over the n noisy maps: their mean (SmoothGrad), the mean
    of their squares (SmoothGrad²), their variance (VarGrad), or ``none`` for the base method
    on the clean input. Noisy copies of all images are packed into chunks of ``batch_size``
    rows (images × samples), so n copies of an image are never held at once.
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
        x, target = _check_inputs(x, target)
        device = model_device(model)
        precision = resolve_precision(self.precision, device)
        memory_format = input_format(model)
        x = x.detach().to(device, torch.float32)
        target = target.to(device)
        n_inputs = x.shape[0]
        rows = self.rows_per_input
        chunk = self.batch_size or default_batch_size(device)

        flat = x.reshape(n_inputs, -1)
        sigmas = (self.noise_level * (flat.max(1).values - flat.min(1).values)).tolist()
        # The mean needs only a running sum; the variance-based smoothings keep moments.
        sums = (
            torch.zeros(x.shape, dtype=torch.float32, device=device).contiguous(
                memory_format=memory_format
            )
            if self.smoothing in ("smoothgrad", "none")
            else None
        )
        x_in = x.contiguous(memory_format=memory_format)  # rows are built in the model's layout
        moments = None if sums is not None else _Moments.zeros(x.shape, device)
        buffers = _ChunkBuffers(self.seed, x.shape[1:], device, memory_format)
        if self.smoothing != "none":
            buffers.bank = self._bank(x.shape[1:], device, rows, memory_format)
        total_rows = n_inputs * rows

        with self.base.hooks(model):
            start = 0
            while start < total_rows:
                stop = min(start + chunk, total_rows)
                # Rows are image-major, so each image's rows in the chunk are one slice.
                spans = [
                    (image, max(start, image * rows) - start, min(stop, (image + 1) * rows) - start)
                    for image in range(start // rows, (stop - 1) // rows + 1)
                ]
                try:
                    if self.smoothing == "none":
                        batch = buffers.clean(x_in, spans, stop - start)
                    else:
                        batch = buffers.noisy(x_in, sigmas, spans, start, stop, rows)
                    images = torch.tensor(
                        [image for image, lo, hi in spans for _ in range(hi - lo)], device=device
                    )
                    maps = self.base.attribute(model, batch, target[images], precision)
                except torch.cuda.OutOfMemoryError:
                    if chunk == 1:
                        raise
                    chunk = max(1, chunk // 2)
                    buffers.release()
                    torch.cuda.empty_cache()
                    if on_oom is not None:
                        on_oom(chunk)
                    continue
                for image, lo, hi in spans:
                    if sums is not None:
                        sums[image] += maps[lo:hi].sum(0)
                    else:
                        moments.add(image, maps[lo:hi])
                if progress is not None:
                    progress(stop - start)
                start = stop

        if sums is not None:
            return sums.div_(rows).contiguous()
        return aggregate(moments.mean, moments.m2, rows, self.smoothing)

    def _bank(
        self,
        shape: torch.Size,
        device: torch.device,
        samples: int,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> Tensor | None:
        """The noise of samples 0..n−1, drawn once and kept for later images and calls.

        Every image's sample j gets the same N(0, 1) draw, so a run over a folder draws each
        sample once instead of once per image. Kept in the model's input layout, so a chunk is
        one elementwise x + σ·noise. Not kept when it would exceed ``_NOISE_BANK_BYTES`` (many
        samples of large inputs): then each chunk draws its own.
        """
        key = (self.seed, tuple(shape), str(device), samples, memory_format)
        if self._noise_bank is not None and self._noise_bank[0] == key:
            return self._noise_bank[1]
        self._noise_bank = None
        if samples * math.prod(shape) * 4 > _NOISE_BANK_BYTES:
            return None
        bank = torch.empty((samples, *shape), dtype=torch.float32, device=device)
        generator = torch.Generator(device=device)
        for sample in range(samples):
            generator.manual_seed(sample_seed(self.seed, sample))
            bank[sample].normal_(generator=generator)  # the values randn would draw
        if len(shape) == 3:
            bank = bank.contiguous(memory_format=memory_format)
        self._noise_bank = (key, bank)
        return bank


#: the largest noise bank SmoothGrad keeps (50 samples of 3×224×224 take 30 MB)
_NOISE_BANK_BYTES = 192 * 2**20


class _ChunkBuffers:
    """The chunk's noise and input batch, allocated once and refilled for every chunk.

    Refilling in place avoids a fresh multi-megabyte allocation per chunk (on Linux each one
    is page-faulted in again, which costs more than drawing the noise) and the index copies of
    ``x[images]``. Noise is N(0, 1) per sample index, drawn on the device from that index's
    own seed (``sample_seed``), so it does not depend on where the sample lands.
    """

    def __init__(
        self,
        seed: int,
        shape: torch.Size,
        device: torch.device,
        memory_format: torch.memory_format,
    ) -> None:
        self.seed = seed
        self.shape = tuple(shape)
        self.device = device
        self.memory_format = memory_format
        self.generator = torch.Generator(device=device)
        self.bank: Tensor | None = None  # all samples' noise, when SmoothGrad keeps it
        self._noise: Tensor | None = None
        self._batch: Tensor | None = None

    def _buffers(self, rows: int) -> tuple[Tensor, Tensor]:
        if self._batch is None or self._batch.shape[0] < rows:
            self.release()
            size = (rows, *self.shape)
            self._noise = torch.empty(size, device=self.device, dtype=torch.float32)
            self._batch = torch.empty(size, device=self.device, dtype=torch.float32).contiguous(
                memory_format=self.memory_format
            )
        return self._noise[:rows], self._batch[:rows]

    def release(self) -> None:
        self._noise = self._batch = None

    def noisy(
        self,
        x: Tensor,
        sigmas: list[float],
        spans: list[tuple[int, int, int]],
        start: int,
        stop: int,
        rows_per_input: int,
    ) -> Tensor:
        noise, batch = self._buffers(stop - start)
        if self.bank is not None:
            for image, lo, hi in spans:
                first = start + lo - image * rows_per_input  # sample index of row lo
                torch.add(
                    x[image],
                    self.bank[first : first + hi - lo],
                    alpha=sigmas[image],
                    out=batch[lo:hi],
                )
            return batch
        first_row: dict[int, int] = {}  # sample index -> row of this chunk that holds it
        for row in range(stop - start):
            sample = (start + row) % rows_per_input
            if sample in first_row:
                noise[row].copy_(noise[first_row[sample]])
            else:
                first_row[sample] = row
                self.generator.manual_seed(sample_seed(self.seed, sample))
                noise[row].normal_(generator=self.generator)  # the values randn would draw
        for image, lo, hi in spans:
            torch.add(x[image], noise[lo:hi], alpha=sigmas[image], out=batch[lo:hi])
        return batch

    def clean(self, x: Tensor, spans: list[tuple[int, int, int]], n_rows: int) -> Tensor:
        _, batch = self._buffers(n_rows)
        for image, lo, hi in spans:
            batch[lo:hi].copy_(x[image].expand(hi - lo, *self.shape))
        return batch


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
        with autocast(device, precision):
            scores = model(batch.contiguous(memory_format=memory_format))
        out.append(scores.float().softmax(-1))
    return torch.cat(out)
