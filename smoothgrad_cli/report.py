"""What happened to each input, and the one place that decides the exit code.

Results go to stdout (a table at the end, or one JSON object per image as each finishes);
errors and the summary go to stderr, one line each; tracebacks only with ``--verbose``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .names import json_line, one_line, shown

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass
class MapResult:
    rank: int
    class_index: int
    class_name: str
    probability: float
    outputs: dict[str, str]


@dataclass
class ImageResult:
    input: str
    maps: list[MapResult] = field(default_factory=list)
    skipped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "status": "skipped" if self.skipped else "ok",
            **{"maps": [asdict(m) for m in self.maps]},
        }


class Report:
    """Collects successes and failures from any thread; decides the exit code."""

    def __init__(
        self,
        out: Console | None = None,
        err: Console | None = None,
        *,
        json_lines: bool = False,
        verbose: bool = False,
    ) -> None:
        self.out = out or Console(highlight=False, soft_wrap=True)
        self.err = err or Console(stderr=True, highlight=False, soft_wrap=True)
        self.json_lines = json_lines
        self.verbose = verbose
        self.results: list[ImageResult] = []
        self.failures: list[tuple[str, str]] = []
        self.interrupted = False
        self._lock = threading.Lock()

    def done(self, result: ImageResult) -> None:
        with self._lock:
            self.results.append(result)
            if self.json_lines:
                self._print_json(result.to_json())

    def failed(
        self, path: str | os.PathLike, reason: str, exc: BaseException | None = None
    ) -> None:
        reason = one_line(reason)  # one line, whatever the exception or the file said
        with self._lock:
            self.failures.append((str(path), reason))
            self.err.print(f"error: {escape(shown(path))}: {escape(reason)}")
            if self.verbose and exc is not None:
                self.err.print(
                    escape("".join(traceback.format_exception(exc)).rstrip()), style="dim"
                )
            if self.json_lines:
                self._print_json({"input": str(path), "status": "error", "error": reason})

    def warn(self, message: str) -> None:
        with self._lock:
            self.err.print(f"warning: {escape(one_line(message))}")

    def _print_json(self, obj: dict[str, Any]) -> None:
        # Plain print, not rich: one JSON object per line, never wrapped or styled.
        self.out.file.write(json_line(obj) + "\n")
        self.out.file.flush()

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failures else EXIT_OK

    def finish(self) -> int:
        """Print the table (unless JSON) and the summary line; return the exit code."""
        if not self.json_lines and self.results:
            self.out.print(self._table())
        done = sum(1 for r in self.results if not r.skipped)
        skipped = len(self.results) - done
        parts = [f"{done} image{'s' if done != 1 else ''} explained"]
        if skipped:
            parts.append(f"{skipped} skipped (outputs exist)")
        if self.failures:
            parts.append(f"{len(self.failures)} failed")
        line = ", ".join(parts)
        if self.interrupted:
            line = f"interrupted: {line}"
        self.err.print(line)
        return self.exit_code

    def _table(self) -> Table:
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("file", overflow="fold")
        table.add_column("class", overflow="fold")
        table.add_column("prob", justify="right")
        table.add_column("outputs", overflow="fold")
        for result in sorted(self.results, key=lambda r: r.input):
            if result.skipped:
                table.add_row(escape(shown(result.input)), "[dim]skipped[/dim]", "", "")
                continue
            for m in result.maps:
                table.add_row(
                    escape(shown(result.input)) if m.rank == 1 else "",
                    escape(f"{m.class_name} ({m.class_index})"),
                    f"{m.probability:.3f}",
                    escape(" ".join(shown(p) for p in m.outputs.values())),
                )
        return table


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
