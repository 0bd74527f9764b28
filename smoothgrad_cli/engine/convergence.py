"""Integrated gradients refined per input until they are complete to a tolerance.

Completeness (Sundararajan et al. 2017): the attributions of one map sum to S_c(x) − S_c(x′).
The quadrature misses that by its error, which the rough integrands of ReLU networks make
large at a few dozen nodes. The *gap* of a map is how far its sum misses, relative to the score
change; under smoothing it is the gap of the mean map against the mean over the noisy copies
of S_c(x + ε_j) − S_c(x′_j), for which the identity holds too (both sides are means).

``converged_attribute`` runs SmoothGrad at 16, 32, 64, … nodes up to a maximum, and after
each level keeps the maps of the inputs whose gap is within the tolerance; the others, all of
them together, go on to the next level. Gauss–Legendre rules are not nested, so each level
recomputes its nodes: an input that stops at N nodes cost 16 + 32 + … + N < 2N passes per
noisy copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .methods import Completeness, IntegratedGradients
from .smoothgrad import SmoothGrad

#: the first level of the refinement: fewer nodes rarely come within a few percent on image
#: classifiers, and a gap that is small by chance (the error changing sign) is likelier there
FIRST_STEPS = 16


def step_levels(max_steps: int, first: int = FIRST_STEPS) -> list[int]:
    """The node counts tried: ``first``, doubled while below ``max_steps``, then
    ``max_steps`` itself (``[max_steps]`` alone when it is not above ``first``)."""
    if max_steps < 1 or first < 1:
        raise ValueError(f"steps must be >= 1, got max {max_steps}, first {first}")
    levels = []
    steps = first
    while steps < max_steps:
        levels.append(steps)
        steps *= 2
    return [*levels, max_steps]


@dataclass(frozen=True)
class Convergence:
    """How complete one map is: the sum of its attribution against the score change."""

    steps: int  # quadrature nodes of the map
    attribution_sum: float  # Σ of the (mean) map over channels and pixels
    score_change: float  # (mean over the noisy copies of) S_c(x) − S_c(x′)
    tolerance: float | None  # the gap asked for; None: fixed steps, nothing asked
    gap: float  # |attribution_sum − score_change| / |score_change|; inf when the change is 0

    @property
    def converged(self) -> bool | None:
        """Whether the gap is within the tolerance; ``None`` when none was asked."""
        return None if self.tolerance is None else self.gap <= self.tolerance


def completeness_gap(attribution_sum: float, score_change: float) -> float:
    """|Σ attribution − ΔS| / |ΔS|: 0 when both are 0 (x is its baseline), inf when only
    the score change is (nothing to be relative to)."""
    miss = abs(attribution_sum - score_change)
    if score_change == 0:
        return 0.0 if miss == 0 else math.inf
    return miss / abs(score_change)


@dataclass
class Progress:
    """What ``converged_attribute`` tells as it goes, to two listeners that count rows
    differently once a row's cost depends on its level:

    * ``shown`` (a progress bar) is told rows scaled so that each input's add up to
      ``rows_per_input`` whatever level it stops at, so a bar ends at N/N;
    * ``work`` (a chunk-size meter) is told rows at the most nodes, ``steps / max steps`` of
      a row each, so that rows × the most nodes counts the passes made.
    """

    shown: Callable[[float], None] | None = None
    work: Callable[[float], None] | None = None

    def __call__(self, rows: float) -> None:
        """As a plain progress callback (a call at fixed steps): both are told ``rows``."""
        for tell in (self.shown, self.work):
            if tell is not None:
                tell(rows)


class WorkMeter:
    """A chunk-size meter (``tuning.RunMeter``) whose ``wrap(progress)`` hands out a
    ``Progress``: the bar as ``shown``, the meter's timing as ``work``. Anything else is the
    meter's own (``active``, ``passes_per_row``, ``verdict``)."""

    def __init__(self, meter) -> None:
        self.meter = meter

    def wrap(self, progress: Callable[[float], None] | None) -> Progress:
        return Progress(progress, self.meter.wrap(None))

    def __getattr__(self, name: str):
        return getattr(self.__dict__["meter"], name)


def converged_attribute(
    smoother: SmoothGrad,
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    tolerance: float | None,
    first_steps: int = FIRST_STEPS,
    progress: Progress | Callable[[float], None] | None = None,
    on_oom: Callable[[int], None] | None = None,
) -> tuple[Tensor, list[Convergence]]:
    """Smoothed integrated-gradients maps ``(N, C, H, W)`` and each one's ``Convergence``.

    ``smoother.base`` is the method at its most nodes (``--ig-steps``). With ``tolerance``
    (> 0), each input is refined through ``step_levels`` until its gap is within it, else
    kept at the most nodes; without, every map is made at the most nodes.

    ``progress``: a ``Progress``, or a plain callback told what ``Progress.shown`` is.
    """
    if not isinstance(progress, Progress):
        progress = Progress(shown=progress)
    ig = smoother.base
    if not isinstance(ig, IntegratedGradients):
        raise TypeError(f"converged_attribute needs integrated gradients, got {ig!r}")
    if x.shape[0] == 0:
        return smoother.attribute(model, x, target), []
    target = torch.as_tensor(target, dtype=torch.long).expand(x.shape[0])
    levels = step_levels(ig.steps, first_steps) if tolerance else [ig.steps]
    rows = smoother.rows_per_input
    maps: Tensor | None = None
    results: list[Convergence | None] = [None] * x.shape[0]
    pending = list(range(x.shape[0]))
    shown = 0.0  # the share of each pending input's progress told so far
    try:
        for number, steps in enumerate(levels):
            last = number == len(levels) - 1
            # The progress bar's share of this level: its cost among the levels left.
            share = (1.0 - shown) * steps / sum(levels[number:])
            smoother.base = method = ig if steps == ig.steps else ig.with_steps(steps)

            def told(n_rows: int, share=share, steps=steps) -> None:
                if progress.shown is not None:
                    progress.shown(n_rows * share)
                if progress.work is not None:
                    progress.work(n_rows * steps / ig.steps)

            with method.recording() as records:
                level_maps = smoother.attribute(
                    model, x[pending], target[pending], progress=told, on_oom=on_oom
                )
            shown += share
            if maps is None:
                maps = torch.empty(
                    (x.shape[0], *level_maps.shape[1:]), dtype=level_maps.dtype,
                    device=level_maps.device,
                )  # fmt: skip
            sums, changes = _per_input(records, len(pending), rows)
            still = []
            for slot, index in enumerate(pending):
                result = Convergence(
                    steps=steps,
                    attribution_sum=sums[slot],
                    score_change=changes[slot],
                    tolerance=tolerance or None,
                    gap=completeness_gap(sums[slot], changes[slot]),
                )
                # A NaN gap (a model that overflows) fails the map anyway: refining is no help.
                if last or result.converged or math.isnan(result.gap):
                    maps[index] = level_maps[slot]
                    results[index] = result
                else:
                    still.append(index)
            if progress.shown is not None and len(still) < len(pending):
                # Inputs that stop here get the rest of their share at once.
                progress.shown((len(pending) - len(still)) * rows * (1.0 - shown))
            pending = still
            if not pending:
                break
    finally:
        smoother.base = ig
    return maps, results


def _per_input(
    records: list[Completeness], n_inputs: int, rows: int
) -> tuple[list[float], list[float]]:
    """Each input's mean over its noisy copies of Σ attribution and of the score change:
    SmoothGrad's rows are image-major, ``rows`` per input. On the host in float64, once per
    level: the score change is a difference of two scores that may be close."""

    def host(values: list[Tensor]) -> Tensor:
        joined = torch.cat([v.detach().reshape(-1) for v in values]) if values else torch.empty(0)
        return joined.cpu().double()

    sums = host([r.sums for r in records])
    changes = host([r.scores for r in records]) - host([r.baseline_scores for r in records])
    if sums.numel() != n_inputs * rows:
        raise RuntimeError(
            f"integrated gradients recorded {sums.numel()} rows, expected {n_inputs * rows}"
        )
    return (
        sums.reshape(n_inputs, rows).mean(1).tolist(),
        changes.reshape(n_inputs, rows).mean(1).tolist(),
    )


__all__ = [
    "FIRST_STEPS", "Convergence", "Progress", "WorkMeter", "completeness_gap",
    "converged_attribute", "step_levels",
]  # fmt: skip
