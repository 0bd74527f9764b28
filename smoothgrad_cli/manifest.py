"""``manifest.jsonl``: the record of a folder run, one line per input, and what a resumed run
reads back from it. Every entry is built here.

A job split over processes (``--shard``, torchrun ranks) does not share one file: each
process appends to its own *part*, ``manifest.shard-2-of-8.jsonl``, ``manifest.rank-3.jsonl``
(``part_name``), and the parts are folded into ``manifest.jsonl`` afterwards
(``merge_parts``). One writer per file keeps every guarantee of a single run's manifest: an
append from several processes is whole only on a local file system (NFS, which jobs over
many machines share, appends by seek-and-write), and a writer that cuts back its failed
line, or a cut line left by a kill, must know that no one else is writing after it. A part
is held with an exclusive ``flock`` while written, which also refuses a second process
started for the same part (the same shard twice) and tells a merge which parts are done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .names import json_line
from .report import MapResult


def ok_entry(input: str | os.PathLike, relative: Path, maps: list[MapResult]) -> dict[str, Any]:
    """An image explained: its outputs, and its top class at the top level for quick reading.

    Integrated gradients refined to a tolerance add ``ig_converged``: false when any of the
    image's maps reached ``--ig-steps`` above it (``jq 'select(.ig_converged == false)'``);
    each map's ``ig`` says how far."""
    top = maps[0]
    entry = {
        "input": os.fspath(input),
        "relative": relative.as_posix(),
        "status": "ok",
        "outputs": [path for m in maps for path in m.outputs.values()],
        "class": top.class_name,
        "class_index": top.class_index,
        "probability": top.probability,
        "maps": [m.to_json() for m in maps],
        "error": None,
    }
    verdicts = [m.ig.converged for m in maps if m.ig is not None and m.ig.converged is not None]
    if verdicts:
        entry["ig_converged"] = all(verdicts)
    return entry


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

    def __init__(self, path: Path, common: dict[str, Any], part: bool = False) -> None:
        """``part``: one process's part of a split job's manifest, held exclusively while it
        is open (``ManifestInUse`` when another process holds it)."""
        self.path = path
        self.common = common
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: there is nothing left to flush at close, so closing never fails.
        self._fd = _open_locked(path) if part else os.open(path, _APPEND, 0o666)
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
    return list(_entries(path))


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    # Line by line: a manifest of a million images is a gigabyte or more, never read whole.
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry


def folder_entries(folder: Path) -> Iterator[dict[str, Any]]:
    """Every entry of an output folder's manifest and of its parts not merged yet, in the
    order ``merge_parts`` would put them in (``manifest_files``)."""
    for path in manifest_files(folder):
        yield from _entries(path)


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
    """From a manifest's entries: what a resumed run needs of the last "done" entry of each
    image (its ``parameters``), by its ``relative`` name, and by its ``input`` spelling too
    (manifests written before ``relative`` existed have only that). A later run's entry for
    the same image replaces an earlier one. Entries made with the same settings share one
    ``parameters`` dict, so a folder of a million images costs its names, not its lines."""
    done: dict[str, dict[str, Any]] = {}
    shared: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.get("status") != "ok":
            continue
        parameters = entry.get("parameters")
        if isinstance(parameters, dict):
            parameters = shared.setdefault(json.dumps(parameters, sort_keys=True), parameters)
        kept = {"parameters": parameters}
        for key in ("relative", "input"):
            if isinstance(entry.get(key), str):
                done[f"{key}:{entry[key]}"] = kept
    return done


# --- parts of a split job's manifest ------------------------------------------------------

MAIN = "manifest.jsonl"
_APPEND = os.O_RDWR | os.O_APPEND | os.O_CREAT
_PART = re.compile(r"^manifest(\.shard-\d+-of-\d+)?(\.rank-\d+)?\.jsonl$")
#: what ``flock`` says on a file system without locks (Lustre mounted without ``flock``)
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_COPY = 16 << 20


class ManifestInUse(OSError):
    """Another living process holds this part of the manifest."""


def part_name(shard_tag: str | None, rank: int | None) -> str:
    """``manifest.shard-2-of-8.jsonl``, ``manifest.rank-3.jsonl``, or both tags for a rank of
    a torchrun job that is itself one shard of a job array."""
    tags = [t for t in (shard_tag, None if rank is None else f"rank-{rank}") if t]
    return ".".join(["manifest", *tags, "jsonl"])


def manifest_files(folder: Path) -> list[Path]:
    """``manifest.jsonl`` (if any), then the parts, the least recently written first, so that
    reading them in this order lets the latest entry of an image win, as in one file."""
    main = folder / MAIN
    return ([main] if main.exists() else []) + _parts(folder)


def _parts(folder: Path) -> list[Path]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    parts = []
    for name in names:
        if _PART.match(name) and name != MAIN:
            with contextlib.suppress(OSError):  # merged away since the listing
                parts.append((os.stat(folder / name).st_mtime_ns, name))
    return [folder / name for _, name in sorted(parts)]


@dataclass
class Merged:
    parts: list[Path] = field(default_factory=list)  # folded in and removed
    lines: int = 0
    busy: list[Path] = field(default_factory=list)  # still written by a living process


def merge_parts(folder: Path) -> Merged:
    """Fold every part no process holds into ``manifest.jsonl``, oldest first, and remove it.

    A part's last line, if a kill cut it, is dropped. The main manifest is synced before a
    part goes, so a crash in between can only leave lines twice (harmless: the latest entry
    of an image wins), never lose one. Parts being written are left, in ``busy``."""
    merged = Merged()
    parts = _parts(folder)
    if not parts:
        return merged
    main = os.open(folder / MAIN, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        for path in parts:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # another merge took it
            try:
                if not _try_lock(fd):
                    merged.busy.append(path)
                    continue
                if os.fstat(fd).st_nlink == 0:
                    continue  # merged and removed while this one waited for the lock
                merged.lines += _copy_whole_lines(fd, main)
                os.fsync(main)
                os.unlink(path)
                merged.parts.append(path)
            finally:
                os.close(fd)
    finally:
        os.close(main)
    return merged


def _copy_whole_lines(source: int, target: int) -> int:
    """Append ``source``'s complete lines to ``target`` in large whole-line writes."""
    lines, rest = 0, b""
    while block := os.read(source, _COPY):
        data = rest + block
        end = data.rfind(b"\n") + 1
        data, rest = data[:end], data[end:]
        view = memoryview(data)
        while view:
            view = view[os.write(target, view) :]
        lines += data.count(b"\n")
    return lines


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a merge removes what it took)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _try_lock(fd: int) -> bool:
    """Take ``fd``'s exclusive lock without waiting; ``False`` if a living process has it.
    Where the file system has no locks, one writer per part is kept by the names alone."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
    return True


#: how long a part held by someone else is waited for before it counts as another writer's:
#: a merge holds a part only while it copies and removes it
MERGE_WAIT_S = 2.0


def _open_locked(path: Path) -> int:
    """Open a part for appending and lock it.

    A merge may hold the lock for a moment (``merge_parts`` locks each part it folds in, the
    empty one a writer has just created too) and then remove the file: so a held lock is
    waited for while the name still means the file opened, and a file removed meanwhile is
    opened again by its name. Only a lock held past ``MERGE_WAIT_S`` is another writer's."""
    deadline = time.monotonic() + MERGE_WAIT_S
    while True:
        fd = os.open(path, _APPEND, 0o666)
        try:
            while not (locked := _try_lock(fd)) and _still_named(fd, path):
                if time.monotonic() > deadline:
                    raise ManifestInUse(errno.EBUSY, "written by another running process", path)
                time.sleep(0.01)
            same = locked and _still_named(fd, path)
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)
