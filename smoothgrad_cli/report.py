"""What happened to each input, and the one place that decides the exit code.

Results go to stdout (a table at the end, or one JSON object per image as each finishes);
errors and the summary go to stderr, one line each; tracebacks only with ``--verbose``.
"""

from __future__ import annotations

import os
import threading
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from .names import json_line, one_line, shown


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

    def to_json(self, outputs: bool = True) -> dict[str, Any]:
        """``maps`` with their files; without ``outputs`` (predictions only) ``predictions``."""
        if outputs:
            listed = {"maps": [asdict(m) for m in self.maps]}
        else:
            listed = {"predictions": [_without_outputs(m) for m in self.maps]}
        return {"input": self.input, "status": "skipped" if self.skipped else "ok", **listed}


def _without_outputs(result: MapResult) -> dict[str, Any]:
    values = asdict(result)
    values.pop("outputs")
    return values


class Report:
    """Collects successes and failures from any thread; decides the exit code."""

    def __init__(
        self,
        out: Console | None = None,
        err: Console | None = None,
        *,
        json_lines: bool = False,
        verbose: bool = False,
        verb: str = "explained",
        outputs: bool = True,
    ) -> None:
        """``verb`` is what was done to the images, for the summary; ``outputs``: whether
        results have files (maps) or are predictions only."""
        self.out = out or Console(highlight=False, soft_wrap=True)
        self.err = err or Console(stderr=True, highlight=False, soft_wrap=True)
        self.json_lines = json_lines
        self.verbose = verbose
        self.verb = verb
        self.outputs = outputs
        self.results: list[ImageResult] = []
        self.failures: list[tuple[str, str]] = []
        self.interrupted = False
        self._lock = threading.Lock()

    def done(self, result: ImageResult) -> None:
        with self._lock:
            self.results.append(result)
            if self.json_lines:
                self._print_json(result.to_json(self.outputs))

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
        parts = [f"{done} image{'s' if done != 1 else ''} {self.verb}"]
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
        if self.outputs:
            table.add_column("outputs", overflow="fold")
        for result in sorted(self.results, key=lambda r: r.input):
            if result.skipped:
                table.add_row(escape(shown(result.input)), "[dim]skipped[/dim]", "", "")
                continue
            for m in result.maps:
                row = [
                    escape(shown(result.input)) if m.rank == 1 else "",
                    escape(f"{m.class_name} ({m.class_index})"),
                    f"{m.probability:.3f}",
                ]
                if self.outputs:
                    row.append(escape(" ".join(shown(p) for p in m.outputs.values())))
                table.add_row(*row)
        return table
