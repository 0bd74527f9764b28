"""From attribution tensors to pictures, and writing files so that none is ever half-written."""

from __future__ import annotations

import io
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import did_you_mean
from .files import atomic_write

DEFAULT_PERCENTILE = 99.0
DEFAULT_OVERLAY_CMAP = "inferno"
DEFAULT_DIVERGING_CMAP = "coolwarm"


def _colormaps():
    # Imported on first use: matplotlib costs a second at start-up, and `--help` or a usage
    # error should not wait for it.
    import matplotlib

    return matplotlib.colormaps


def check_cmap(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a matplotlib colormap."""
    if name not in _colormaps():
        hint = did_you_mean(name, _colormaps())
        raise ValueError(f"unknown colormap {name!r}{hint}")


def check_percentile(percentile: float) -> None:
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")


def magnitude_map(attribution: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """The paper's display: |attribution| summed over channels, capped at ``percentile``,
    scaled to [0, 1]. ``(C, H, W)`` → ``(H, W)`` float32.

    As in the authors' code (PAIR ``VisualizeImageGrayscale``) the map's minimum goes to 0 and
    its ``percentile``-th value to 1. A constant map becomes all zeros, never NaN.
    """
    check_percentile(percentile)
    summed = np.abs(np.asarray(attribution, dtype=np.float64)).sum(axis=0)
    return _scale(summed, percentile)


def _scale(image_2d: np.ndarray, percentile: float) -> np.ndarray:
    vmax = float(np.percentile(image_2d, percentile))
    vmin = float(image_2d.min())
    if not vmax > vmin:
        return np.zeros(image_2d.shape, dtype=np.float32)
    return np.clip((image_2d - vmin) / (vmax - vmin), 0.0, 1.0).astype(np.float32)


def signed_map(attribution: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """Channels summed with their sign, divided by the ``percentile``-th |value|, clipped to
    [−1, 1]. Zero stays zero, so a diverging colormap centres on it."""
    check_percentile(percentile)
    summed = np.asarray(attribution, dtype=np.float64).sum(axis=0)
    scale = float(np.percentile(np.abs(summed), percentile))
    if not scale > 0:
        return np.zeros(summed.shape, dtype=np.float32)
    return np.clip(summed / scale, -1.0, 1.0).astype(np.float32)


class Sign(str, Enum):
    """What a map shows, as Captum's ``visualize_image_attr(sign=…)`` names it: the paper's
    |attribution| summed over channels, or the channels summed with their sign and then
    their positive part, their negative part, or both around zero (a diverging colormap)."""

    ABSOLUTE = "absolute"
    POSITIVE = "positive"
    NEGATIVE = "negative"
    ALL = "all"


SIGNS = tuple(s.value for s in Sign)


def sign_map(
    attribution: np.ndarray, sign: str = "absolute", percentile: float = DEFAULT_PERCENTILE
) -> np.ndarray:
    """The map to display for ``sign`` (``SIGNS``): in [0, 1], or [−1, 1] for ``all``.

    ``positive`` and ``negative`` keep zero at zero: the part (the negative one as a
    magnitude) is divided by its ``percentile``-th value, or by its maximum when fewer
    pixels than that carry it, and clipped to [0, 1].
    """
    if sign == "absolute":
        return magnitude_map(attribution, percentile)
    if sign == "all":
        return signed_map(attribution, percentile)
    if sign not in SIGNS:
        raise ValueError(f"unknown sign {sign!r}: use one of {', '.join(SIGNS)}")
    check_percentile(percentile)
    summed = np.asarray(attribution, dtype=np.float64).sum(axis=0)
    part = np.maximum(summed if sign == "positive" else -summed, 0.0)
    scale = float(np.percentile(part, percentile)) or float(part.max())
    if not scale > 0:
        return np.zeros(part.shape, dtype=np.float32)
    return np.clip(part / scale, 0.0, 1.0).astype(np.float32)


def grayscale(map01: np.ndarray) -> Image.Image:
    """[0, 1] → 8-bit grayscale ("L"), 1.0 → 255, rounding to nearest."""
    return Image.fromarray(_to_uint8(map01), mode="L")


def colorize(map01: np.ndarray, cmap: str) -> Image.Image:
    """[0, 1] → RGB through a matplotlib colormap."""
    check_cmap(cmap)
    rgba = _colormaps()[cmap](np.clip(map01, 0.0, 1.0), bytes=True)
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]), mode="RGB")


def diverging(signed: np.ndarray, cmap: str = DEFAULT_DIVERGING_CMAP) -> Image.Image:
    """[−1, 1] → RGB with 0 at the colormap's centre."""
    return colorize((np.asarray(signed) + 1.0) / 2.0, cmap)


def overlay(
    photo: Image.Image,
    map01: np.ndarray,
    box: tuple[float, float, float, float],
    cmap: str = DEFAULT_OVERLAY_CMAP,
    opacity: float = 0.7,
) -> Image.Image:
    """The map laid on the photo at the photo's own size.

    ``box`` is the region of the photo the model saw (``LoadedModel.crop_box``); the map is
    resized onto it, and each pixel's colour is blended by its saliency (``overlay_alpha``),
    so unimportant regions, and all of the photo the model did not see, show it unchanged.
    """
    width, height = photo.size
    left, top, right, bottom = box
    # Resample the map over the whole photo frame; outside the box there is no saliency.
    scale_x = map01.shape[1] / (right - left)
    scale_y = map01.shape[0] / (bottom - top)
    frame = Image.fromarray(np.asarray(map01, dtype=np.float32), mode="F").transform(
        (width, height),
        Image.Transform.AFFINE,
        (scale_x, 0.0, -left * scale_x, 0.0, scale_y, -top * scale_y),
        resample=Image.Resampling.BILINEAR,
        fillcolor=0.0,
    )
    weights = np.clip(np.asarray(frame, dtype=np.float32), 0.0, 1.0)
    check_cmap(cmap)
    heat = _colormaps()[cmap](weights)[..., :3].astype(np.float32)
    base = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
    alpha = (opacity * overlay_alpha(weights))[..., None]
    blended = base * (1.0 - alpha) + heat * alpha
    return Image.fromarray(_to_uint8(blended), mode="RGB")


#: below this display value a pixel keeps the photo's own colour; from ``_OPAQUE_FROM`` on it
#: takes the full ``opacity`` of the colormap
_CLEAR_BELOW, _OPAQUE_FROM = 0.3, 0.9


def overlay_alpha(map01: np.ndarray) -> np.ndarray:
    """How much of the colormap each pixel of an overlay takes, 0 to 1: a smoothstep from
    ``_CLEAR_BELOW`` to ``_OPAQUE_FROM``. The faint saliency that covers most of a map must
    not tint the photo: blended in proportion, the dark end of a colormap such as inferno
    darkens the whole part of the photo the model saw, which then stands out as a tinted
    rectangle against the untouched rest of the photo."""
    t = np.clip((map01 - _CLEAR_BELOW) / (_OPAQUE_FROM - _CLEAR_BELOW), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(values, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


# --- writing: through files.atomic_write, so no output is ever half there ------------------


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path) -> None:
    atomic_write(path, png_bytes(image))


def save_npy(array: np.ndarray, path: Path) -> None:
    atomic_write(path, npy_bytes(array))
