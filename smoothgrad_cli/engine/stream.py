"""SmoothGrad as a stream: images in as they come, full chunks of noisy copies, maps out.

A caller with a folder feeds a few images at a time. If every call ran its own rows, each call
would end on a partial chunk (6 images × 50 copies with a chunk of 256: one chunk of 256 and
one of 44, every call), which leaves a GPU partly idle for a whole pass. Here the rows of all
calls form one sequence cut into full chunks; an image's map comes back from the call in
which its last row ran, and ``finish`` runs the one partial chunk of the whole run. Held per
image in flight: its input, and its row maps until they are summed (``_Reducer``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .model import float32_math, input_format, model_device, resolve_precision
from .noise import ChunkBuffers

SMOOTHINGS = ("smoothgrad", "smoothgrad-sq", "vargrad", "none")

#: how much of one image's row maps is held for its fixed-order sum: all n rows up to this
#: (50 rows of 3×224×224 take 30 MB), else blocks of as many rows as fit
_ROW_STORE_BYTES = 64 * 2**20


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


def check_inputs(x: Tensor, target: Tensor | Sequence[int] | int) -> tuple[Tensor, Tensor]:
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


class _Reducer:
    """One image's row maps reduced in an order fixed by sample index alone.

    Rows are copied into a store and each block of samples [0, B), [B, 2B), … is reduced as one
    tensor once complete (B = all rows when they fit ``_ROW_STORE_BYTES``), so the sum does not
    depend on where chunk boundaries fell: which images were fed together, where in the run
    this one came, or the chunk size.
    """

    def __init__(self, store: Tensor, rows: int, moments: bool) -> None:
        self.store = store
        self.rows = rows
        self.start = 0  # first sample of the block being filled
        self.filled = 0
        shape, device = store.shape[1:], store.device
        self.moments = _Moments.zeros(torch.Size((1, *shape)), device) if moments else None
        self.sum = None if moments else torch.zeros(shape, dtype=torch.float32, device=device)

    def add(self, maps: Tensor) -> None:
        """The image's next ``len(maps)`` rows, in sample order."""
        at = 0
        while at < maps.shape[0]:
            length = min(self.store.shape[0], self.rows - self.start)
            take = min(length - self.filled, maps.shape[0] - at)
            self.store[self.filled : self.filled + take].copy_(maps[at : at + take])
            self.filled += take
            at += take
            if self.filled == length:
                block = self.store[:length]
                if self.moments is not None:
                    self.moments.add(0, block)
                else:
                    self.sum += block.sum(0)
                self.start += length
                self.filled = 0

    def result(self, smoothing: str) -> Tensor:
        if self.moments is None:
            return self.sum.div_(self.rows)
        return aggregate(self.moments.mean[0], self.moments.m2[0], self.rows, smoothing)


class _Input:
    """An image fed and not yet finished: its input, σ, target and rows still to run."""

    __slots__ = ("next", "reducer", "rows", "sigma", "target", "x")

    def __init__(self, x: Tensor, sigma: float, target: Tensor, rows: int) -> None:
        self.x, self.sigma, self.target, self.rows = x, sigma, target, rows
        self.next = 0  # the first sample not yet run
        self.reducer: _Reducer | None = None


class AttributionStream:
    """``SmoothGrad.stream(model)``: ``feed(x, target)`` any number of times, then ``finish()``.

    Each returns the maps ``(k, C, H, W)`` (float32, on the model's device) of the k images,
    oldest first, whose last noisy copy ran during that call: images come out in the order
    they went in, and ``finish`` returns all the rest. Every chunk the model sees has
    ``chunk`` rows except the last one ``finish`` runs. An image's map is the same whatever
    the calls it was fed in (see ``_Reducer``); ``SmoothGrad.attribute`` is one feed and a
    finish. ``progress`` is told the rows of each chunk (it may be replaced between calls);
    ``on_oom`` the new chunk size after CUDA ran out of memory and the chunk was halved.
    """

    def __init__(
        self,
        smoother,
        model: nn.Module,
        chunk: int,
        *,
        progress: Callable[[int], None] | None = None,
        on_oom: Callable[[int], None] | None = None,
    ) -> None:
        self.smoother = smoother
        self.model = model
        self.chunk = chunk
        self.progress = progress
        self.on_oom = on_oom
        self.device = model_device(model)
        self.precision = resolve_precision(smoother.precision, self.device)
        self.memory_format = input_format(model)
        self.rows_per_input = smoother.rows_per_input
        self.shape: torch.Size | None = None
        self.buffers: ChunkBuffers | None = None
        self._queue: deque[_Input] = deque()  # fed, with rows still to run
        self._unrun = 0  # rows fed and not yet run
        self._done: list[Tensor] = []  # finished maps not yet handed back
        self._stores: list[Tensor] = []  # free row stores, reused by later images

    @property
    def pending(self) -> int:
        """Images fed whose maps have not been handed back yet."""
        return len(self._queue) + len(self._done)

    def feed(self, x: Tensor, target: Tensor | Sequence[int] | int) -> Tensor:
        """Queue inputs ``x`` (N, C, H, W) with one target each; run every full chunk."""
        x, target = check_inputs(x, target)
        self._start(x.shape[1:])
        x = x.detach().to(torch.float32)
        flat = x.reshape(x.shape[0], -1)
        # σ where x is (the CPU, for a pipeline): no device round trip; min and max are exact.
        sigmas = (self.smoother.noise_level * (flat.max(1).values - flat.min(1).values)).tolist()
        x, target = self._to_device(x), self._to_device(target)
        x = x.contiguous(memory_format=self.memory_format)  # rows are built in the model's layout
        rows = self.rows_per_input
        for i in range(x.shape[0]):
            self._queue.append(_Input(x[i], sigmas[i], target[i : i + 1], rows))
        self._unrun += x.shape[0] * rows
        self._run(last=False)
        return self._take()

    def finish(self) -> Tensor:
        """Run what is left (the run's one partial chunk) and return every map not yet out."""
        self._run(last=True)
        return self._take()

    # --- inside ------------------------------------------------------------------------------

    def _start(self, shape: torch.Size) -> None:
        if self.shape is not None:
            if shape != self.shape:
                raise ValueError(
                    f"every input of a stream must have one shape: {tuple(self.shape)} so far, "
                    f"now {tuple(shape)}"
                )
            return
        self.shape = shape
        smoother = self.smoother
        self.buffers = ChunkBuffers(smoother.seed, shape, self.device, self.memory_format)
        if smoother.smoothing != "none":
            self.buffers.bank = smoother.noise_bank(
                shape, self.device, self.rows_per_input, self.memory_format
            )

    def _to_device(self, t: Tensor) -> Tensor:
        if self.device.type == "cuda" and t.device.type == "cpu":
            # pinned and non-blocking: a pageable copy would wait for the GPU to catch up
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _run(self, *, last: bool) -> None:
        if not (self._unrun >= self.chunk or (last and self._unrun)):
            return
        with self.smoother.base.hooks(self.model), float32_math(self.device, self.precision):
            while self._unrun >= self.chunk or (last and self._unrun):
                size = min(self.chunk, self._unrun)
                spans = self._spans(size)
                try:
                    maps = self._attribute(spans, size)
                except torch.cuda.OutOfMemoryError:
                    if size == 1:
                        raise
                    self.chunk = max(1, size // 2)
                    self.buffers.release()
                    torch.cuda.empty_cache()
                    if self.on_oom is not None:
                        self.on_oom(self.chunk)
                    continue
                self._reduce(spans, maps)
                self._unrun -= size
                if self.progress is not None:
                    self.progress(size)

    def _spans(self, size: int) -> list[tuple[_Input, int, int]]:
        """The next ``size`` rows: (input, first sample, count), image-major."""
        spans = []
        for item in self._queue:
            take = min(item.rows - item.next, size)
            spans.append((item, item.next, take))
            size -= take
            if size == 0:
                break
        return spans

    def _attribute(self, spans: list[tuple[_Input, int, int]], size: int) -> Tensor:
        rows = [(item.x, item.sigma, first, count) for item, first, count in spans]
        if self.smoother.smoothing == "none":
            batch = self.buffers.clean(rows, size)
        else:
            batch = self.buffers.noisy(rows, size)
        # targets built on the device from device tensors: no host round trip per chunk
        targets = torch.cat([item.target.expand(count) for item, _, count in spans])
        return self.smoother.base.attribute(self.model, batch, targets, self.precision)

    def _reduce(self, spans: list[tuple[_Input, int, int]], maps: Tensor) -> None:
        lo = 0
        for item, _, count in spans:
            if item.reducer is None:
                # the variance-based smoothings keep moments; the mean needs only a sum
                moments = self.smoother.smoothing in ("smoothgrad-sq", "vargrad")
                item.reducer = _Reducer(self._store(item.rows), item.rows, moments)
            item.reducer.add(maps[lo : lo + count])
            item.next += count
            lo += count
        while self._queue and self._queue[0].next == self._queue[0].rows:
            item = self._queue.popleft()
            self._done.append(item.reducer.result(self.smoother.smoothing).contiguous())
            self._stores.append(item.reducer.store)
            item.reducer = None

    def _store(self, rows: int) -> Tensor:
        if self._stores:
            return self._stores.pop()
        row_bytes = 4 * self.shape.numel()
        block = max(1, min(rows, _ROW_STORE_BYTES // row_bytes))
        return torch.empty(
            (block, *self.shape), dtype=torch.float32, device=self.device
        ).contiguous(memory_format=self.memory_format)

    def _take(self) -> Tensor:
        done, self._done = self._done, []
        if self.shape is None:
            return torch.empty(0)
        if not done:
            return torch.empty((0, *self.shape), dtype=torch.float32, device=self.device)
        return torch.stack(done)
