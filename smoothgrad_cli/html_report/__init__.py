"""``OUT/index.html``: a browsable report of a folder run, built from its manifest.

One static, self-contained page: no server, no network, no script, style or font from
anywhere else (a Content-Security-Policy in the page forbids them). The entries go into the
page as one JSON blob and are drawn by its script a page of cards at a time, so a run of
10,000 images opens as fast as one of ten; images load lazily, as they scroll into view.

Cards show small thumbnails, not the maps themselves: JPEGs of at most ``THUMB_SIZE`` pixels
in ``OUT/.thumbs/``, each written atomically and stamped with its source's modification
time, so a second report makes only those whose source changed since. The photo's
thumbnail is made from the input named in the manifest when that file is still there (a
relative name is taken from the current folder, as the run took it); otherwise the card
shows a placeholder. Each thumbnail links to its full-size file, by a relative link.

Every name is text a browser shows as it is: the script sets ``textContent``, never HTML;
the static parts are escaped; names are written as ``names.shown`` writes them (a byte that
is not UTF-8 stays visible as ``\\udcXX``), and links carry the name's exact bytes,
percent-encoded.

This module holds the public API and the orchestration: reading the manifest, one record
per image for the page's script, the files each links to and the thumbnails it wants.
``thumbs`` makes the thumbnails, ``markup`` writes the HTML; the page's style, script and
template are the package's ``report.css``, ``report.js`` and ``report.html``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..files import atomic_write
from ..manifest import folder_entries, manifest_files
from ..names import one_line, shown
from ..remote import is_url
from .markup import PAGE_SIZE, page
from .thumbs import THUMB_SIZE, THUMBS, _fresh, _make_thumbs, _Thumb, thumbnail_bytes

__all__ = [
    "KINDS",
    "PAGE",
    "PAGE_SIZE",
    "PROGRESS_FROM",
    "THUMBS",
    "THUMB_SIZE",
    "NoManifest",
    "Written",
    "latest_entries",
    "page",
    "thumbnail_bytes",
    "write_report",
]

PAGE = "index.html"
#: thumbnails to make before a progress bar is worth showing
PROGRESS_FROM = 64
#: the outputs a card shows, in its order (the photo first)
KINDS = ("photo", "map", "overlay")


class NoManifest(Exception):
    """The folder has no manifest: it is not the output folder of a run."""


@dataclass
class Written:
    """What ``write_report`` did."""

    path: Path
    images: int = 0
    ok: int = 0
    failed: int = 0
    thumbnails_made: int = 0
    #: sources whose thumbnail could not be made (the card shows a placeholder)
    thumbnails_failed: int = 0


class _Plan:
    """The files a report links to, found in one listing per folder (a stat for each of a
    million names would be most of the work), and the thumbnails it wants."""

    def __init__(self, folder: Path) -> None:
        self.folder = os.path.abspath(folder)
        self.thumbs: dict[str, _Thumb] = {}
        self._listed: dict[str, frozenset[str]] = {}

    def is_file(self, path: str) -> bool:
        """Whether ``path`` is a file (or a link to one), from its folder's listing."""
        parent, name = os.path.split(path)
        parent = parent or "."
        names = self._listed.get(parent)
        if names is None:
            try:
                with os.scandir(parent) as listing:
                    names = frozenset(e.name for e in listing if _is_file(e))
            except OSError:  # no such folder, not a folder, a name refused
                names = frozenset()
            self._listed[parent] = names
        return name in names

    def want(self, source: str, key: str) -> _Thumb:
        digest = hashlib.sha256(os.fsencode(key)).hexdigest()[:24]
        href = f"{THUMBS}/{digest[:2]}/{digest}.jpg"
        target = os.path.join(self.folder, THUMBS, digest[:2], f"{digest}.jpg")
        return self.thumbs.setdefault(target, _Thumb(source, target, href))

    def href(self, path: str) -> str:
        """A relative link from the page to ``path``."""
        return _quoted(os.path.relpath(os.path.abspath(path), self.folder))


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _quoted(relative: str) -> str:
    """A relative link: the name's exact bytes, percent-encoded (a name with ``#``, ``?``,
    ``%``, a newline or bytes that are not UTF-8 links to itself)."""
    return quote(os.fsencode(relative), safe="/")


def write_report(
    folder: Path,
    progress_factory: Callable[[int], Any] | None = None,
    workers: int = 4,
) -> Written:
    """Write ``folder/index.html`` (and its thumbnails) from the folder's manifest.

    ``progress_factory(total)`` gives a progress bar (a context manager with
    ``advance(n)``) for the thumbnails, used when there are many to make. Raises
    ``NoManifest`` for a folder without one, ``OSError`` when a file cannot be written;
    Ctrl-C stops it between thumbnails (those made are kept, the page is not written)."""
    if not manifest_files(folder):
        raise NoManifest(folder)
    entries = latest_entries(folder_entries(folder))
    plan = _Plan(folder)
    records = [_record(entry, plan) for entry in entries]
    _name_failures(entries, records)
    written = Written(path=folder / PAGE, images=len(records))
    written.ok = sum(1 for r in records if r["s"] == "ok")
    written.failed = written.images - written.ok
    todo = [t for t in plan.thumbs.values() if not _fresh(t)]
    written.thumbnails_made, written.thumbnails_failed = _make_thumbs(
        todo, progress_factory if len(todo) >= PROGRESS_FROM else None, workers
    )
    for record in records:  # a thumbnail that could not be made: the placeholder
        record["t"] = [t.href if t is not None and t.ready else None for t in record["t"]]
    atomic_write(written.path, page(folder, entries, records).encode("utf-8"))
    return written


def latest_entries(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per image, the latest, at the place of its latest entry (a resumed run's
    entry replaces the earlier one; an image that failed and was explained later, or the
    other way round, is what its last run made of it). An image is the same when its
    ``relative`` name or its ``input`` is."""
    kept: dict[int, dict[str, Any]] = {}
    by_key: dict[tuple[str, str], int] = {}
    for number, entry in enumerate(entries):
        keys = [
            (name, entry[name])
            for name in ("relative", "input")
            if isinstance(entry.get(name), str)
        ]
        for key in keys:
            earlier = by_key.get(key)
            if earlier is not None:
                kept.pop(earlier, None)  # its other name still points at it: passed over
        for key in keys:
            by_key[key] = number
        kept[number] = entry
    return list(kept.values())


# --- one card's data ----------------------------------------------------------------------


def _record(entry: dict[str, Any], plan: _Plan) -> dict[str, Any]:
    """The compact JSON of one image for the page's script (keys of one letter: a run of
    100,000 images is megabytes of them). ``n``: the name shown, ``i``: the input, ``s``:
    status, ``c``/``k``/``p``: class, index and probability, ``e``: reason of a failure,
    ``t``/``h``: thumbnail and full-size link of the photo, map and overlay (``None`` when
    absent), ``m``: the other classes' maps (``--top-k``), ``r``/``top``: the class's rank
    and the model's top class when ``--target`` named another, ``ig``: false when integrated
    gradients did not converge."""
    input_name = _text(entry.get("input"))
    relative = entry.get("relative") if isinstance(entry.get("relative"), str) else None
    status = _text(entry.get("status")) or "unknown"
    record: dict[str, Any] = {
        "n": shown(relative if relative is not None else input_name),
        "i": shown(input_name),
        "s": status,
    }
    if status != "ok":
        record["e"] = one_line(_text(entry.get("error")) or "no reason recorded")
        record["t"] = [None, None, None]
        record["h"] = [None, None, None]
        return record
    maps = [m for m in entry.get("maps") or [] if isinstance(m, dict)]
    first = maps[0] if maps else {}
    record["c"] = _text(entry.get("class", first.get("class_name")))
    record["k"] = _number(entry.get("class_index", first.get("class_index")))
    record["p"] = _number(entry.get("probability", first.get("probability")))
    if isinstance(first.get("rank"), int) and first["rank"] != 1:
        record["r"] = first["rank"]
        top = first.get("top1")
        if isinstance(top, dict):
            record["top"] = [_text(top.get("class_name")), _number(top.get("probability"))]
    if entry.get("ig_converged") is False:
        record["ig"] = False

    thumbs: list[_Thumb | None] = [None, None, None]
    links: list[str | None] = [None, None, None]
    if input_name and is_url(input_name):
        links[0] = input_name  # a link to follow by hand; the page itself loads nothing
    elif input_name and plan.is_file(input_name):  # the photo is still there
        thumbs[0] = plan.want(input_name, f"photo\0{os.path.abspath(input_name)}")
        links[0] = plan.href(input_name)
    outputs = _outputs(first, entry, relative, plan)
    for j, kind in enumerate(KINDS[1:], start=1):
        if kind in outputs:
            path, link = outputs[kind]
            thumbs[j] = plan.want(path, f"output\0{link}")
            links[j] = link
    record["t"] = thumbs  # made into links once the thumbnails are
    record["h"] = links
    more = []
    for m in maps[1:]:
        files = _outputs(m, {}, relative, plan)
        more.append(
            [
                m.get("rank") if isinstance(m.get("rank"), int) else None,
                _text(m.get("class_name")),
                _number(m.get("class_index")),
                _number(m.get("probability")),
                files["map"][1] if "map" in files else None,
                files["overlay"][1] if "overlay" in files else None,
            ]
        )
    if more:
        record["m"] = more
    return record


def _name_failures(entries: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """A failed input has no ``relative`` name: it is shown below the folder the explained
    images came from (``a/bad.jpg`` beside ``a/cat.jpg``, not the whole path), when it is
    in one of them; its whole name stays in ``i``."""
    roots = set()
    for entry in entries:
        input_name, relative = entry.get("input"), entry.get("relative")
        if isinstance(input_name, str) and isinstance(relative, str) and relative:
            if input_name.endswith(relative) and len(roots) < 64:
                roots.add(input_name[: len(input_name) - len(relative)])
    roots.discard("")
    roots = sorted((r for r in roots if r.endswith(("/", os.sep))), key=len, reverse=True)
    if not roots:
        return
    for entry, record in zip(entries, records, strict=True):
        input_name = entry.get("input")
        if record["s"] == "ok" or not isinstance(input_name, str):
            continue
        for root in roots:
            if input_name.startswith(root) and len(input_name) > len(root):
                record["n"] = shown(input_name[len(root) :])
                break


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None if value is None else str(value)


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _outputs(
    result: dict[str, Any], entry: dict[str, Any], relative: str | None, plan: _Plan
) -> dict[str, tuple[str, str]]:
    """The map's files that exist, by kind: (the file, the page's link to it).

    The manifest names them as the run spelt its ``-o``, relative to the folder the run was
    started in; below the output folder they are at the image's ``relative`` place, so
    that is where they are looked for first (the report works in a folder moved or copied
    elsewhere), then at the recorded name itself."""
    files = result.get("outputs")
    if not isinstance(files, dict):
        files = {}
        for name in entry.get("outputs") or []:  # an entry without its maps' own files
            for kind in KINDS[1:]:
                if isinstance(name, str) and name.endswith(f".{kind}.png"):
                    files.setdefault(kind, name)
    found: dict[str, tuple[str, str]] = {}
    below = os.path.dirname(relative) if relative is not None else None
    for kind in KINDS[1:]:
        name = files.get(kind)
        if not isinstance(name, str) or not name:
            continue
        if below is not None:
            inside = os.path.join(below, os.path.basename(name))
            path = os.path.join(plan.folder, inside)
            if plan.is_file(path):
                found[kind] = (path, _quoted(inside))
                continue
        if plan.is_file(name):
            found[kind] = (name, plan.href(name))
    return found
