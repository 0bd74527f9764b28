"""``smoothgrad sweep``: one image's SmoothGrad map over noise levels × sample counts, and
how far each has converged.

Per noise level the base method runs once, on max(samples) noisy copies in chunks; the map
of n samples is taken over the first n of them (a prefix of one run): their mean, or for
SmoothGrad² and VarGrad their mean of squares or variance, so no cell is recomputed from
scratch, and the cell (σ, n) is the map ``smoothgrad explain --noise σ --samples n`` makes
with the same seed and smoothing: the noisy copies are built by the engine's own
``ChunkBuffers`` from the same (seed, sample index) draws, with the same σ.

Convergence is measured on what the figure shows: the paper's display
(``render.magnitude_map``) averaged over ``pool`` × ``pool`` pixel blocks (``Display``):

* split-half ρ(σ, n): Spearman's rank correlation between the map of the even-numbered
  samples 0, 2, 4, … and the map of the odd-numbered 1, 3, 5, … of the first n: two
  independent maps of n/2 samples each, so 1 − ρ is how much the map still changes from one
  run to another (undefined for n = 1);
* ``stable_samples`` (per level): the smallest swept n from which on every swept count has
  ρ ≥ the threshold; over the image, the largest of those among the levels above 0 %;
* ``noise_change`` (per level but the last): ρ between this level's map and the next one's
  at the largest n; ``stable_noise``: the smallest level from which on every such step has
  ρ ≥ the threshold (more noise than that changes the map little).

Why blocks: pixel by pixel, a SmoothGrad map's ranks are dominated by the speckle of its
dark background, which takes thousands of samples to settle (on the sample photo with the
embedded model, split-half ρ is 0.46 at n = 64), while what a reader sees, where the map is
bright, has settled (0.96 in 8 × 8 blocks at n = 64, in line with the paper's "little
changes beyond 50 samples"). ``pool`` 1 measures pixel by pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import engine, render
from .check.metrics import pool_map, spearman
from .engine.noise import ChunkBuffers
from .explainer import Explainer

DEFAULT_THRESHOLD = 0.95
DEFAULT_POOL = 8
#: what a sweep can take over its samples (``none`` has no samples to sweep)
SMOOTHINGS = ("smoothgrad", "smoothgrad-sq", "vargrad")


@dataclass(frozen=True)
class Display:
    """What convergence is measured on (the module's doc): the paper's display of a map,
    capped at ``percentile``, averaged over ``pool`` × ``pool`` pixel blocks."""

    percentile: float = render.DEFAULT_PERCENTILE
    pool: int = DEFAULT_POOL

    def rho(self, a: np.ndarray, b: np.ndarray) -> float | None:
        """Spearman's ρ of two maps ``(C, H, W)`` so displayed; ``None`` if undefined (a
        constant map)."""
        shown = [pool_map(render.magnitude_map(m, self.percentile), self.pool) for m in (a, b)]
        rho = spearman(*shown)
        return rho if math.isfinite(rho) else None


@dataclass
class Level:
    """One noise level of a sweep: its maps and their convergence, one per sample count."""

    noise: float  # percent of the input's range, as --noise
    sigma: float  # σ in input units
    maps: list[np.ndarray]  # (C, H, W) float32, over the first n samples
    split_half: list[float | None]  # None where undefined (n = 1, or a constant map)
    stable_samples: int | None = None
    noise_change: float | None = None  # ρ with the next level's map at the largest n


@dataclass
class Sweep:
    noise: list[float]
    samples: list[int]
    threshold: float
    target: int
    display: Display = field(default_factory=Display)
    smoothing: str = "smoothgrad"
    levels: list[Level] = field(default_factory=list)
    stable_samples: int | None = None
    stable_noise: float | None = None

    def to_json(self) -> dict:
        return {
            "smoothing": self.smoothing,
            "noise": self.noise,
            "samples": self.samples,
            "threshold": self.threshold,
            "pool": self.display.pool,
            "levels": [
                {
                    "noise": level.noise,
                    "sigma": level.sigma,
                    "split_half": level.split_half,
                    "stable_samples": level.stable_samples,
                    "noise_change": level.noise_change,
                }
                for level in self.levels
            ],
            "stable_samples": self.stable_samples,
            "stable_noise": self.stable_noise,
        }


def noise_sigma(x: torch.Tensor, noise: float) -> float:
    """σ in input units for ``noise`` percent, as the engine computes it
    (``AttributionStream.feed``): the level times the float32 range of ``x``."""
    x = x.detach().to(torch.float32)
    return (noise / 100.0 * (x.max() - x.min())).item()


def sample_maps(
    explainer: Explainer,
    x: torch.Tensor,
    target: int,
    noise: float,
    count: int,
    progress: Callable[[int], None] | None = None,
):
    """The base method's maps of noisy copies 0 … count−1 of ``x`` (C, H, W): one batched
    run, yielded a chunk at a time as CPU float32 tensors ``(rows, C, H, W)``, in sample
    order. ``noise`` is in percent, as ``--noise``. At 0 % every copy is ``x`` itself, so
    one map stands for all of them (yielded once, for sample 0)."""
    smoother, model = explainer.smoother, explainer.attribution_model
    device, precision = explainer.device, explainer.precision
    memory_format = engine.input_format(model)
    x = x.detach().to(torch.float32)
    sigma = noise_sigma(x, noise)
    x_device = x[None].to(device).contiguous(memory_format=memory_format)[0]
    buffers = ChunkBuffers(smoother.seed, x.shape, device, memory_format)
    chunk = explainer.chunk_size
    total = 1 if noise == 0 else count
    with smoother.base.hooks(model), engine.float32_math(device, precision):
        for first in range(0, total, chunk):
            rows = min(chunk, total - first)
            spans = [(x_device, sigma, first, rows)]
            batch = buffers.clean(spans, rows) if noise == 0 else buffers.noisy(spans, rows)
            targets = torch.full((rows,), target, dtype=torch.long, device=device)
            maps = smoother.base.attribute(model, batch, targets, precision)
            yield maps.float().cpu()
            if progress is not None:
                progress(rows)


class _Sums:
    """Running float64 sums of maps and of their squares: what every smoothing of a prefix of
    the samples is read from."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, one: torch.Tensor) -> None:
        if self.total is None:
            self.total, self.squares = torch.zeros_like(one), torch.zeros_like(one)
        self.total += one
        self.squares.addcmul_(one, one)
        self.count += 1

    def map(self, smoothing: str) -> np.ndarray | None:
        """The smoothed map of the samples so far, as the engine's ``aggregate`` defines it:
        their mean, mean of squares, or variance (over n, not n − 1); ``None`` for none."""
        if self.count == 0:
            return None
        mean = self.total / self.count
        if smoothing == "smoothgrad":
            smoothed = mean
        elif smoothing == "smoothgrad-sq":
            smoothed = self.squares / self.count
        elif smoothing == "vargrad":
            smoothed = (self.squares / self.count - mean.square()).clamp_min_(0)
        else:
            raise ValueError(f"a sweep takes {', '.join(SMOOTHINGS)}, not {smoothing!r}")
        return smoothed.float().numpy()


def sweep_level(
    explainer: Explainer,
    x: torch.Tensor,
    target: int,
    noise: float,
    samples: Sequence[int],
    display: Display = Display(),
    progress: Callable[[int], None] | None = None,
    smoothing: str = "smoothgrad",
) -> Level:
    """Every sample count's map at one noise level, from one run of max(samples) copies:
    running sums (float64) of all samples and of the even and odd ones, read out as each
    swept count is reached."""
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"a sweep takes {', '.join(SMOOTHINGS)}, not {smoothing!r}")
    samples = sorted(samples)
    wanted = set(samples)
    total, even, odd = _Sums(), _Sums(), _Sums()
    maps: dict[int, np.ndarray] = {}
    halves: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for chunk in sample_maps(explainer, x, target, noise, samples[-1], progress):
        for row in chunk.double():
            rows = [row] if noise > 0 else [row] * samples[-1]  # 0 %: every copy is x
            for one in rows:
                (even if total.count % 2 == 0 else odd).add(one)
                total.add(one)
                j = total.count
                if j in wanted:  # j samples: ⌈j/2⌉ even-numbered ones, ⌊j/2⌋ odd-numbered
                    maps[j] = total.map(smoothing)
                    halves[j] = (even.map(smoothing), odd.map(smoothing))
    split = [None if b is None else display.rho(a, b) for a, b in (halves[n] for n in samples)]
    return Level(noise, noise_sigma(x, noise), [maps[n] for n in samples], split)


def stable_from(values: Sequence[float | None], threshold: float) -> int | None:
    """The first index from which on every value is ≥ ``threshold`` (None counts as not),
    or ``None`` when the last one is not."""
    start = None
    for i, value in enumerate(values):
        if value is not None and value >= threshold:
            start = i if start is None else start
        else:
            start = None
    return start


def run_sweep(
    explainer: Explainer,
    x: torch.Tensor,
    target: int,
    noise: Sequence[float],
    samples: Sequence[int],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    display: Display = Display(),
    progress: Callable[[int], None] | None = None,
    smoothing: str = "smoothgrad",
) -> Sweep:
    """The whole grid and its convergence numbers (the module's doc defines them)."""
    noise, samples = sorted(noise), sorted(samples)
    sweep = Sweep(list(noise), list(samples), threshold, target, display, smoothing)
    for level in noise:
        sweep.levels.append(
            sweep_level(explainer, x, target, level, samples, display, progress, smoothing)
        )
    for level in sweep.levels:
        at = stable_from(level.split_half, threshold)
        level.stable_samples = samples[at] if at is not None else None
    for level, after in zip(sweep.levels, sweep.levels[1:], strict=False):
        level.noise_change = display.rho(level.maps[-1], after.maps[-1])
    # At 0 % the copies are all the image: its split halves agree by construction.
    noisy = [level for level in sweep.levels if level.noise > 0] or sweep.levels
    if all(level.stable_samples is not None for level in noisy):
        sweep.stable_samples = max(level.stable_samples for level in noisy)
    at = stable_from([level.noise_change for level in sweep.levels[:-1]], threshold)
    sweep.stable_noise = noise[at] if at is not None else None
    return sweep


def rows_of_work(noise: Sequence[float], samples: Sequence[int]) -> int:
    """Forward/backward rows a sweep runs: max(samples) per level above 0 %, one at 0 %."""
    return sum(1 if level == 0 else max(samples) for level in noise)


__all__ = [
    "DEFAULT_POOL", "DEFAULT_THRESHOLD", "SMOOTHINGS", "Display", "Level", "Sweep", "rows_of_work",
    "run_sweep", "sample_maps", "stable_from", "sweep_level",
]  # fmt: skip
