"""``smoothgrad check``: expectations on what a model looks at, for CI.

A TOML spec names images and what must hold for each: the predicted class, where the saliency
lies (a box or a mask), how close the map stays to a saved golden map, and whether the map
passes the model-randomisation sanity check of Adebayo et al. (2018). Each case's map is
computed once and shared by all its checks; cases are grouped by model and each model is
loaded once.

Definitions (also in the README):

* maps are SmoothGrad attributions ``(C, H, W)`` of the case's target class (``target``, or
  the model's top-1 prediction) at the model's input size;
* the *normalised map* is the paper's display (``render.magnitude_map``): |attribution|
  summed over channels, capped at the 99th percentile, scaled to [0, 1];
* ``min_mass``: the share of the normalised map's total inside the region. The region, given
  in original-image pixels, is mapped exactly onto the model's input grid: each map pixel
  covers a rectangle of the photo (``LoadedModel.crop_box``, the resize + centre crop
  inverted) and counts with the fraction of that rectangle inside the box or mask. Parts of
  the photo the model never sees (outside the crop) carry no saliency;
* ``pointing``: the pixel of largest |attribution| summed over channels (before capping, so
  there are no ties at 1.0) is a hit when its centre, in photo coordinates, lies inside the
  region, or within ``pointing_tolerance`` photo pixels of it (Zhang et al. 2016 use 15);
* ``golden``: Spearman rank correlation and mean absolute difference between the normalised
  maps (optionally average-pooled in ``pool`` × ``pool`` blocks first);
* ``sanity``: the same map (same seed, same noise, same target) from a deep copy of the
  model whose top layers (conv and linear layers, counted from the output) are re-drawn at
  random; its Spearman correlation with the original normalised map must stay below a
  threshold. The user's model and its files are never touched.

Files a spec names (images, masks, goldens, a ``weights`` file) are relative to its folder.
``--update-golden`` writes only there: a golden whose path, symlinks resolved, leaves the
spec's folder is a spec error unless ``--allow-outside-spec-folder`` is given (and even then
its folder must exist; missing sub-folders are made only inside the spec's folder), and a
file that is not a ``.npy`` map loading without pickle is never overwritten (a spec error).
Both are found before any model is loaded, so a refused spec writes nothing.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from . import engine, names, render
from .images import ImageError, load_image
from .models import EMBEDDED, LoadedModel, ModelError, _looks_like_file, load_model

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Keys of ``[defaults]``; every one but ``device`` may be overridden per case.
SETTING_KEYS = (
    "model", "weights", "method", "smoothing", "noise", "samples", "seed", "precision",
    "ig_steps", "batch_size", "target",
)  # fmt: skip
DEFAULT_KEYS = (*SETTING_KEYS, "device")
CHECK_KEYS = (
    "expect_class", "top_k", "min_probability",
    "region", "mask", "min_mass", "pointing", "pointing_tolerance",
    "golden", "min_rank_correlation", "max_mean_abs_diff", "pool",
    "sanity",
)  # fmt: skip
CASE_KEYS = ("name", "image", *CHECK_KEYS, *SETTING_KEYS)
SANITY_KEYS = ("layers", "max_rank_correlation")
DEFAULT_SANITY_THRESHOLD = 0.5
#: used when a case names a golden file but neither threshold
DEFAULT_GOLDEN_RANK_CORRELATION = 0.9


class SpecError(Exception):
    """The spec cannot be run; the message is one line naming the file, case and key."""

    def __init__(self, message: str) -> None:
        # The message quotes case names, file names and what libraries said: whatever slips
        # through unescaped must still not start a new line or drive the terminal.
        super().__init__(_line(message))


def _line(text: str) -> str:
    """``text`` for one line of output: as written when printable (so the spaces of a file
    name survive), else through ``names.one_line``."""
    return text if text.isprintable() else names.one_line(text)


def _case_label(name: str) -> str:
    return f'case "{name}"' if name.isprintable() else f"case {names.shown(name)}"


# --- metrics (pure numpy) -----------------------------------------------------------------


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1…n of the flattened ``values``, ties given their average rank."""
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
    """Spearman's rank correlation of two equally sized arrays; NaN when one is constant."""
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
    """Average over ``block`` × ``block`` tiles (a partial tile at the edge averages what it
    has); ``block`` 1 returns the map unchanged."""
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
    return np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None)


def region_weights(
    shape: tuple[int, int],
    view: tuple[float, float, float, float],
    *,
    box: tuple[float, float, float, float] | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """For each pixel of an ``(H, W)`` map, the share of its footprint on the photo inside the
    region: a box in photo pixels, or a boolean mask of the photo's size.

    ``view`` is the part of the photo the map covers (``LoadedModel.crop_box``): map pixel
    (i, j) covers ``[left + j·sx, left + (j+1)·sx) × [top + i·sy, top + (i+1)·sy)``.
    The weights are exact for that geometry, with photo pixel (u, v) the unit square at u, v.
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
    """The share of the map's total inside the region (NaN for an all-zero map)."""
    m = np.asarray(map2d, dtype=np.float64)
    total = float(m.sum())
    if not total > 0:
        return float("nan")
    return float((m * weights).sum()) / total


def peak_point(
    magnitude: np.ndarray, view: tuple[float, float, float, float]
) -> tuple[float, float]:
    """The centre, in photo coordinates, of the map's largest pixel (first one on ties)."""
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
    box: tuple[float, float, float, float] | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Distance in photo pixels from ``point`` to the region (0 inside)."""
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


# --- the spec -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What determines a case's map."""

    model: str = EMBEDDED
    weights: str | None = None
    method: str = "gradient"
    smoothing: str = "smoothgrad"
    noise: float = 15.0  # percent of (max − min) of the model-input tensor
    samples: int = 50
    seed: int = 0
    precision: str = "fp32"
    ig_steps: int = 32
    batch_size: int | None = None
    target: str | int | None = None

    @property
    def model_key(self) -> tuple[str, str | None]:
        return (self.model, self.weights)


@dataclass
class Region:
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    source: str = ""


@dataclass(frozen=True)
class Sanity:
    layers: str | int = "last"  # "last", "cascade" (all layers) or a count from the top
    max_rank_correlation: float = DEFAULT_SANITY_THRESHOLD

    def count(self, available: int) -> int:
        if self.layers == "last":
            return 1
        if self.layers == "cascade":
            return available
        return int(self.layers)

    @property
    def label(self) -> str:
        if isinstance(self.layers, int):
            return f"top {self.layers} layer{'s' if self.layers > 1 else ''}"
        return str(self.layers)


@dataclass
class Case:
    name: str
    image: Path
    settings: Settings
    #: where each setting came from, for error messages: "defaults" or the case
    setting_origin: dict[str, str] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    expect_class: list[str | int] | None = None
    top_k: int = 1
    min_probability: float | None = None
    region: Region | None = None
    min_mass: float | None = None
    pointing: bool = False
    pointing_tolerance: float = 0.0
    golden: Path | None = None
    golden_text: str | None = None
    min_rank_correlation: float | None = None
    max_mean_abs_diff: float | None = None
    pool: int = 1
    sanity: Sanity | None = None

    def check_names(self) -> list[str]:
        checks = []
        if self.expect_class is not None:
            checks.append("expect_class")
            if self.min_probability is not None:
                checks.append("min_probability")
        if self.min_mass is not None:
            checks.append("min_mass")
        if self.pointing:
            checks.append("pointing")
        if self.golden is not None:
            if self.min_rank_correlation is not None:
                checks.append("min_rank_correlation")
            if self.max_mean_abs_diff is not None:
                checks.append("max_mean_abs_diff")
        if self.sanity is not None:
            checks.append("sanity")
        return checks


@dataclass
class Spec:
    path: Path
    cases: list[Case]
    device: str = "auto"


class _Where:
    """Builds the one-line messages: ``spec.toml: case "x": key: detail``."""

    def __init__(self, spec: str, section: str) -> None:
        self.spec = spec
        self.section = section

    def error(self, key: str | None, detail: str) -> SpecError:
        parts = [self.spec, self.section] + ([key] if key else []) + [detail]
        return SpecError(": ".join(parts))


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string",
        list: "a list", dict: "a table",
    }.get(type(value), type(value).__name__)  # fmt: skip


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(where: _Where, key: str, value: Any, low=None, high=None) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise where.error(key, f"expected a number, got {_type_name(value)} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise where.error(key, f"must be in [{low}, {high}], got {value}".replace("None", "…"))
    return float(value)


def _integer(where: _Where, key: str, value: Any, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(key, f"expected an integer, got {_type_name(value)} {value!r}")
    if low is not None and value < low:
        raise where.error(key, f"must be >= {low}, got {value}")
    return value


def _string(where: _Where, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(key, f"expected a non-empty string, got {_type_name(value)} {value!r}")
    return value


def _choice(where: _Where, key: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    value = _string(where, key, value)
    if value not in choices:
        raise where.error(key, f"unknown value {value!r}: use one of {', '.join(choices)}")
    return value


def _settings_values(where: _Where, table: dict[str, Any], root: Path) -> dict[str, Any]:
    """Validated values of the setting keys present in ``table``; files relative to ``root``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in SETTING_KEYS:
            continue
        if key == "model":
            out[key] = _string(where, key, value)
        elif key == "weights":
            out[key] = _spec_weights(_string(where, key, value), root)
        elif key == "method":
            out[key] = _choice(where, key, value, engine.BASE_METHODS)
        elif key == "smoothing":
            out[key] = _choice(where, key, value, engine.SMOOTHINGS)
        elif key == "precision":
            out[key] = _choice(where, key, value, engine.PRECISIONS)
        elif key == "noise":
            out[key] = _number(where, key, value, 0.0)
        elif key in ("samples", "ig_steps", "batch_size"):
            out[key] = _integer(where, key, value, 1)
        elif key == "seed":
            out[key] = _integer(where, key, value, 0)
        elif key == "target":
            out[key] = _class_ref(where, key, value)
    return out


def _spec_weights(value: str, root: Path) -> str:
    """A weights file named in a spec lies beside the spec, as its images do; an enum name
    (``DEFAULT``, ``IMAGENET1K_V1``) stays a name. The loader's own rule tells a file from a
    name, asked of the spec's folder as well as of the name itself."""
    beside_spec = root / value  # an absolute value stays itself
    if _looks_like_file(value) or beside_spec.exists():
        return str(beside_spec)
    return value


def _class_ref(where: _Where, key: str, value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise where.error(key, f"class index must be >= 0, got {value}")
        return value
    if isinstance(value, str) and value.strip():
        return value
    raise where.error(key, f"expected a class index or name, got {_type_name(value)} {value!r}")


def _unknown_keys(where: _Where, table: dict[str, Any], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
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


def _read_mask(where: _Where, path: Path, size: tuple[int, int] | None) -> np.ndarray:
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


def _read_box(where: _Where, value: Any, size: tuple[int, int] | None) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise where.error(
            "region", f"expected 4 numbers [x0, y0, x1, y1], got {_type_name(value)} {value!r}"
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


def parse_spec(path: Path | str) -> Spec:
    """Read and validate a spec; raise ``SpecError`` with a one-line message."""
    path = Path(path)
    shown = names.shown(path)
    try:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise SpecError(f"{shown}: spec file not found") from None
        except IsADirectoryError:
            raise SpecError(f"{shown}: is a folder, not a spec file") from None
        except OSError as exc:
            raise SpecError(f"{shown}: cannot read spec ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:  # tomllib decodes the whole file first: an image, say
            byte = exc.object[exc.start]
            raise SpecError(
                f"{shown}: not a TOML spec: not UTF-8 text "
                f"(byte 0x{byte:02x} at offset {exc.start})"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{shown}: not valid TOML ({exc})") from None
        return spec_from_dict(data, path)
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively, and the checks quote
        # the values they reject: a few thousand levels of [[[…]]] exhaust the stack.
        raise SpecError(f"{shown}: not a TOML spec: arrays or tables nested too deeply") from None


def spec_from_dict(data: dict[str, Any], path: Path) -> Spec:
    """Validate a decoded spec; relative files are taken from ``path``'s folder."""
    shown = names.shown(path)
    root = path.parent
    top = _Where(shown, "spec")
    for key in data:
        if key not in ("defaults", "case"):
            raise top.error(key, "unknown key (a spec has [defaults] and [[case]] tables)")
    defaults_table = data.get("defaults", {})
    dwhere = _Where(shown, "defaults")
    if not isinstance(defaults_table, dict):
        raise top.error("defaults", "expected a table [defaults]")
    _unknown_keys(dwhere, defaults_table, DEFAULT_KEYS)
    defaults = _settings_values(dwhere, defaults_table, root)
    device = "auto"
    if "device" in defaults_table:
        device = _string(dwhere, "device", defaults_table["device"])

    raw_cases = data.get("case")
    if raw_cases is None:
        raise top.error("case", "no [[case]] in the spec")
    if not isinstance(raw_cases, list) or not all(isinstance(c, dict) for c in raw_cases):
        raise top.error("case", "expected [[case]] tables")
    if not raw_cases:
        raise top.error("case", "no [[case]] in the spec")

    cases: list[Case] = []
    seen: set[str] = set()
    goldens: dict[Path, str] = {}
    for number, table in enumerate(raw_cases, start=1):
        name = table.get("name")
        label = _case_label(name) if isinstance(name, str) and name.strip() else f"case #{number}"
        where = _Where(shown, label)
        if "name" not in table:
            raise where.error("name", "missing (every case needs a name)")
        name = _string(where, "name", name)
        if name in seen:
            raise where.error("name", "used by an earlier case; names must be unique")
        seen.add(name)
        case = _parse_case(where, name, table, defaults, root)
        if case.golden is not None:
            resolved = _resolved_golden(where, case)
            other = goldens.get(resolved)
            if other is not None:
                raise where.error(
                    "golden",
                    f"{names.shown(case.golden_text)} is also the golden of {_case_label(other)}",
                )
            goldens[resolved] = name
        cases.append(case)
    return Spec(path=path, cases=cases, device=device)


def _resolved_golden(where: _Where, case: Case) -> Path:
    try:
        return case.golden.resolve()  # ../, symlinks and absolute paths alike
    except (OSError, RuntimeError) as exc:  # a symlink loop, say
        raise where.error(
            "golden", f"cannot resolve {names.shown(case.golden_text)} ({exc})"
        ) from None


def _parse_case(
    where: _Where, name: str, table: dict[str, Any], defaults: dict[str, Any], root: Path
) -> Case:
    _unknown_keys(where, table, CASE_KEYS)
    overrides = _settings_values(where, table, root)
    settings = Settings(**{**defaults, **overrides})
    origin = {key: ("case" if key in overrides else "defaults") for key in SETTING_KEYS}

    if "image" not in table:
        raise where.error("image", "missing (every case needs an image)")
    image_text = _string(where, "image", table["image"])
    image = root / image_text
    if not image.exists():
        raise where.error("image", f"file not found: {names.shown(image)}")
    if image.is_dir():
        raise where.error("image", f"{names.shown(image)} is a folder, not an image")
    size = image_size(image)
    case = Case(name=name, image=image, settings=settings, setting_origin=origin, image_size=size)

    # expected class
    if "expect_class" in table:
        value = table["expect_class"]
        refs = value if isinstance(value, list) else [value]
        if not refs:
            raise where.error("expect_class", "empty list")
        case.expect_class = [_class_ref(where, "expect_class", v) for v in refs]
        if "top_k" in table:
            case.top_k = _integer(where, "top_k", table["top_k"], 1)
        if "min_probability" in table:
            case.min_probability = _number(where, "min_probability", table["min_probability"], 0, 1)
    else:
        for key in ("top_k", "min_probability"):
            if key in table:
                raise where.error(key, "needs expect_class")

    # region
    if "region" in table and "mask" in table:
        raise where.error("mask", "give region (a box) or mask, not both")
    if "region" in table:
        case.region = Region(box=_read_box(where, table["region"], size), source="box")
    elif "mask" in table:
        mask_text = _string(where, "mask", table["mask"])
        mask_path = root / mask_text
        if not mask_path.is_file():
            raise where.error("mask", f"file not found: {names.shown(mask_path)}")
        case.region = Region(mask=_read_mask(where, mask_path, size), source=mask_text)
    if "min_mass" in table:
        case.min_mass = _number(where, "min_mass", table["min_mass"], 0, 1)
    if "pointing" in table:
        if not isinstance(table["pointing"], bool):
            raise where.error("pointing", f"expected true or false, got {table['pointing']!r}")
        case.pointing = table["pointing"]
    if "pointing_tolerance" in table:
        if not case.pointing:
            raise where.error("pointing_tolerance", "needs pointing = true")
        case.pointing_tolerance = _number(
            where, "pointing_tolerance", table["pointing_tolerance"], 0
        )
    if case.region is None:
        for key in ("min_mass", "pointing"):
            if key in table:
                raise where.error(key, "needs a region (box) or a mask")
    elif case.min_mass is None and not case.pointing:
        key = "region" if "region" in table else "mask"
        raise where.error(key, "needs min_mass and/or pointing = true")

    # golden
    if "golden" in table:
        case.golden_text = _string(where, "golden", table["golden"])
        case.golden = root / case.golden_text
        if "min_rank_correlation" in table:
            case.min_rank_correlation = _number(
                where, "min_rank_correlation", table["min_rank_correlation"], -1, 1
            )
        if "max_mean_abs_diff" in table:
            case.max_mean_abs_diff = _number(
                where, "max_mean_abs_diff", table["max_mean_abs_diff"], 0
            )
        if case.min_rank_correlation is None and case.max_mean_abs_diff is None:
            case.min_rank_correlation = DEFAULT_GOLDEN_RANK_CORRELATION
        if "pool" in table:
            case.pool = _integer(where, "pool", table["pool"], 1)
    else:
        for key in ("min_rank_correlation", "max_mean_abs_diff", "pool"):
            if key in table:
                raise where.error(key, "needs golden")

    # sanity
    if "sanity" in table:
        case.sanity = _parse_sanity(where, table["sanity"])

    if not case.check_names():
        raise where.error(None, "no checks: give expect_class, region/mask, golden or sanity")
    return case


def _parse_sanity(where: _Where, value: Any) -> Sanity | None:
    if value is True:
        return Sanity()
    if value is False:
        return None
    if not isinstance(value, dict):
        raise where.error(
            "sanity",
            f"expected a table {{ layers = ..., max_rank_correlation = ... }} or true, "
            f"got {_type_name(value)} {value!r}",
        )
    for key in value:
        if key not in SANITY_KEYS:
            raise where.error(f"sanity.{key}", f"unknown key (use {', '.join(SANITY_KEYS)})")
    layers: str | int = value.get("layers", "last")
    if isinstance(layers, str):
        if layers not in ("last", "cascade"):
            raise where.error(
                "sanity.layers", f'expected "last", "cascade" or a count, got {layers!r}'
            )
    else:
        layers = _integer(where, "sanity.layers", layers, 1)
    threshold = DEFAULT_SANITY_THRESHOLD
    if "max_rank_correlation" in value:
        threshold = _number(
            where, "sanity.max_rank_correlation", value["max_rank_correlation"], -1, 1
        )
    return Sanity(layers=layers, max_rank_correlation=threshold)


# --- results ------------------------------------------------------------------------------


@dataclass
class CheckResult:
    case: str
    check: str
    passed: bool
    measured: str  # for people
    threshold: str
    value: float | str | None = None  # for machines
    limit: float | str | bool | None = None
    message: str = ""
    seconds: float = 0.0
    image: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        return {
            "case": self.case,
            "check": self.check,
            "passed": self.passed,
            "value": value,
            "threshold": self.limit,
            "measured": self.measured,
            "message": self.message,
            "image": self.image,
            **self.details,
        }


@dataclass
class CheckRun:
    results: list[CheckResult] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failures else EXIT_OK


# --- running ------------------------------------------------------------------------------


def randomisable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers (modules owning a weight of 2 or more dimensions), from the
    input to the output in the order the model registers them."""
    layers = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is not None and weight.dim() >= 2:
            layers.append((name, module))
    return layers


def randomised_copy(model: nn.Module, count: int, seed: int) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``model`` whose top ``count`` layers are re-drawn at random.

    Each parameter of those layers (weight and bias) is replaced by Gaussian values with its
    own mean and standard deviation, so activations keep their scale (Adebayo et al. re-draw
    from the layers' initialisation). The values come from a seeded CPU generator: the same on
    every device. ``model`` itself is never modified.
    """
    clone = copy.deepcopy(model)
    layers = randomisable_layers(clone)
    chosen = layers[len(layers) - count :]
    with torch.no_grad():
        for index, (_, module) in enumerate(reversed(chosen)):
            for p_index, param in enumerate(module.parameters(recurse=False)):
                generator = torch.Generator().manual_seed(
                    engine.sample_seed(seed, 1_000_003 * (index + 1) + p_index)
                )
                source = param.detach().float().cpu()
                std = float(source.std()) if source.numel() > 1 else 0.0
                fresh = torch.randn(source.shape, generator=generator) * std + float(source.mean())
                param.copy_(fresh.to(device=param.device, dtype=param.dtype))
    return clone, [name for name, _ in chosen]


@dataclass
class _Prepared:
    loaded: LoadedModel
    model: nn.Module
    n_layers: int


@dataclass
class _CaseMap:
    attribution: np.ndarray  # (C, H, W) float32
    normalised: np.ndarray  # (H, W) paper's display in [0, 1]
    magnitude: np.ndarray  # (H, W) |attribution| summed over channels


def _map_of(attribution: np.ndarray) -> _CaseMap:
    return _CaseMap(
        attribution=attribution,
        normalised=render.magnitude_map(attribution),
        magnitude=np.abs(attribution.astype(np.float64)).sum(axis=0),
    )


def _is_golden_npy(path: Path) -> bool:
    """Whether ``path`` holds a ``.npy`` array that loads without pickle, as goldens do."""
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                return False  # np.load would also take a .npz or a pickle
        return isinstance(np.load(path, allow_pickle=False), np.ndarray)
    except Exception:
        return False


class Checker:
    """Runs a validated spec. ``loader`` builds models (tests pass a cached one).

    With ``update_golden`` the goldens are written instead of compared, only inside the
    spec's folder unless ``allow_outside_spec_folder`` (see ``_golden_target``).
    """

    def __init__(
        self,
        spec: Spec,
        *,
        device: str | None = None,
        update_golden: bool = False,
        allow_outside_spec_folder: bool = False,
        log: Callable[[str], None] | None = None,
        verbose: bool = False,
        loader: Callable[[str, str | None], LoadedModel] = load_model,
    ) -> None:
        self.spec = spec
        self.device_text = device or spec.device
        self.device_from_cli = device is not None
        self.update_golden = update_golden
        self.allow_outside_spec_folder = allow_outside_spec_folder
        self.log = log or (lambda message: None)
        self.verbose = verbose
        self.loader = loader
        self.shown_spec = names.shown(spec.path)
        self.where = {c.name: _Where(self.shown_spec, _case_label(c.name)) for c in spec.cases}

    def _setting_error(self, case: Case, key: str, detail: str) -> SpecError:
        if case.setting_origin.get(key) == "defaults":
            return _Where(self.shown_spec, "defaults").error(key, detail)
        return self.where[case.name].error(key, detail)

    def _golden_target(self, case: Case) -> Path:
        """The file ``--update-golden`` writes for ``case``: its golden path with symlinks
        resolved. A spec error when the spec may not make the tool write there: outside the
        spec's folder (unless allowed), into a missing folder outside it, or over anything
        but a golden ``.npy`` map."""
        where = self.where[case.name]
        shown = names.shown(case.golden_text)
        target = _resolved_golden(where, case)
        if not target.is_relative_to(self.spec.path.parent.resolve()):
            if not self.allow_outside_spec_folder:
                raise where.error(
                    "golden",
                    f"{shown} is outside the spec's folder ({names.shown(target)}); pass "
                    "--allow-outside-spec-folder to let --update-golden write there",
                )
            if not target.parent.is_dir():
                # Missing folders are made only inside the spec's folder.
                raise where.error("golden", f"folder {names.shown(target.parent)} does not exist")
        if target.exists():
            if not target.is_file():
                raise where.error("golden", f"{shown} exists and is not a file")
            if not _is_golden_npy(target):
                raise where.error(
                    "golden", f"{shown} exists and is not a .npy golden map: not overwriting it"
                )
        return target

    # set-up: everything that can make the spec invalid is found before any map is computed
    def prepare(self) -> None:
        try:
            self.device = engine.resolve_device(self.device_text)
        except ValueError as exc:
            if self.device_from_cli:
                raise SpecError(f"--device: {exc}") from None
            raise _Where(self.shown_spec, "defaults").error("device", str(exc)) from None
        # Before any model is loaded: a spec that may not write its goldens fails at once.
        if self.update_golden:
            for case in self.spec.cases:
                if case.golden is not None:
                    self._golden_target(case)
        self.models: dict[tuple[str, str | None], _Prepared] = {}
        self.targets: dict[str, int | None] = {}
        self.expected: dict[str, list[int]] = {}
        self.precision: dict[str, str] = {}
        for case in self.spec.cases:
            s = case.settings
            if s.model_key not in self.models:
                try:
                    loaded = self.loader(s.model, s.weights)
                except ModelError as exc:
                    key = "weights" if s.weights and "weights" in str(exc) else "model"
                    raise self._setting_error(case, key, str(exc)) from None
                # Prepared as `explain` prepares it, so its --save-raw maps serve as goldens.
                model = engine.prepare_model(
                    loaded.model, self.device, input_shape=(3, loaded.crop_size, loaded.crop_size)
                )
                self.models[s.model_key] = _Prepared(loaded, model, len(randomisable_layers(model)))
            prepared = self.models[s.model_key]
            try:
                self.precision[case.name] = engine.resolve_precision(s.precision, self.device)
            except ValueError as exc:
                raise self._setting_error(case, "precision", str(exc)) from None
            self.targets[case.name] = None
            if s.target is not None:
                try:
                    self.targets[case.name] = prepared.loaded.class_index(str(s.target))
                except ValueError as exc:
                    raise self._setting_error(case, "target", str(exc)) from None
            if case.expect_class is not None:
                try:
                    self.expected[case.name] = [
                        prepared.loaded.class_index(str(c)) for c in case.expect_class
                    ]
                except ValueError as exc:
                    raise self.where[case.name].error("expect_class", str(exc)) from None
                n_classes = len(prepared.loaded.categories)
                if case.top_k > n_classes:
                    raise self.where[case.name].error(
                        "top_k", f"{case.top_k} exceeds the model's {n_classes} classes"
                    )
            if s.method == "guided-backprop":
                try:
                    with engine.GuidedBackprop().hooks(prepared.model):
                        pass
                except ValueError as exc:
                    raise self._setting_error(case, "method", f"{s.model}: {exc}") from None
            if case.sanity is not None:
                count = case.sanity.count(prepared.n_layers)
                if count > prepared.n_layers or prepared.n_layers == 0:
                    raise self.where[case.name].error(
                        "sanity.layers",
                        f"{count} asked for, but {s.model} has {prepared.n_layers} "
                        "conv/linear layers",
                    )

    def run(self) -> CheckRun:
        started = time.perf_counter()
        self.prepare()
        run = CheckRun(device=str(self.device))
        by_case: dict[str, list[CheckResult]] = {}
        # Cases grouped by model, each model's cases in spec order; results in spec order.
        order = sorted(
            range(len(self.spec.cases)),
            key=lambda i: (list(self.models).index(self.spec.cases[i].settings.model_key), i),
        )
        self._maps: dict[tuple, _CaseMap] = {}
        self._random: dict[tuple, nn.Module] = {}
        current_model = None
        with _deterministic(self.device):
            for number, index in enumerate(order, start=1):
                case = self.spec.cases[index]
                if current_model is not None and case.settings.model_key != current_model:
                    self._maps.clear()
                    self._random.clear()  # a model's randomised copies go with its group
                current_model = case.settings.model_key
                t0 = time.perf_counter()
                results = self._run_case(case, run)
                seconds = time.perf_counter() - t0
                for r in results:
                    r.seconds = seconds / max(1, len(results))
                    r.image = str(case.image)
                by_case[case.name] = results
                failed = sum(not r.passed for r in results)
                verdict = "ok" if not failed else f"{failed} of {len(results)} failed"
                self.log(
                    f"[{number}/{len(order)}] {names.shown(case.name)}: {verdict} ({seconds:.1f} s)"
                )
        for case in self.spec.cases:
            run.results.extend(by_case[case.name])
        run.seconds = time.perf_counter() - started
        return run

    def _run_case(self, case: Case, run: CheckRun) -> list[CheckResult]:
        checks = case.check_names()
        try:
            return self._checks(case, run)
        except ImageError as exc:
            message = f"{names.shown(case.image)}: image could not be loaded: {names.one_line(exc)}"
            self.log(f"error: {message}")
            return [
                CheckResult(case.name, name, False, "image failed", "", message=message)
                for name in checks
            ]
        except Exception as exc:  # a failure inside one case must not hide the others
            message = f"{type(exc).__name__}: {names.one_line(exc)}"
            self.log(f"error: {_case_label(case.name)}: {message}")
            if self.verbose:
                self.log("".join(traceback.format_exception(exc)).rstrip())
            return [
                CheckResult(case.name, name, False, "error", "", message=message) for name in checks
            ]

    def _checks(self, case: Case, run: CheckRun) -> list[CheckResult]:
        s = case.settings
        prepared = self.models[s.model_key]
        loaded = prepared.loaded
        photo = load_image(case.image)
        view = loaded.crop_box(*photo.size)
        x = loaded.transform(photo)[None]
        precision = self.precision[case.name]
        probs = engine.predict(prepared.model, x, precision=precision)[0].cpu()
        order = torch.argsort(probs, descending=True)
        target = self.targets[case.name]
        if target is None:
            target = int(order[0])
        if self.verbose:
            top = ", ".join(f"{loaded.categories[int(i)]} {float(probs[i]):.3f}" for i in order[:5])
            self.log(
                f"{names.shown(case.name)}: top-5 {top}; map of {loaded.categories[target]} "
                f"({target})"
            )

        results: list[CheckResult] = []
        add = results.append
        name = case.name

        if case.expect_class is not None:
            ranks = {c: int((order == c).nonzero()[0, 0]) + 1 for c in self.expected[name]}
            best = min(ranks, key=lambda c: ranks[c])
            rank = ranks[best]
            label = f"{loaded.categories[best]} #{rank} ({float(probs[best]):.3f})"
            wanted = " or ".join(repr(loaded.categories[c]) for c in self.expected[name])
            ok = rank <= case.top_k
            add(
                CheckResult(
                    name,
                    "expect_class",
                    ok,
                    label,
                    "top-1" if case.top_k == 1 else f"top-{case.top_k}",
                    value=rank,
                    limit=case.top_k,
                    details={
                        "class": loaded.categories[best],
                        "class_index": best,
                        "probability": float(probs[best]),
                        "predicted": loaded.categories[int(order[0])],
                    },
                    message=""
                    if ok
                    else (
                        f"expected {wanted} within the top {case.top_k}; predicted "
                        f"{loaded.categories[int(order[0])]!r} ({float(probs[order[0]]):.3f})"
                    ),
                )
            )
            if case.min_probability is not None:
                p = max(float(probs[c]) for c in self.expected[name])
                ok = p >= case.min_probability
                add(
                    CheckResult(
                        name,
                        "min_probability",
                        ok,
                        f"{p:.3f}",
                        f">= {case.min_probability:g}",
                        value=p,
                        limit=case.min_probability,
                        message="" if ok else f"probability of {wanted} is {p:.3f}",
                    )
                )

        needs_map = case.region is not None or case.golden is not None or case.sanity is not None
        if not needs_map:
            return results
        cmap = self._map(case, prepared, x, target, precision, None)
        region = case.region
        if region is not None:
            weights = region_weights(cmap.normalised.shape, view, box=region.box, mask=region.mask)
            if case.min_mass is not None:
                mass = mass_in_region(cmap.normalised, weights)
                area = float(weights.mean())  # what a uniform map would score
                ok = bool(mass >= case.min_mass)
                message = ""
                if not ok:
                    message = (
                        "the map is all zeros"
                        if math.isnan(mass)
                        else f"only {mass:.1%} of the saliency lies in the region"
                    )
                    visible = _visible_share(region, view, photo.size)
                    if visible < 0.999:
                        message += f" ({visible:.0%} of the region is in the model's view)"
                add(
                    CheckResult(
                        name,
                        "min_mass",
                        ok,
                        f"{mass:.3f} (area {area:.2f})",
                        f">= {case.min_mass:g}",
                        value=mass,
                        limit=case.min_mass,
                        message=message,
                        details={"area_share": area},
                    )
                )
            if case.pointing:
                point = peak_point(cmap.magnitude, view)
                distance = distance_to_region(point, box=region.box, mask=region.mask)
                ok = distance <= case.pointing_tolerance
                where = f"({point[0]:.0f}, {point[1]:.0f})"
                threshold = (
                    "inside"
                    if case.pointing_tolerance == 0
                    else f"within {case.pointing_tolerance:g} px"
                )
                add(
                    CheckResult(
                        name,
                        "pointing",
                        ok,
                        f"hit {where}" if distance == 0 else f"{distance:.0f} px off {where}",
                        threshold,
                        value=distance,
                        limit=case.pointing_tolerance,
                        message="" if ok else f"the map's maximum at {where} is outside the region",
                        details={"point": [round(point[0], 2), round(point[1], 2)]},
                    )
                )

        if case.golden is not None:
            results.extend(self._golden(case, cmap, run))

        if case.sanity is not None:
            sanity = case.sanity
            count = sanity.count(prepared.n_layers)
            key = (s.model_key, count, s.seed)
            if key not in self._random:
                self._random[key] = randomised_copy(prepared.model, count, s.seed)[0]
            random_map = self._map(case, prepared, x, target, precision, key)
            rho = spearman(cmap.normalised, random_map.normalised)
            ok = bool(rho < sanity.max_rank_correlation)
            add(
                CheckResult(
                    name,
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
            )
        return results

    def _map(self, case, prepared, x, target, precision, random_key) -> _CaseMap:
        s = case.settings
        key = (
            s.model_key,
            str(case.image.resolve()),
            s.method,
            s.smoothing,
            s.noise,
            s.samples,
            s.seed,
            precision,
            s.ig_steps,
            target,
            random_key,
        )
        if key not in self._maps:
            model = prepared.model if random_key is None else self._random[random_key]
            if s.method == "integrated-gradients":
                base = engine.IntegratedGradients(
                    s.ig_steps, baseline=prepared.loaded.black_baseline()
                )
            else:
                base = engine.BASE_METHODS[s.method]()
            smoother = engine.SmoothGrad(
                base,
                smoothing=s.smoothing,
                noise_level=s.noise / 100.0,
                samples=s.samples,
                seed=s.seed,
                batch_size=s.batch_size,
                precision=precision,
            )
            attribution = smoother.attribute(model, x, target)[0].cpu().numpy()
            self._maps[key] = _map_of(attribution)
        return self._maps[key]

    def _golden(self, case: Case, cmap: _CaseMap, run: CheckRun) -> list[CheckResult]:
        name = case.name
        checks = []
        if case.min_rank_correlation is not None:
            checks.append(
                (
                    "min_rank_correlation",
                    f">= {case.min_rank_correlation:g}",
                    case.min_rank_correlation,
                )
            )
        if case.max_mean_abs_diff is not None:
            checks.append(
                ("max_mean_abs_diff", f"<= {case.max_mean_abs_diff:g}", case.max_mean_abs_diff)
            )
        path = case.golden
        shown = names.shown(path)

        def fail(message: str, measured: str = "no golden") -> list[CheckResult]:
            return [
                CheckResult(name, check, False, measured, threshold, limit=limit, message=message)
                for check, threshold, limit in checks
            ]

        if self.update_golden:
            try:
                # Checked again: the folder may have changed while the maps were computed.
                target = self._golden_target(case)
            except SpecError as exc:
                return fail(str(exc), "not written")
            render.save_npy(cmap.attribution, target)
            run.written.append(path)
            self.log(f"wrote golden map {shown}")
            return [
                CheckResult(
                    name,
                    check,
                    True,
                    "written",
                    threshold,
                    limit=limit,
                    message=f"golden map written to {shown}",
                )
                for check, threshold, limit in checks
            ]

        if not path.is_file():
            return fail(
                f"golden file {shown} not found: write it with "
                f"`smoothgrad check {self.shown_spec} --update-golden`"
            )
        try:
            golden = np.load(path, allow_pickle=False)
        except Exception as exc:
            return fail(f"golden file {shown} cannot be read as .npy ({exc})")
        if golden.shape != cmap.attribution.shape:
            return fail(
                f"golden map {shown} has shape {golden.shape}, the map has "
                f"{cmap.attribution.shape}: refresh it with --update-golden"
            )
        if not np.isfinite(golden).all():
            return fail(f"golden map {shown} holds NaN or infinite values")
        ours = pool_map(cmap.normalised, case.pool)
        theirs = pool_map(render.magnitude_map(golden), case.pool)
        shown_name = names.shown(path.name)
        out = []
        for check, threshold, limit in checks:
            if check == "min_rank_correlation":
                rho = spearman(ours, theirs)
                ok = bool(rho >= limit)
                out.append(
                    CheckResult(
                        name,
                        check,
                        ok,
                        f"{rho:.3f}",
                        threshold,
                        value=rho,
                        limit=limit,
                        message="" if ok else f"rank correlation with {shown_name} is {rho:.3f}",
                    )
                )
            else:
                diff = float(np.abs(ours - theirs).mean())
                ok = diff <= limit
                out.append(
                    CheckResult(
                        name,
                        check,
                        ok,
                        f"{diff:.4f}",
                        threshold,
                        value=diff,
                        limit=limit,
                        message="" if ok else f"mean |difference| from {shown_name} is {diff:.4f}",
                    )
                )
        return out


def _visible_share(region: Region, view, size: tuple[int, int]) -> float:
    """How much of the region (by area) lies inside the model's view of the photo."""
    left, top, right, bottom = view
    if region.box is not None:
        x0, y0, x1, y1 = region.box
        inside = max(0.0, min(x1, right) - max(x0, left)) * max(0.0, min(y1, bottom) - max(y0, top))
        return inside / ((x1 - x0) * (y1 - y0))
    mask = region.mask
    u = np.arange(mask.shape[1])
    v = np.arange(mask.shape[0])
    wx = _overlap(u, u + 1, left, right)
    wy = _overlap(v, v + 1, top, bottom)
    return float(wy @ mask @ wx) / float(mask.sum())


class _deterministic:
    """cuDNN in deterministic mode for the run (same seed, same map on one GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self):
        self.saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        return self

    def __exit__(self, *exc):
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.saved
        return False


# --- reports ------------------------------------------------------------------------------


#: What XML 1.0 cannot hold, even as a character reference: C0 controls but tab, newline and
#: carriage return, U+FFFE, U+FFFF and lone surrogates (a file name byte that is not UTF-8).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """``text`` with each character XML 1.0 forbids written as its Python escape (``\\x1b``,
    ``\\ufffe``, ``\\udcff``): the report stays well-formed and names stay recognisable."""
    return _NOT_XML.sub(lambda m: repr(m.group())[1:-1], text)


def _xml_element(parent: ET.Element | None, tag: str, text: str | None = None, **attrib: str):
    attrib = {key: _xml_text(value) for key, value in attrib.items()}
    element = ET.Element(tag, attrib) if parent is None else ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = _xml_text(text)
    return element


def junit_xml(run: CheckRun, suite: str = "smoothgrad check") -> bytes:
    """One <testcase> per case × check (classname = case, name = check). Characters XML
    cannot hold are escaped (see ``_xml_text``)."""
    failures = len(run.failures)
    root = _xml_element(
        None,
        "testsuites",
        tests=str(len(run.results)),
        failures=str(failures),
        errors="0",
        time=f"{run.seconds:.3f}",
    )
    suite_el = _xml_element(
        root,
        "testsuite",
        name=suite,
        tests=str(len(run.results)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{run.seconds:.3f}",
    )
    props = _xml_element(suite_el, "properties")
    _xml_element(props, "property", name="device", value=run.device)
    for r in run.results:
        case_el = _xml_element(
            suite_el, "testcase", classname=r.case, name=r.check, time=f"{r.seconds:.3f}"
        )
        detail = f"measured {r.measured}, threshold {r.threshold}".strip(", ")
        if not r.passed:
            _xml_element(
                case_el,
                "failure",
                f"{r.image}\n{detail}\n{r.message}".strip(),
                message=r.message or detail,
                type="CheckFailed",
            )
        else:
            _xml_element(case_el, "system-out", detail)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def results_table(run: CheckRun):
    """Case, check, measured value, threshold, pass/fail (and why, for failures)."""
    from rich.markup import escape
    from rich.table import Table

    notes = any(not r.passed for r in run.results)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("case", overflow="fold")
    table.add_column("check", no_wrap=True)
    table.add_column("measured", justify="right", no_wrap=True)
    table.add_column("threshold", no_wrap=True)
    table.add_column("result", no_wrap=True)
    if notes:
        table.add_column("note", overflow="fold", ratio=1)
    last = None
    for r in run.results:
        row = [
            escape(names.shown(r.case)) if r.case != last else "",
            r.check,
            escape(r.measured),
            escape(r.threshold),
            "[green]pass[/green]" if r.passed else "[bold red]FAIL[/bold red]",
        ]
        if notes:
            row.append(escape(_line(r.message)) if not r.passed else "")
        table.add_row(*row)
        last = r.case
    return table


def summary(run: CheckRun) -> str:
    cases = len({r.case for r in run.results})
    failed = run.failures
    text = (
        f"{len(run.results)} check(s) in {cases} case(s) on {run.device}: "
        f"{len(run.results) - len(failed)} passed, {len(failed)} failed in {run.seconds:.1f} s"
    )
    if failed:
        shown = ", ".join(f"{names.shown(r.case)}/{r.check}" for r in failed[:5])
        text += f" ({shown}{', …' if len(failed) > 5 else ''})"
    return text


def check_main(
    spec_path: Path,
    *,
    junit: Path | None = None,
    json_lines: bool = False,
    update_golden: bool = False,
    allow_outside_spec_folder: bool = False,
    device: str | None = None,
    verbose: bool = False,
    loader: Callable[[str, str | None], LoadedModel] = load_model,
) -> int:
    """The ``smoothgrad check`` command; returns the exit code."""
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out.width = max(out.width, 140)  # CI logs: keep each check on one line
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    def log(message: str) -> None:
        err.print(message, markup=False)

    try:
        spec = parse_spec(spec_path)
        run = Checker(
            spec,
            device=device,
            update_golden=update_golden,
            allow_outside_spec_folder=allow_outside_spec_folder,
            log=log,
            verbose=verbose,
            loader=loader,
        ).run()
    except SpecError as exc:
        err.print(f"smoothgrad: error: {exc}", markup=False)
        return EXIT_USAGE
    if json_lines:
        for r in run.results:
            out.print(json.dumps(r.to_json(), ensure_ascii=False), markup=False)
    else:
        out.print(results_table(run))
    if junit is not None:
        try:
            render.atomic_write(junit, junit_xml(run))
        except OSError as exc:
            err.print(
                f"smoothgrad: error: cannot write {names.shown(junit)} "
                f"({names.one_line(exc.strerror or exc)})",
                markup=False,
            )
            return EXIT_FAILED
    for path in run.written:
        log(f"updated golden: {names.shown(path)}")
    log(summary(run))
    return run.exit_code


__all__ = [
    "Case", "CheckResult", "CheckRun", "Checker", "Sanity", "Settings", "Spec", "SpecError",
    "check_main", "junit_xml", "mass_in_region", "parse_spec", "peak_point", "pool_map",
    "randomised_copy", "rankdata", "region_weights", "spearman", "distance_to_region",
]  # fmt: skip
