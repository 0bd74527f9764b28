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
DEFAULT_OVERLAY_CMAP = "viridis"
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
    *,
    blur: float | None = 0.0,
    percentile: float = DEFAULT_PERCENTILE,
    legend: str | None = None,
) -> Image.Image:
    """The map laid on the photo at the photo's own size.

    ``box`` is the region of the photo the model saw (``LoadedModel.crop_box``); the map is
    resized onto it, and each pixel's colour is blended by its saliency (``overlay_alpha``),
    so unimportant regions, and all of the photo the model did not see, show it unchanged.

    ``blur``: σ in the photo's pixels of a Gaussian blur of the map *as displayed* (``None``:
    ``auto_overlay_blur``; 0: none), which keeps the map's values (``display_map``); ``percentile``
    is the map's cap, for the legend. ``legend``: what the map is (``legend_title``), stated
    with the colour bar and the blur in a small strip in a corner of the box; ``None``: none.
    """
    if blur is None:
        blur = auto_overlay_blur(box)
    check_cmap(cmap)
    shown = display_map(map01, box, blur)
    weights = _on_photo(shown, photo.size, box)
    heat = _colormaps()[cmap](weights)[..., :3].astype(np.float32)
    base = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
    alpha = (opacity * overlay_alpha(weights))[..., None]
    blended = base * (1.0 - alpha) + heat * alpha
    picture = Image.fromarray(_to_uint8(blended), mode="RGB")
    if legend is not None:
        _draw_legend(picture, alpha[..., 0], box, cmap, _legend_lines(legend, percentile, blur))
    return picture


def _on_photo(map01: np.ndarray, size: tuple[int, int], box) -> np.ndarray:
    """The map resampled over the whole photo frame; outside the box there is no saliency."""
    width, height = size
    left, top, right, bottom = box
    scale_x = map01.shape[1] / (right - left)
    scale_y = map01.shape[0] / (bottom - top)
    frame = Image.fromarray(np.asarray(map01, dtype=np.float32), mode="F").transform(
        (width, height),
        Image.Transform.AFFINE,
        (scale_x, 0.0, -left * scale_x, 0.0, scale_y, -top * scale_y),
        resample=Image.Resampling.BILINEAR,
        fillcolor=0.0,
    )
    return np.clip(np.asarray(frame, dtype=np.float32), 0.0, 1.0)


#: below this display value a pixel keeps the photo's own colour; from ``_OPAQUE_FROM`` on it
#: takes the full ``opacity`` of the colormap
_CLEAR_BELOW, _OPAQUE_FROM = 0.2, 0.8


def overlay_alpha(map01: np.ndarray) -> np.ndarray:
    """How much of the colormap each pixel of an overlay takes, 0 to 1, rising with the map's
    value: a smoothstep from ``_CLEAR_BELOW`` to ``_OPAQUE_FROM``. The faint saliency that
    covers most of a map must not tint the photo: blended in proportion, the dark end of a
    colormap darkens the whole part of the photo the model saw, which then stands out as a
    tinted rectangle against the untouched rest of the photo."""
    t = np.clip((np.asarray(map01) - _CLEAR_BELOW) / (_OPAQUE_FROM - _CLEAR_BELOW), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --- the overlay's display-only blur ---------------------------------------------------------

#: ``auto_overlay_blur``: σ as a fraction of the shorter side of the part of the photo the
#: model saw. SmoothGrad maps are sparse at the pixel level: on the four sample photos
#: (defaults, 50 samples) the visibly tinted part of an unblurred overlay is 800–3,800
#: separate specks; at 1 % still 14–44, at 2 % 4–11 regions, which tint 86–92 % of the map's
#: strongest 2 % of pixels (counted as docs/overlay_comparison.py counts them).
AUTO_BLUR_OF_VIEW = 0.02


def auto_overlay_blur(box: tuple[float, float, float, float]) -> float:
    """The overlay's default blur for a crop ``box``: σ in photo pixels, to 0.1 px."""
    left, top, right, bottom = box
    return round(AUTO_BLUR_OF_VIEW * min(right - left, bottom - top), 1)


def check_overlay_blur(blur: float | None) -> None:
    """Raise ``ValueError`` unless ``blur`` is ``None`` (auto) or a finite σ >= 0."""
    if blur is not None and not 0 <= blur < float("inf"):  # NaN too
        raise ValueError(f"overlay-blur must be >= 0 (pixels) and finite, got {blur:g}")


def display_map(
    map01: np.ndarray, box: tuple[float, float, float, float], blur: float
) -> np.ndarray:
    """What an overlay shows of ``map01`` (``(H, W)`` in [0, 1], laid on ``box``): the map
    itself, or for ``blur`` > 0 the map blurred by a Gaussian of σ ``blur`` photo pixels and
    given back the map's own values, rank for rank (the blurred map's brightest pixel takes
    the map's largest value, and so on down).

    The blur decides *where* the overlay is strong; the values, and so how much of the photo
    is tinted and how strongly, stay the map's. Scaled any other way, a blurred sparse map
    either fades (divided by the map's scale: its peaks are averaged away) or tints the whole
    box (divided by its own: the blurred floor of a busy map comes up with it), more so the
    wider the blur. The blur is done at the map's size, σ in map pixels, which is the blur
    of the map resized onto the photo; edges are mirrored, so saliency at the box's edge is
    neither lost nor spread outside it. Only overlays are blurred: never the map or the raw
    attribution."""
    check_overlay_blur(blur)
    map01 = np.asarray(map01, dtype=np.float32)
    if blur == 0:
        return map01
    left, top, right, bottom = box
    rows, cols = map01.shape
    sigma_y, sigma_x = blur * rows / (bottom - top), blur * cols / (right - left)
    blurred = _gaussian_matrix(rows, sigma_y) @ map01.astype(np.float64)
    blurred = blurred @ _gaussian_matrix(cols, sigma_x).T
    shown = np.empty(map01.size, dtype=np.float32)
    shown[np.argsort(blurred, axis=None, kind="stable")] = np.sort(map01, axis=None)
    return shown.reshape(map01.shape)


def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)``: the 1-D Gaussian blur of σ ``sigma`` (truncated at 3σ, or at 3n for blurs
    wider than the map, which are flat by then), edges mirrored (``numpy.pad``'s
    ``reflect``), as a matrix: ``M @ v`` blurs ``v``."""
    if n == 1 or sigma <= 0:
        return np.eye(n)
    radius = int(min(np.ceil(3.0 * sigma), 3 * n))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    source = np.arange(n)[:, None] + offsets[None, :]
    period = 2 * (n - 1)
    source = np.mod(source, period)
    source = np.where(source >= n, period - source, source)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (np.repeat(np.arange(n), offsets.size), source.ravel()), np.tile(kernel, n))
    return matrix


# --- the overlay's legend ----------------------------------------------------------------------

_SMOOTHING_NAMES = {
    "smoothgrad": "SmoothGrad",
    "smoothgrad-sq": "SmoothGrad²",
    "vargrad": "VarGrad",
}
_METHOD_NAMES = {
    "input-x-gradient": "input×gradient",
    "integrated-gradients": "integrated gradients",
    "guided-backprop": "guided backprop",
}
_SIGN_NAMES = {"positive": "positive part", "negative": "negative part"}


def legend_title(
    method: str = "gradient", smoothing: str = "smoothgrad", sign: str = "absolute"
) -> str:
    """What an overlay shows, for its legend: "SmoothGrad |map|" for the defaults,
    "VarGrad of integrated gradients |map|", "gradient positive part" …"""
    base = _METHOD_NAMES.get(method, method)
    if smoothing in _SMOOTHING_NAMES:
        name = _SMOOTHING_NAMES[smoothing]
        if method != "gradient":
            name = f"{name} of {base}"
    else:
        name = base
    return f"{name} {_SIGN_NAMES.get(sign, '|map|')}"


def _ordinal(value: float) -> str:
    if value != int(value):
        return f"{value:g}th"
    number = int(value)
    suffix = (
        "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"


def _legend_lines(title: str, percentile: float, blur: float) -> tuple[str, str]:
    """Beside the colour bar, then under it."""
    scale = f"0 – {_ordinal(percentile)} pct" if percentile < 100 else "0 – max"
    return scale, title + (f" · blur {blur:g} px" if blur > 0 else "")


def _font(size: int):
    """DejaVu Sans, shipped inside matplotlib, so the legend's glyphs (–, ·, ², ×) are the same
    on every machine; else Pillow's own scalable font; ``None`` without FreeType."""
    import matplotlib
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        pass
    try:
        font = ImageFont.load_default(size)
    except (TypeError, OSError):  # Pillow < 10.1 takes no size
        return None
    return font if isinstance(font, ImageFont.FreeTypeFont) else None


#: the legend's text height as a fraction of the shorter side of the box, and its least size
_LEGEND_TEXT_OF_VIEW, _LEGEND_TEXT_MIN = 0.025, 11


def _draw_legend(picture: Image.Image, alpha: np.ndarray, box, cmap: str, lines) -> None:
    """A dark translucent strip in the corner of the box that the overlay tints least (so
    it hides least of the saliency): the colour bar, the scale beside it, the title under.
    Left out where the box is too small to hold it."""
    from PIL import ImageDraw

    left, top, right, bottom = (int(round(v)) for v in box)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, picture.width), min(bottom, picture.height)
    size = max(_LEGEND_TEXT_MIN, round(_LEGEND_TEXT_OF_VIEW * min(right - left, bottom - top)))
    font = _font(size)
    if font is None:  # a bitmap font has neither the size nor the glyphs
        return
    draw = ImageDraw.Draw(picture)
    pad, gap = max(2, size // 3), max(2, size // 4)
    bar_w, bar_h = 6 * size, size
    widths = [draw.textlength(line, font=font) for line in lines]
    width = int(np.ceil(max(bar_w + gap + widths[0], widths[1]))) + 2 * pad
    height = 2 * size + gap + 2 * pad + size // 4
    margin = pad
    if width + 2 * margin > right - left or height + 2 * margin > 0.4 * (bottom - top):
        return
    corners = [  # bottom-left first: where a legend is looked for, and ties go there
        (left + margin, bottom - margin - height),
        (right - margin - width, bottom - margin - height),
        (left + margin, top + margin),
        (right - margin - width, top + margin),
    ]
    x, y = min(corners, key=lambda c: alpha[c[1] : c[1] + height, c[0] : c[0] + width].mean())
    strip = np.asarray(picture.crop((x, y, x + width, y + height)), dtype=np.float32) * 0.35
    bar = _colormaps()[cmap](np.linspace(0.0, 1.0, bar_w), bytes=True)[:, :3]
    bar_y = pad + (size - bar_h) // 2 + size // 8  # in the strip
    strip[bar_y : bar_y + bar_h, pad : pad + bar_w] = bar[None, :, :]
    picture.paste(Image.fromarray(_to_uint8(strip / 255.0), mode="RGB"), (x, y))  # black at 65 %
    bar_y += y
    draw = ImageDraw.Draw(picture)
    white = (255, 255, 255)
    _, ink_top, _, ink_bottom = draw.textbbox((0, 0), lines[0], font=font)
    beside = bar_y + (bar_h - (ink_bottom - ink_top)) // 2 - ink_top  # centred on the bar
    draw.text((x + pad + bar_w + gap, beside), lines[0], fill=white, font=font)
    draw.text((x + pad, bar_y + bar_h + gap), lines[1], fill=white, font=font)


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
