"""The report's page as one string: the run's settings, the summary, the entries as a JSON
blob, and the page's style and script, inlined from ``report.css`` and ``report.js`` into
the ``report.html`` template (files beside this module), so the page stays one
self-contained file.
"""

from __future__ import annotations

import functools
import html
import json
import os
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..names import one_line, shown

#: cards on one page of the report
PAGE_SIZE = 200
#: the run's settings at the top of the page, in this order; other keys follow
_SETTING_ORDER = (
    "model", "weights", "method", "smoothing", "noise", "samples", "seed", "ig_steps",
    "ig_tolerance", "baseline", "target", "top_k", "precision", "percentile", "sign", "cmap",
    "overlay_blur", "overlay_legend", "device",
)  # fmt: skip
#: what a setting left at its default (``None`` in the manifest) means, in words
_DEFAULTS = {
    "weights": "default",
    "cmap": "default (grayscale map, viridis overlay)",
    "overlay_blur": "2 % of the model's view",
}


@functools.cache
def _asset(name: str) -> str:
    """The text of ``name``, a file of this package (``report.css``, ``.js``, ``.html``)."""
    return (files(__package__) / name).read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """``data`` as JSON that can sit inside ``<script>``: ASCII only (a byte that is not UTF-8
    stays a ``\\udcXX`` escape), with ``<``, ``>`` and ``&`` escaped so no name can end the
    script element."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _settings(entries: list[dict[str, Any]]) -> list[tuple[dict[str, str], int]]:
    """The distinct settings of the run (more than one when runs with other settings wrote
    to the same folder), each with how many images it made, most images first."""
    groups: dict[str, list] = {}
    for entry in entries:
        values: dict[str, Any] = {}
        parameters = entry.get("parameters")
        if isinstance(parameters, dict):
            values.update(parameters)
        for key in ("model", "weights", "device"):
            if entry.get(key) is not None:
                values[key] = entry[key]
        versions = entry.get("versions")
        if isinstance(versions, dict):
            values["versions"] = " · ".join(f"{k} {v}" for k, v in versions.items())
        if not values:
            continue
        key = json.dumps(values, sort_keys=True, default=str)
        groups.setdefault(key, [values, 0])[1] += 1
    ordered = sorted(groups.values(), key=lambda g: -g[1])
    shown_groups = []
    for values, count in ordered:
        keys = [k for k in _SETTING_ORDER if k in values]
        keys += sorted(k for k in values if k not in keys and k != "versions")
        if "versions" in values:
            keys.append("versions")
        shown_groups.append(({k: _setting_text(k, values[k]) for k in keys}, count))
    return shown_groups


def _setting_text(key: str, value: Any) -> str:
    if value is None:
        return _DEFAULTS.get(key, "—")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "noise" and isinstance(value, (int, float)):
        return f"{value:g}%"
    if key == "overlay_blur" and isinstance(value, (int, float)):
        return "none" if value == 0 else f"{value:g} px"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return one_line(str(value))


def _settings_html(groups: list[tuple[dict[str, str], int]], images: int) -> str:
    if not groups:
        return '<p class="muted">The manifest records no settings.</p>'
    parts = []
    many = len(groups) > 1
    limit = 6
    for values, count in groups[:limit]:
        title = f"<h3>{count:,} image{'s' if count != 1 else ''} made with</h3>" if many else ""
        rows = "".join(
            f"<div><dt>{html.escape(key.replace('_', ' '))}</dt><dd>{html.escape(text)}</dd></div>"
            for key, text in values.items()
        )
        parts.append(f'<section class="settings">{title}<dl>{rows}</dl></section>')
    if len(groups) > limit:
        rest = sum(c for _, c in groups[limit:])
        parts.append(
            f'<p class="muted">and {len(groups) - limit} more settings ({rest:,} images)</p>'
        )
    return "".join(parts)


def page(folder: Path, entries: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """The whole ``index.html``."""
    ok = sum(1 for r in records if r["s"] == "ok")
    failed = len(records) - ok
    overlays = any(r["t"][2] is not None or r["h"][2] is not None for r in records)
    name = shown(os.path.basename(os.path.abspath(folder)) or os.path.abspath(folder))
    data = {"entries": records, "page_size": PAGE_SIZE, "overlay": overlays}
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = (
        f"{len(records):,} image{'s' if len(records) != 1 else ''} · "
        f"<b>{ok:,}</b> explained · "
        f'<b class="{"bad" if failed else ""}">{failed:,}</b> failed'
    )
    return _asset("report.html").format(
        title=html.escape(f"SmoothGrad report: {name}"),
        folder=html.escape(shown(os.path.abspath(folder))),
        name=html.escape(name),
        summary=summary,
        made=html.escape(made),
        settings=_settings_html(_settings(entries), len(records)),
        style=_asset("report.css"),
        script=_asset("report.js"),
        data=_script_json(data),
        images=f"{len(records):,}",
    )
