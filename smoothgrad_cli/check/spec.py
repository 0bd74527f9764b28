"""The spec of ``smoothgrad check``: a TOML file of ``[defaults]`` and ``[[case]]`` tables,
read and validated into a ``Spec`` whose cases' settings are ``MapSettings``.

Files a spec names (images, masks, goldens, a ``weights`` file) are relative to its folder;
``--update-golden`` writes only where ``golden_paths`` allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import names
from ..settings import MapSettings, Precision, SettingsError
from .checks import check_names
from .golden_paths import resolved_golden
from .values import (
    SETTING_KEYS,
    SpecError,
    Where,
    case_label,
    image_size,
    read_box,
    read_class,
    read_integer,
    read_mask,
    read_max_ig_gap,
    read_number,
    read_settings,
    read_string,
    refuse_unknown_keys,
    type_name,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

#: Keys of ``[defaults]``: the settings (``values.SETTING_KEYS``), each of which a case may
#: override, and ``device``.
DEFAULT_KEYS = (*SETTING_KEYS, "device")
CHECK_KEYS = (
    "expect_class", "top_k", "min_probability",
    "region", "mask", "min_mass", "pointing", "pointing_tolerance",
    "golden", "min_rank_correlation", "max_mean_abs_diff", "pool",
    "sanity", "max_ig_gap",
)  # fmt: skip
CASE_KEYS = ("name", "image", *CHECK_KEYS, *SETTING_KEYS)
SANITY_KEYS = ("layers", "max_rank_correlation")
DEFAULT_SANITY_THRESHOLD = 0.5
#: used when a case names a golden file but neither threshold
DEFAULT_GOLDEN_RANK_CORRELATION = 0.9
#: check's own default: a spec's maps stay comparable across machines (MapSettings: auto)
DEFAULT_PRECISION = Precision.FP32.value


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
    settings: MapSettings
    #: where each setting came from, for error messages: "defaults" or the case
    setting_origin: dict[str, str] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    expect_class: list[str | int] | None = None
    top_k: int = 1  # for expect_class; the map is always of one class (MapSettings.top_k 1)
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
    max_ig_gap: float | None = None  # integrated gradients' completeness gap, at most

    def check_names(self) -> list[str]:
        return check_names(self)


@dataclass
class Spec:
    path: Path
    cases: list[Case]
    device: str = "auto"


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
    top = Where(shown, "spec")
    for key in data:
        if key not in ("defaults", "case"):
            raise top.error(key, "unknown key (a spec has [defaults] and [[case]] tables)")
    defaults_table = data.get("defaults", {})
    dwhere = Where(shown, "defaults")
    if not isinstance(defaults_table, dict):
        raise top.error("defaults", "expected a table [defaults]")
    refuse_unknown_keys(dwhere, defaults_table, DEFAULT_KEYS)
    defaults = read_settings(dwhere, defaults_table, root)
    device = "auto"
    if "device" in defaults_table:
        device = read_string(dwhere, "device", defaults_table["device"])

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
        label = case_label(name) if isinstance(name, str) and name.strip() else f"case #{number}"
        where = Where(shown, label)
        if "name" not in table:
            raise where.error("name", "missing (every case needs a name)")
        name = read_string(where, "name", name)
        if name in seen:
            raise where.error("name", "used by an earlier case; names must be unique")
        seen.add(name)
        case = _parse_case(where, dwhere, name, table, defaults, root)
        if case.golden is not None:
            resolved = resolved_golden(where, case.golden, case.golden_text)
            other = goldens.get(resolved)
            if other is not None:
                raise where.error(
                    "golden",
                    f"{names.shown(case.golden_text)} is also the golden of {case_label(other)}",
                )
            goldens[resolved] = name
        cases.append(case)
    return Spec(path=path, cases=cases, device=device)


def _parse_case(
    where: Where,
    defaults_where: Where,
    name: str,
    table: dict[str, Any],
    defaults: dict[str, Any],
    root: Path,
) -> Case:
    refuse_unknown_keys(where, table, CASE_KEYS)
    overrides = read_settings(where, table, root)
    try:
        settings = MapSettings(**{"precision": DEFAULT_PRECISION, **defaults, **overrides})
    except SettingsError as err:  # what the readers above let through, worded as theirs
        origin = where if err.key in overrides else defaults_where
        raise origin.error(err.key, err.message(err.key)) from None
    origin = {key: ("case" if key in overrides else "defaults") for key in SETTING_KEYS}

    if "image" not in table:
        raise where.error("image", "missing (every case needs an image)")
    image_text = read_string(where, "image", table["image"])
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
        case.expect_class = [read_class(where, "expect_class", v) for v in refs]
        if "top_k" in table:
            case.top_k = read_integer(where, "top_k", table["top_k"], 1)
        if "min_probability" in table:
            case.min_probability = read_number(
                where, "min_probability", table["min_probability"], 0, 1
            )
    else:
        for key in ("top_k", "min_probability"):
            if key in table:
                raise where.error(key, "needs expect_class")

    # region
    if "region" in table and "mask" in table:
        raise where.error("mask", "give region (a box) or mask, not both")
    if "region" in table:
        case.region = Region(box=read_box(where, table["region"], size), source="box")
    elif "mask" in table:
        mask_text = read_string(where, "mask", table["mask"])
        mask_path = root / mask_text
        if not mask_path.is_file():
            raise where.error("mask", f"file not found: {names.shown(mask_path)}")
        case.region = Region(mask=read_mask(where, mask_path, size), source=mask_text)
    if "min_mass" in table:
        case.min_mass = read_number(where, "min_mass", table["min_mass"], 0, 1)
    if "pointing" in table:
        if not isinstance(table["pointing"], bool):
            raise where.error("pointing", f"expected true or false, got {table['pointing']!r}")
        case.pointing = table["pointing"]
    if "pointing_tolerance" in table:
        if not case.pointing:
            raise where.error("pointing_tolerance", "needs pointing = true")
        case.pointing_tolerance = read_number(
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
        case.golden_text = read_string(where, "golden", table["golden"])
        case.golden = root / case.golden_text
        if "min_rank_correlation" in table:
            case.min_rank_correlation = read_number(
                where, "min_rank_correlation", table["min_rank_correlation"], -1, 1
            )
        if "max_mean_abs_diff" in table:
            case.max_mean_abs_diff = read_number(
                where, "max_mean_abs_diff", table["max_mean_abs_diff"], 0
            )
        if case.min_rank_correlation is None and case.max_mean_abs_diff is None:
            case.min_rank_correlation = DEFAULT_GOLDEN_RANK_CORRELATION
        if "pool" in table:
            case.pool = read_integer(where, "pool", table["pool"], 1)
    else:
        for key in ("min_rank_correlation", "max_mean_abs_diff", "pool"):
            if key in table:
                raise where.error(key, "needs golden")

    # sanity
    if "sanity" in table:
        case.sanity = _parse_sanity(where, table["sanity"])
    case.max_ig_gap = read_max_ig_gap(where, table, settings)

    if not case.check_names():
        raise where.error(
            None, "no checks: give expect_class, region/mask, golden, sanity or max_ig_gap"
        )
    return case


def _parse_sanity(where: Where, value: Any) -> Sanity | None:
    if value is True:
        return Sanity()
    if value is False:
        return None
    if not isinstance(value, dict):
        raise where.error(
            "sanity",
            f"expected a table {{ layers = ..., max_rank_correlation = ... }} or true, "
            f"got {type_name(value)} {value!r}",
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
        layers = read_integer(where, "sanity.layers", layers, 1)
    threshold = DEFAULT_SANITY_THRESHOLD
    if "max_rank_correlation" in value:
        threshold = read_number(
            where, "sanity.max_rank_correlation", value["max_rank_correlation"], -1, 1
        )
    return Sanity(layers=layers, max_rank_correlation=threshold)


__all__ = [
    "CASE_KEYS", "CHECK_KEYS", "DEFAULT_GOLDEN_RANK_CORRELATION", "DEFAULT_KEYS",
    "DEFAULT_SANITY_THRESHOLD", "SANITY_KEYS", "SETTING_KEYS", "Case", "Region", "Sanity",
    "Spec", "SpecError", "parse_spec", "spec_from_dict",
]  # fmt: skip
