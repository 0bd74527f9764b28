"""The checks, one function per kind, each turning what a case's run saw into one
``CheckResult``. ``@_check(name, applies)`` registers a function in ``CHECKS``; the order of
registration is the order a case's results are reported in, and ``CHECK_NAMES`` and
``Case.check_names()`` are read from it.

What the checks measure (the formulas are in ``metrics``):

* maps are SmoothGrad attributions ``(C, H, W)`` of the case's target class (``target``, or
  the model's top-1 prediction) at the model's input size;
* the *normalised map* is the paper's display (``render.magnitude_map``): |attribution|
  summed over channels, capped at the 99th percentile, scaled to [0, 1];
* ``expect_class``: one of the expected classes ranks within the top ``top_k``;
  ``min_probability``: the best of them has at least that softmax probability;
* ``min_mass``: the share of the normalised map's total inside the region, each map pixel
  counting with the fraction of its footprint on the photo inside the box or mask. Parts of
  the photo the model never sees (outside the crop) carry no saliency;
* ``pointing``: the pixel of largest |attribution| summed over channels (before capping, so
  there are no ties at 1.0) is a hit when its centre, in photo coordinates, lies inside the
  region, or within ``pointing_tolerance`` photo pixels of it (Zhang et al. 2016 use 15);
* ``min_rank_correlation`` / ``max_mean_abs_diff``: Spearman rank correlation and mean
  absolute difference between the normalised map and the golden's (optionally average-pooled
  in ``pool`` × ``pool`` blocks first);
* ``sanity``: the same map (same seed, same noise, same target) from a copy of the model
  whose top layers are re-drawn at random (Adebayo et al. 2018); its Spearman correlation
  with the original normalised map must stay below a threshold;
* ``max_ig_gap``: integrated gradients' completeness gap, |Σ attribution − (S_c(x) −
  S_c(x′))| / |S_c(x) − S_c(x′)| (of the mean map against the mean over the noisy copies
  under smoothing, ``engine.convergence``), at most this after refining to ``ig_tolerance``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import names, render
from .metrics import (
    distance_to_region,
    mass_in_region,
    peak_point,
    pool_map,
    region_weights,
    spearman,
    visible_share,
)
from .reports import CheckResult

if TYPE_CHECKING:
    import torch

    from ..engine.convergence import Convergence
    from .spec import Case


@dataclass
class CaseMap:
    attribution: np.ndarray  # (C, H, W) float32
    normalised: np.ndarray  # (H, W) paper's display in [0, 1]
    magnitude: np.ndarray  # (H, W) |attribution| summed over channels
    ig: Convergence | None = None  # integrated gradients: how complete the map is

    @classmethod
    def of(cls, attribution: np.ndarray, ig: Convergence | None = None) -> CaseMap:
        return cls(
            attribution=attribution,
            normalised=render.magnitude_map(attribution),
            magnitude=np.abs(attribution.astype(np.float64)).sum(axis=0),
            ig=ig,
        )


@dataclass
class Golden:
    """What a case's golden gave its checks: the two maps to compare, or, without them, the
    verdict every golden check of the case reports (written, or why there is no golden)."""

    ours: np.ndarray | None = None  # normalised and pooled
    theirs: np.ndarray | None = None
    shown_name: str = ""
    passed: bool = False
    measured: str = "no golden"
    message: str = ""

    def compare(
        self,
        case: str,
        check: str,
        threshold: str,
        limit: float,
        measure: Callable[[np.ndarray, np.ndarray], float],
        passes: Callable[[float], bool],
        shown: str,
        failure: str,
    ) -> CheckResult:
        """The verdict of one golden check: ``measure`` of the two maps against ``limit``
        (``passes``), written with ``shown``; ``failure`` says why it failed."""
        if self.ours is None:
            return CheckResult(
                case, check, self.passed, self.measured, threshold, limit=limit,
                message=self.message,
            )  # fmt: skip
        value = measure(self.ours, self.theirs)
        ok = passes(value)
        text = shown.format(value)
        message = "" if ok else failure.format(golden=self.shown_name, value=text)
        return CheckResult(
            case, check, ok, text, threshold, value=value, limit=limit, message=message
        )


def read_golden(case: Case, cmap: CaseMap, shown_spec: str) -> Golden:
    """The case's golden map next to its own map, or why it cannot be compared."""
    path = case.golden
    shown = names.shown(path)
    if not path.is_file():
        return Golden(
            message=f"golden file {shown} not found: write it with "
            f"`smoothgrad check {shown_spec} --update-golden`"
        )
    try:
        golden = np.load(path, allow_pickle=False)
    except Exception as exc:
        return Golden(message=f"golden file {shown} cannot be read as .npy ({exc})")
    if golden.shape != cmap.attribution.shape:
        return Golden(
            message=f"golden map {shown} has shape {golden.shape}, the map has "
            f"{cmap.attribution.shape}: refresh it with --update-golden"
        )
    if not np.isfinite(golden).all():
        return Golden(message=f"golden map {shown} holds NaN or infinite values")
    return Golden(
        ours=pool_map(cmap.normalised, case.pool),
        theirs=pool_map(render.magnitude_map(golden), case.pool),
        shown_name=names.shown(path.name),
    )


@dataclass
class Subject:
    """What the checks of one case look at. The maps and the golden are computed on first
    use, so a case whose checks need no map costs one forward pass."""

    case: Case
    categories: Sequence[str]
    probabilities: torch.Tensor  # (classes,) softmax of the clean image
    order: torch.Tensor  # class indices, most probable first
    expected: Sequence[int]  # expect_class, resolved to indices
    view: tuple[float, float, float, float]  # the photo's part the model sees
    map: Callable[[], CaseMap]
    randomised_map: Callable[[], CaseMap]  # the map from the randomised copy (sanity)
    golden: Callable[[], Golden]

    def wanted(self) -> str:
        return " or ".join(repr(self.categories[c]) for c in self.expected)


@dataclass(frozen=True)
class CheckKind:
    name: str
    applies: Callable[[Case], bool]
    run: Callable[[Subject], CheckResult]


CHECKS: dict[str, CheckKind] = {}


def _check(name: str, applies: Callable[[Case], bool]):
    def register(run: Callable[[Subject], CheckResult]) -> Callable[[Subject], CheckResult]:
        CHECKS[name] = CheckKind(name, applies, run)
        return run

    return register


@_check("expect_class", lambda case: case.expect_class is not None)
def expect_class(s: Subject) -> CheckResult:
    case, categories, order, probs = s.case, s.categories, s.order, s.probabilities
    ranks = {c: int((order == c).nonzero()[0, 0]) + 1 for c in s.expected}
    best = min(ranks, key=lambda c: ranks[c])
    rank = ranks[best]
    ok = rank <= case.top_k
    top = int(order[0])
    return CheckResult(
        case.name,
        "expect_class",
        ok,
        f"{categories[best]} #{rank} ({float(probs[best]):.3f})",
        "top-1" if case.top_k == 1 else f"top-{case.top_k}",
        value=rank,
        limit=case.top_k,
        details={
            "class": categories[best],
            "class_index": best,
            "probability": float(probs[best]),
            "predicted": categories[top],
        },
        message=""
        if ok
        else (
            f"expected {s.wanted()} within the top {case.top_k}; predicted "
            f"{categories[top]!r} ({float(probs[top]):.3f})"
        ),
    )


@_check(
    "min_probability",
    lambda case: case.expect_class is not None and case.min_probability is not None,
)
def min_probability(s: Subject) -> CheckResult:
    limit = s.case.min_probability
    p = max(float(s.probabilities[c]) for c in s.expected)
    ok = p >= limit
    return CheckResult(
        s.case.name,
        "min_probability",
        ok,
        f"{p:.3f}",
        f">= {limit:g}",
        value=p,
        limit=limit,
        message="" if ok else f"probability of {s.wanted()} is {p:.3f}",
    )


@_check("min_mass", lambda case: case.region is not None and case.min_mass is not None)
def min_mass(s: Subject) -> CheckResult:
    region, limit = s.case.region, s.case.min_mass
    cmap = s.map()
    weights = region_weights(cmap.normalised.shape, s.view, box=region.box, mask=region.mask)
    mass = mass_in_region(cmap.normalised, weights)
    area = float(weights.mean())  # what a uniform map would score
    ok = bool(mass >= limit)
    warning = ""
    if limit <= area:
        # A map spread evenly over the view scores the area: such a threshold passes any map.
        warning = (
            f"min_mass {limit:g} is not above the region's area {area:.2f}: an even map "
            "would pass; raise it or use a smaller region"
        )
    message = ""
    if not ok:
        message = (
            "the map is all zeros"
            if math.isnan(mass)
            else f"only {mass:.1%} of the saliency lies in the region"
        )
        visible = visible_share(s.view, box=region.box, mask=region.mask)
        if visible < 0.999:
            message += f" ({visible:.0%} of the region is in the model's view)"
    return CheckResult(
        s.case.name,
        "min_mass",
        ok,
        f"{mass:.3f} (area {area:.2f})",
        f">= {limit:g}",
        value=mass,
        limit=limit,
        message=message,
        warning=warning,
        details={"area_share": area},
    )


@_check("pointing", lambda case: case.region is not None and case.pointing)
def pointing(s: Subject) -> CheckResult:
    region, tolerance = s.case.region, s.case.pointing_tolerance
    point = peak_point(s.map().magnitude, s.view)
    distance = distance_to_region(point, box=region.box, mask=region.mask)
    ok = distance <= tolerance
    where = f"({point[0]:.0f}, {point[1]:.0f})"
    return CheckResult(
        s.case.name,
        "pointing",
        ok,
        f"hit {where}" if distance == 0 else f"{distance:.0f} px off {where}",
        "inside" if tolerance == 0 else f"within {tolerance:g} px",
        value=distance,
        limit=tolerance,
        message="" if ok else f"the map's maximum at {where} is outside the region",
        details={"point": [round(point[0], 2), round(point[1], 2)]},
    )


@_check(
    "min_rank_correlation",
    lambda case: case.golden is not None and case.min_rank_correlation is not None,
)
def golden_rank_correlation(s: Subject) -> CheckResult:
    limit = s.case.min_rank_correlation
    return s.golden().compare(
        s.case.name, "min_rank_correlation", f">= {limit:g}", limit, spearman,
        lambda rho: bool(rho >= limit), "{:.3f}", "rank correlation with {golden} is {value}",
    )  # fmt: skip


@_check(
    "max_mean_abs_diff",
    lambda case: case.golden is not None and case.max_mean_abs_diff is not None,
)
def golden_mean_abs_diff(s: Subject) -> CheckResult:
    limit = s.case.max_mean_abs_diff
    return s.golden().compare(
        s.case.name, "max_mean_abs_diff", f"<= {limit:g}", limit, _mean_abs_diff,
        lambda diff: diff <= limit, "{:.4f}", "mean |difference| from {golden} is {value}",
    )  # fmt: skip


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@_check("sanity", lambda case: case.sanity is not None)
def sanity(s: Subject) -> CheckResult:
    sanity = s.case.sanity
    rho = spearman(s.map().normalised, s.randomised_map().normalised)
    ok = bool(rho < sanity.max_rank_correlation)
    return CheckResult(
        s.case.name,
        "sanity",
        ok,
        f"rho={rho:.3f} ({sanity.label})",
        f"< {sanity.max_rank_correlation:g}",
        value=rho,
        limit=sanity.max_rank_correlation,
        message=""
        if ok
        else (
            f"randomising {sanity.label} of the model barely changes the map "
            f"(rank correlation {rho:.3f}): the method is not explaining this model"
        ),
    )


@_check("max_ig_gap", lambda case: case.max_ig_gap is not None)
def max_ig_gap(s: Subject) -> CheckResult:
    limit, ig = s.case.max_ig_gap, s.map().ig
    ok = ig.gap <= limit
    gap = f"{ig.gap:.2%}" if math.isfinite(ig.gap) else "unbounded"
    return CheckResult(
        s.case.name,
        "max_ig_gap",
        ok,
        f"{gap} ({ig.steps} steps)",
        f"<= {limit:g}",
        value=ig.gap,
        limit=limit,
        message=""
        if ok
        else (
            f"the map's attributions sum to {ig.attribution_sum:.4g} where the score changes "
            f"by {ig.score_change:.4g} at {ig.steps} steps: raise ig_steps "
            f"(now {s.case.settings.ig_steps}) for a complete map"
        ),
        details={
            "steps": ig.steps,
            "attribution_sum": ig.attribution_sum,
            "score_change": ig.score_change,
        },
    )


#: every check a case can hold, in the order its results are reported
CHECK_NAMES = tuple(CHECKS)


def check_names(case: Case) -> list[str]:
    """The checks ``case`` holds, in report order."""
    return [kind.name for kind in CHECKS.values() if kind.applies(case)]


def run_checks(subject: Subject) -> list[CheckResult]:
    return [kind.run(subject) for kind in CHECKS.values() if kind.applies(subject.case)]


__all__ = [
    "CHECKS", "CHECK_NAMES", "CaseMap", "CheckKind", "Golden", "Subject", "check_names",
    "read_golden", "run_checks",
]  # fmt: skip
