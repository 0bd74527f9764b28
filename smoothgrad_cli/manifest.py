"""``manifest.jsonl``: the record of a folder run, one line per input, and what a resumed run
reads back from it. Every entry is built here."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
from collections.abc import Iterable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from .names import json_line
from .report import MapResult


def ok_entry(input: str | os.PathLike, relative: Path, maps: list[MapResult]) -> dict[str, Any]:
    """An image explained: its outputs, and its top class at the top level for quick reading."""
    top = maps[0]
    return {
        "input": os.fspath(input),
        "relative": relative.as_posix(),
        "status": "ok",
        "outputs": [path for m in maps for path in m.outputs.values()],
        "class": top.class_name,
        "class_index": top.class_index,
        "probability": top.probability,
        "maps": [asdict(m) for m in maps],
        "error": None,
    }


def error_entry(input: str | os.PathLike, reason: str) -> dict[str, Any]:
    return {
        "input": os.fspath(input),
        "status": "error",
        "outputs": [],
        "class": None,
        "class_index": None,
        "probability": None,
        "maps": [],
        "error": reason,
    }


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("smoothgrad", "torch", "torchvision", "timm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


class Manifest:
    """``manifest.jsonl``: one line per image, appended as each finishes, so an interrupted
    run's manifest is still a complete record of what it did.

    Each line goes out in one ``write`` on a file opened with ``O_APPEND``: a process killed
    at any moment leaves whole lines only, and a write that fails part-way (a full disk) is
    cut back off, so no line is ever half there. A line a crash of an older version cut is
    removed when the manifest is opened again.
    """

    def __init__(self, path: Path, common: dict[str, Any]) -> None:
        self.path = path
        self.common = common
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: there is nothing left to flush at close, so closing never fails.
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            _drop_cut_line(self._fd)
        except OSError:
            os.close(self._fd)
            raise

    def record(self, entry: dict[str, Any]) -> None:
        data = (json_line({**entry, **self.common}) + "\n").encode("utf-8")
        with self._lock:
            start = os.fstat(self._fd).st_size
            try:
                written = 0
                while written < len(data):  # a short write, then the error on the next
                    written += os.write(self._fd, data[written:])
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                raise

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The entries of a manifest, in order; lines that are not whole JSON objects (a line an
    older version left cut) are passed over. A missing manifest has none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    entries = []
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _drop_cut_line(fd: int) -> None:
    """Truncate the file after its last newline: what follows is a line that never finished."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail_start = max(0, size - 65536)
    while True:
        tail = os.pread(fd, size - tail_start, tail_start)
        end = tail.rfind(b"\n")
        if end >= 0:
            keep = tail_start + end + 1
            break
        if tail_start == 0:
            keep = 0
            break
        tail_start = max(0, tail_start - 65536)
    if keep < size:
        os.ftruncate(fd, keep)


def recorded_done(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """From a manifest's entries: the last "done" entry of each image, by its ``relative``
    name, and by its ``input`` spelling too (manifests written before ``relative`` existed
    have only that). A later run's entry for the same image replaces an earlier one."""
    done: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.get("status") != "ok":
            continue
        for key in ("relative", "input"):
            if isinstance(entry.get(key), str):
                done[f"{key}:{entry[key]}"] = entry
    return done
