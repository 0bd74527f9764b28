"""Reading one value of a spec (a setting, a class, a box, a mask): its type and range, or a
``SpecError`` naming the file, the section and the key on one line
(``spec.toml: case "cup": region: …``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .. import names
from ..errors import did_you_mean
from ..model_names import looks_like_file, model_beside
from ..settings import Baseline, MapSettings, Method, Precision, Smoothing
from .reports import as_line

#: The map settings a spec's ``[defaults]`` and each ``[[case]]`` may give.
SETTING_KEYS = (
    "model", "weights", "labels", "method", "smoothing", "noise", "samples", "seed", "precision",
    "ig_steps", "ig_tolerance", "baseline", "batch_size", "target",
)  # fmt: skip


class SpecError(Exception):
    """The spec cannot be run; the message is one line naming the file, case and key."""

    def __init__(self, message: str) -> None:
        # The message quotes case names, file names and what libraries said: whatever slips
        # through unescaped must still not start a new line or drive the terminal.
        super().__init__(as_line(message))


def case_label(name: str) -> str:
    return f'case "{name}"' if name.isprintable() else f"case {names.shown(name)}"


class Where:
    """Builds the one-line messages: ``spec.toml: case "x": key: detail``."""

    def __init__(self, spec: str, section: str) -> None:
        self.spec = spec
        self.section = section

    def error(self, key: str | None, detail: str) -> SpecError:
        parts = [self.spec, self.section] + ([key] if key else []) + [detail]
        return SpecError(": ".join(parts))


def type_name(value: Any) -> str:
    return {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string",
        list: "a list", dict: "a table",
    }.get(type(value), type(value).__name__)  # fmt: skip


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_number(where: Where, key: str, value: Any, low=None, high=None) -> float:
    if not is_number(value) or not math.isfinite(value):
        raise where.error(key, f"expected a number, got {type_name(value)} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise where.error(key, f"must be in [{low}, {high}], got {value}".replace("None", "…"))
    return float(value)


def read_integer(where: Where, key: str, value: Any, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(key, f"expected an integer, got {type_name(value)} {value!r}")
    if low is not None and value < low:
        raise where.error(key, f"must be >= {low}, got {value}")
    return value


def read_string(where: Where, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(key, f"expected a non-empty string, got {type_name(value)} {value!r}")
    return value


def read_choice(where: Where, key: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    value = read_string(where, key, value)
    if value not in choices:
        raise where.error(key, f"unknown value {value!r}: use one of {', '.join(choices)}")
    return value


def read_class(where: Where, key: str, value: Any) -> str | int:
    """A class index (>= 0) or a class name, resolved once the model is loaded."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise where.error(key, f"class index must be >= 0, got {value}")
        return value
    if isinstance(value, str) and value.strip():
        return value
    raise where.error(key, f"expected a class index or name, got {type_name(value)} {value!r}")


def refuse_unknown_keys(where: Where, table: dict[str, Any], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            hint = did_you_mean(key, allowed, n=1, show=repr)
            raise where.error(key, f"unknown key{hint}")


def image_size(path: Path) -> tuple[int, int] | None:
    """The upright size of an image from its header (EXIF rotation applied), or None."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:
        return None  # not readable: the case fails when the image is loaded
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def read_mask(where: Where, path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """A region mask: nonzero pixels are inside; upright (EXIF) and of the image's size."""
    shown = names.shown(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
                image = image.convert("L")
            mask = np.asarray(image) != 0
    except Exception as exc:
        raise where.error("mask", f"cannot read {shown} as an image ({exc})") from None
    if mask.ndim != 2:
        raise where.error("mask", f"{shown} is not a single-channel mask")
    if size is not None and (mask.shape[1], mask.shape[0]) != size:
        raise where.error(
            "mask",
            f"{shown} is {mask.shape[1]}×{mask.shape[0]} but the image is {size[0]}×{size[1]}",
        )
    if not mask.any():
        raise where.error("mask", f"{shown} is empty (no nonzero pixel)")
    return mask


def read_box(where: Where, value: Any, size: tuple[int, int] | None) -> tuple[float, ...]:
    """A region box ``[x0, y0, x1, y1]`` in photo pixels, inside the image."""
    if not isinstance(value, list) or not all(is_number(v) for v in value):
        raise where.error(
            "region", f"expected 4 numbers [x0, y0, x1, y1], got {type_name(value)} {value!r}"
        )
    if len(value) != 4:
        raise where.error("region", f"expected 4 numbers [x0, y0, x1, y1], got {len(value)}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise where.error("region", f"box {value} has a non-finite number")
    if not (x0 < x1 and y0 < y1):
        raise where.error("region", f"box {value} needs x0 < x1 and y0 < y1")
    if size is not None:
        width, height = size
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise where.error("region", f"box {value} goes outside the {width}×{height} image")
    return (x0, y0, x1, y1)


def read_settings(where: Where, table: dict[str, Any], root: Path) -> dict[str, Any]:
    """Validated values of the setting keys present in ``table``; files relative to ``root``.
    Checked here, not only by ``MapSettings``, for the spec's own wording of each error."""
    out: dict[str, Any] = {}
    choices = {"method": Method, "smoothing": Smoothing, "precision": Precision}
    for key, value in table.items():
        if key not in SETTING_KEYS:
            continue
        if key == "model":
            out[key] = model_beside(read_string(where, key, value), root)
        elif key == "weights":
            out[key] = _spec_weights(read_string(where, key, value), root)
        elif key == "labels":
            out[key] = str(root / read_string(where, key, value))
        elif key == "baseline":
            name = read_string(where, key, value)
            # a named baseline stays a name; an image file lies beside the spec
            out[key] = name if name in {b.value for b in Baseline} else str(root / name)
        elif key in choices:
            out[key] = read_choice(where, key, value, (c.value for c in choices[key]))
        elif key in ("noise", "ig_tolerance"):
            out[key] = read_number(where, key, value, 0.0)
        elif key in ("samples", "ig_steps", "batch_size"):
            out[key] = read_integer(where, key, value, 1)
        elif key == "seed":
            out[key] = read_integer(where, key, value, 0)
        elif key == "target":
            out[key] = read_class(where, key, value)
    return out


def read_max_ig_gap(where: Where, table: dict[str, Any], settings: MapSettings) -> float | None:
    """A case's ``max_ig_gap``: integrated gradients' completeness gap its map may keep.

    Refused below the case's ``ig_tolerance``: the quadrature stops refining a map once its
    gap is within the tolerance, so a stricter check would fail maps that more nodes would
    have made pass."""
    if "max_ig_gap" not in table:
        return None
    if settings.method != Method.INTEGRATED_GRADIENTS:
        raise where.error("max_ig_gap", 'needs method = "integrated-gradients"')
    limit = read_number(where, "max_ig_gap", table["max_ig_gap"], 0)
    tolerance = settings.ig_tolerance
    if limit < tolerance:
        raise where.error(
            "max_ig_gap",
            f"{limit:g} is below ig_tolerance {tolerance:g}: maps stop refining once within "
            "ig_tolerance; set ig_tolerance <= max_ig_gap (or 0 for exactly ig_steps nodes)",
        )
    return limit


def _spec_weights(value: str, root: Path) -> str:
    """A weights file named in a spec lies beside the spec, as its images do; an enum name
    (``DEFAULT``, ``IMAGENET1K_V1``) stays a name. The loader's own rule tells a file from a
    name, asked of the spec's folder as well as of the name itself."""
    beside_spec = root / value  # an absolute value stays itself
    if looks_like_file(value) or beside_spec.exists():
        return str(beside_spec)
    return value
