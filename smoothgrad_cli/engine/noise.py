"""The noise of SmoothGrad's copies: drawn on the CPU from (seed, sample index) alone.

Noisy copy number j of every image gets the same N(0, 1) draw,

    sample_noise(seed, j, shape) == torch.randn(shape, generator=torch.Generator().manual_seed(
        sample_seed(seed, j)))

whatever the device the model runs on, the image, its place in the run or the chunk it lands
in. Drawing on the CPU and moving the result is what makes a seed portable: CUDA's generator
(Philox) draws other numbers than the CPU's (Mersenne Twister) for the same seed, so a golden
map made on a laptop could not check a GPU run. Drawing costs the host about 2 ms per sample
of 3×224×224, once per run when the noise bank is kept (see ``SmoothGrad``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def sample_seed(seed: int, sample: int) -> int:
    """The generator seed for noisy copy number ``sample``.

    Noise depends on (seed, sample index) only, never on which image or chunk it lands in, so an
    image's map is the same whatever else is in the run and however the work is chunked.
    """
    return int(np.random.SeedSequence([seed, sample]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_noise(seed: int, sample: int, shape: Sequence[int]) -> Tensor:
    """Noisy copy ``sample``'s N(0, 1) noise, on the CPU (the formula in the module's doc)."""
    return draw_noise(seed, [sample], shape, torch.device("cpu"))[0]


def draw_noise(
    seed: int,
    samples: Sequence[int],
    shape: Sequence[int],
    device: torch.device,
    out: Tensor | None = None,
) -> Tensor:
    """``(len(samples), *shape)`` float32 noise on ``device``, row i being
    ``sample_noise(seed, samples[i], shape)``.

    On CUDA the rows are drawn into pinned host memory and copied without blocking, so the
    host goes on queueing work; PyTorch's caching host allocator keeps that memory until the
    copy is done. ``out``: a CPU buffer of at least as many rows to draw into (CPU only).
    """
    size = (len(samples), *shape)
    if out is not None and device.type == "cpu":
        host = out[: len(samples)]
    else:
        host = torch.empty(size, pin_memory=device.type == "cuda")
    generator = torch.Generator()
    for row, sample in zip(host, samples, strict=True):
        generator.manual_seed(sample_seed(seed, sample))
        row.normal_(generator=generator)  # a contiguous row: the values randn would draw
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


class ChunkBuffers:
    """The chunk's input batch and its per-chunk noise, allocated once and refilled.

    Refilling in place avoids a fresh multi-megabyte allocation per chunk (on Linux each one
    is page-faulted in again, which costs more than drawing the noise) and the index copies of
    ``x[images]``. ``bank``: all samples' noise on the device, when ``SmoothGrad`` keeps it;
    without it, each chunk draws the samples it holds (each once, however many images share
    it).
    """

    def __init__(
        self, seed: int, shape: Sequence[int], device: torch.device, memory_format
    ) -> None:
        self.seed = seed
        self.shape = tuple(shape)
        self.device = device
        self.memory_format = memory_format
        self.bank: Tensor | None = None
        self._batch: Tensor | None = None
        self._host_noise: Tensor | None = None  # CPU devices only: reused between chunks

    def batch(self, rows: int) -> Tensor:
        if self._batch is None or self._batch.shape[0] < rows:
            self.release()
            self._batch = torch.empty(
                (rows, *self.shape), device=self.device, dtype=torch.float32
            ).contiguous(memory_format=self.memory_format)
        return self._batch[:rows]

    def release(self) -> None:
        self._batch = self._host_noise = None

    def noisy(self, spans: Sequence[tuple[Tensor, float, int, int]], rows: int) -> Tensor:
        """Rows ``x + σ·noise(sample)`` for spans ``(x, σ, first sample, count)``, in order."""
        batch = self.batch(rows)
        if self.bank is not None:
            noise, first_row = self.bank, None
        else:
            wanted = sorted({s for _, _, first, n in spans for s in range(first, first + n)})
            first_row = {sample: i for i, sample in enumerate(wanted)}
            noise = draw_noise(self.seed, wanted, self.shape, self.device, self._cpu_noise(rows))
        lo = 0
        for x, sigma, first, count in spans:
            # A span's samples are consecutive, and so are their rows in either source.
            at = first if first_row is None else first_row[first]
            torch.add(x, noise[at : at + count], alpha=sigma, out=batch[lo : lo + count])
            lo += count
        return batch

    def clean(self, spans: Sequence[tuple[Tensor, float, int, int]], rows: int) -> Tensor:
        batch = self.batch(rows)
        lo = 0
        for x, _, _, count in spans:
            batch[lo : lo + count].copy_(x.expand(count, *self.shape))
            lo += count
        return batch

    def _cpu_noise(self, rows: int) -> Tensor | None:
        if self.device.type != "cpu":
            return None
        if self._host_noise is None or self._host_noise.shape[0] < rows:
            self._host_noise = torch.empty((rows, *self.shape))
        return self._host_noise
