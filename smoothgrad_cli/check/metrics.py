"""The measures ``smoothgrad check`` takes of a map, in pure numpy.

Maps are ``(H, W)`` arrays on the model's input grid; regions are given in the photo's own
pixels, photo pixel (u, v) being the unit square ``[u, u+1) × [v, v+1)``. ``view`` is the part
of the photo the map covers (``LoadedModel.crop_box``: the resize and centre crop inverted),
``(left, top, right, bottom)``, so map pixel (i, j) of an ``H × W`` map covers

    [left + j·sx, left + (j+1)·sx) × [top + i·sy, top + (i+1)·sy),
    sx = (right − left) / W,  sy = (bottom − top) / H.

``spearman`` is the one rank correlation of the project: other modules import it from here.
"""

from __future__ import annotations

import math

import numpy as np

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in photo pixels


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1…n of the flattened ``values``, ties given their average rank: the value at
    sorted positions p…q (1-based, all equal) ranks (p + q) / 2."""
    a = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    inverse = np.empty(a.size, dtype=np.intp)
    inverse[order] = np.arange(a.size)
    ordered = a[order]
    new_value = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = np.cumsum(new_value)[inverse]
    bounds = np.r_[np.flatnonzero(new_value), a.size]
    # a value's tie group spans sorted positions bounds[d-1] … bounds[d]-1 (0-based)
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equally sized arrays: the Pearson correlation of
    their ranks, ρ = Σ (ra − r̄a)(rb − r̄b) / √(Σ (ra − r̄a)² · Σ (rb − r̄b)²), which is exact
    with ties (unlike 1 − 6 Σ d² / n(n² − 1)). NaN when one array is constant."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.size != b.size:
        raise ValueError(f"arrays differ in size: {a.size} and {b.size}")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denominator == 0:
        return float("nan")
    return float(ra @ rb) / denominator


def pool_map(map2d: np.ndarray, block: int) -> np.ndarray:
    """Average over ``block`` × ``block`` tiles: out[I, J] is the mean of map[i, j] for
    i in [I·block, (I+1)·block), j likewise, clipped at the edge (a partial tile averages what
    it has); ``block`` 1 returns the map unchanged."""
    if block == 1:
        return np.asarray(map2d, dtype=np.float64)
    m = np.asarray(map2d, dtype=np.float64)
    h, w = m.shape
    rows = np.add.reduceat(m, np.arange(0, h, block), axis=0)
    sums = np.add.reduceat(rows, np.arange(0, w, block), axis=1)
    counts = np.outer(
        np.diff(np.r_[np.arange(0, h, block), h]), np.diff(np.r_[np.arange(0, w, block), w])
    )
    return sums / counts


def _footprints(n_cells: int, start: float, stop: float) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``n_cells`` map pixels starts and stops along one photo axis."""
    step = (stop - start) / n_cells
    lo = start + np.arange(n_cells) * step
    return lo, lo + step


def _overlap(lo: np.ndarray, hi: np.ndarray, a, b) -> np.ndarray:
    """Length of [lo, hi) ∩ [a, b), elementwise."""
    return np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None)


def region_weights(
    shape: tuple[int, int],
    view: Box,
    *,
    box: Box | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """For each pixel of an ``(H, W)`` map, the share of its footprint on the photo inside the
    region: a box in photo pixels, or a boolean mask of the photo's size.

    With footprint F(i, j) (module docstring), w[i, j] = |F(i, j) ∩ region| / |F(i, j)|:
    for a box, the product of the overlaps along x and y; for a mask,
    w = Ay · mask · Axᵀ with Ax[j, u] = |[x_j, x_j + sx) ∩ [u, u+1)| / sx (Ay likewise).
    Exact for that geometry; the parts of the photo outside the view carry no weight.
    """
    height, width = shape
    left, top, right, bottom = view
    xlo, xhi = _footprints(width, left, right)
    ylo, yhi = _footprints(height, top, bottom)
    if box is not None:
        x0, y0, x1, y1 = box
        wx = _overlap(xlo, xhi, x0, x1) / (xhi - xlo)
        wy = _overlap(ylo, yhi, y0, y1) / (yhi - ylo)
        return np.outer(wy, wx)
    if mask is None:
        raise ValueError("need a box or a mask")
    m = np.asarray(mask, dtype=np.float64)
    u = np.arange(m.shape[1])
    v = np.arange(m.shape[0])
    ax = _overlap(xlo[:, None], xhi[:, None], u[None, :], u[None, :] + 1) / (xhi - xlo)[:, None]
    ay = _overlap(ylo[:, None], yhi[:, None], v[None, :], v[None, :] + 1) / (yhi - ylo)[:, None]
    return ay @ m @ ax.T


def mass_in_region(map2d: np.ndarray, weights: np.ndarray) -> float:
    """The share of the map's total inside the region, Σ m·w / Σ m (NaN for an all-zero
    map)."""
    m = np.asarray(map2d, dtype=np.float64)
    total = float(m.sum())
    if not total > 0:
        return float("nan")
    return float((m * weights).sum()) / total


def visible_share(view: Box, *, box: Box | None = None, mask: np.ndarray | None = None) -> float:
    """How much of the region, by area, lies inside the view: |region ∩ view| / |region|."""
    left, top, right, bottom = view
    if box is not None:
        x0, y0, x1, y1 = box
        inside = max(0.0, min(x1, right) - max(x0, left)) * max(0.0, min(y1, bottom) - max(y0, top))
        return inside / ((x1 - x0) * (y1 - y0))
    if mask is None:
        raise ValueError("need a box or a mask")
    u = np.arange(mask.shape[1])
    v = np.arange(mask.shape[0])
    wx = _overlap(u, u + 1, left, right)
    wy = _overlap(v, v + 1, top, bottom)
    return float(wy @ mask @ wx) / float(mask.sum())


def peak_point(magnitude: np.ndarray, view: Box) -> tuple[float, float]:
    """The centre, in photo coordinates, of the map's largest pixel (the first on ties):
    (left + (j + ½)·sx, top + (i + ½)·sy) for (i, j) = argmax."""
    height, width = magnitude.shape
    i, j = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
    left, top, right, bottom = view
    return (
        left + (j + 0.5) * (right - left) / width,
        top + (i + 0.5) * (bottom - top) / height,
    )


def distance_to_region(
    point: tuple[float, float],
    *,
    box: Box | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Euclidean distance in photo pixels from ``point`` to the region (0 inside):
    √(dx² + dy²) with dx = max(x0 − x, 0, x − x1), dy likewise, to a box, or the smallest
    such distance to any pixel of a mask (inf for an empty mask)."""
    x, y = point
    if box is not None:
        x0, y0, x1, y1 = box
        dx = max(x0 - x, 0.0, x - x1)
        dy = max(y0 - y, 0.0, y - y1)
        return math.hypot(dx, dy)
    if mask is None:
        raise ValueError("need a box or a mask")
    vs, us = np.nonzero(mask)
    if us.size == 0:
        return float("inf")
    dx = np.maximum.reduce([us - x, np.zeros(us.shape), x - (us + 1)])
    dy = np.maximum.reduce([vs - y, np.zeros(vs.shape), y - (vs + 1)])
    return float(np.sqrt(dx * dx + dy * dy).min())


__all__ = [
    "distance_to_region", "mass_in_region", "peak_point", "pool_map", "rankdata",
    "region_weights", "spearman", "visible_share",
]  # fmt: skip
