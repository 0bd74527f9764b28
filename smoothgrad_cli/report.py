"""What happened to each input, and the one place that decides the exit code.

Results go to stdout (a table at the end, or one JSON object per image as each finishes);
errors and the summary go to stderr, one line each; tracebacks only with ``--verbose``.
A reader that closes stdout (``| head -1``) stops the run quietly, exit 141.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import traceback
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from .names import json_line, one_line, shown
from .terminal import is_a_terminal

if TYPE_CHECKING:  # not at run time: the explainer imports torch
    from .explainer import Explanation

#: stdout closed by its reader (``| head``): 128 + SIGPIPE, what a shell reports for a tool
#: that the signal ended (``yes | head -1``), so ``set -o pipefail`` scripts see it the same.
EXIT_BROKEN_PIPE = 141

#: Outside a terminal (a pipe, a log file), tables are laid out this wide: as wide as their
#: rows, never folded at 80 columns, so that a path stays whole on its line.
UNFOLDED_WIDTH = 1 << 20


class StdoutClosed(KeyboardInterrupt):
    """Raised where a result cannot be written because stdout's reader has gone. A
    ``KeyboardInterrupt`` so that a run stops at once as on Ctrl-C (the writes in flight
    finish), then ``Report.finish`` ends it without a word: exit 141."""


def silence(file: IO[Any] | None = None) -> None:
    """Point ``file``'s descriptor (stdout's by default) at /dev/null, so that what is still
    buffered, and Python's flush at exit, go nowhere instead of failing again."""
    file = file if file is not None else sys.stdout
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture stdout)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def stdout_closed() -> int:
    """What to do when stdout's reader has gone: silence stdout; the exit code."""
    silence()
    return EXIT_BROKEN_PIPE


class _StdoutConsole(Console):
    def on_broken_pipe(self) -> None:
        # rich's own answer is SystemExit(1), which reads as "some inputs failed"; the error
        # goes on instead, to whoever stops the run and exits 141 (Report, cli.app.Group).
        self.quiet = True
        raise BrokenPipeError


def _on_a_terminal(console: Console) -> bool:
    # The file itself, not rich's is_terminal, which FORCE_COLOR turns on: colour in a CI log
    # is welcome, lines folded at 80 columns are not.
    return is_a_terminal(console.file)


def stdout_console() -> Console:
    """The console for results on stdout: at the terminal's width on a terminal; elsewhere
    unfolded (see ``UNFOLDED_WIDTH``); ``print_table`` drops the padding at the line ends.
    A closed stdout raises ``BrokenPipeError``, as a plain write does."""
    console = _StdoutConsole(highlight=False, soft_wrap=True)
    if not _on_a_terminal(console):
        console.width = UNFOLDED_WIDTH
    return console


def print_table(console: Console, table: Table) -> None:
    """``table`` on ``console``; outside a terminal without the blanks that pad each row to
    the table's width (a log line ends where its text does)."""
    if _on_a_terminal(console):
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    text = "".join(line.rstrip() + "\n" for line in captured.get().splitlines())
    console.file.write(text)
    console.file.flush()


@dataclass
class Prediction:
    class_index: int
    class_name: str
    probability: float


@dataclass
class IgCompleteness:
    """How complete an integrated-gradients map is (``engine.convergence.Convergence``):
    ``gap`` = |attribution_sum − score_change| / |score_change| (``None`` when the score did
    not change), reached at ``steps`` nodes; ``converged``: within ``tolerance`` (``None``
    when the steps were fixed, ``--ig-tolerance 0``)."""

    steps: int
    gap: float | None
    attribution_sum: float
    score_change: float
    tolerance: float | None
    converged: bool | None

    @classmethod
    def of(cls, convergence) -> IgCompleteness:
        gap = convergence.gap
        return cls(
            steps=convergence.steps,
            gap=gap if math.isfinite(gap) else None,  # JSON has no infinity
            attribution_sum=convergence.attribution_sum,
            score_change=convergence.score_change,
            tolerance=convergence.tolerance,
            converged=convergence.converged,
        )

    def shown(self) -> str:
        """``1.2% · 64 steps`` for the table."""
        gap = "n/a" if self.gap is None else f"{self.gap:.1%}"
        return f"{gap} · {self.steps} steps"


@dataclass
class MapResult:
    """One explained class of an image. ``rank`` is the class's rank among all the model's
    predictions (1: its top class), also when ``--target`` names a class; ``top1`` is the
    model's top class beside it (``None`` where results are predictions, listed in order)."""

    rank: int
    class_index: int
    class_name: str
    probability: float
    outputs: dict[str, str]
    top1: Prediction | None = None
    ig: IgCompleteness | None = None  # integrated gradients only

    def to_json(self) -> dict[str, Any]:
        """The map's JSON object; ``ig`` only for integrated gradients."""
        values = asdict(self)
        if values["ig"] is None:
            values.pop("ig")
        return values


def map_results(explanation: Explanation) -> list[MapResult]:
    """The results of one explained image, one per explained class, best first, each with
    the model's own rank of its class and the model's top-1 class (and, for integrated
    gradients, how complete the map is)."""
    probabilities, categories = explanation.probabilities, explanation.categories
    best = int(probabilities.argmax())
    top1 = Prediction(best, categories[best], float(probabilities[best]))
    convergence = explanation.convergence or [None] * len(explanation.classes)
    return [
        MapResult(
            rank=explanation.rank(int(c)),
            class_index=int(c),
            class_name=categories[c],
            probability=float(probabilities[c]),
            outputs={},
            top1=top1,
            ig=IgCompleteness.of(ig) if ig is not None else None,
        )
        for c, ig in zip(explanation.classes, convergence, strict=True)
    ]


def unconverged_message(input: str, result: MapResult) -> str | None:
    """The stderr line for an integrated-gradients map that reached ``--ig-steps`` with its
    gap above ``--ig-tolerance``; ``None`` for any other map."""
    ig = result.ig
    if ig is None or ig.converged is not False:
        return None
    gap = "unbounded (the score did not change)" if ig.gap is None else f"{ig.gap:.1%}"
    return (
        f"{shown(input)}: integrated gradients of {result.class_name} ({result.class_index}) "
        f"did not converge: completeness gap {gap} at {ig.steps} steps (--ig-steps), above "
        f"--ig-tolerance {ig.tolerance:g}; raise --ig-steps for a complete map"
    )


@dataclass
class ImageResult:
    input: str
    maps: list[MapResult] = field(default_factory=list)
    skipped: bool = False

    def to_json(self, outputs: bool = True) -> dict[str, Any]:
        """``maps`` with their files; without ``outputs`` (predictions only) ``predictions``."""
        if outputs:
            listed = {"maps": [m.to_json() for m in self.maps]}
        else:
            listed = {"predictions": [_without_outputs(m) for m in self.maps]}
        return {"input": self.input, "status": "skipped" if self.skipped else "ok", **listed}


def _without_outputs(result: MapResult) -> dict[str, Any]:
    values = result.to_json()
    values.pop("outputs")
    if values["top1"] is None:  # predictions: the top-1 is the first of them
        values.pop("top1")
    return values


def _top1_elsewhere(result: ImageResult) -> bool:
    tops = {m.top1.class_index for m in result.maps if m.top1 is not None}
    return bool(tops - {m.class_index for m in result.maps})


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
        self.out = out or stdout_console()
        self.err = err or Console(stderr=True, highlight=False, soft_wrap=True)
        self.json_lines = json_lines
        self.verbose = verbose
        self.verb = verb
        self.outputs = outputs
        self.results: list[ImageResult] = []
        self.failures: list[tuple[str, str]] = []
        self.interrupted = False
        self.stdout_closed = False
        self._lock = threading.Lock()

    def done(self, result: ImageResult) -> None:
        with self._lock:
            self.results.append(result)
            for m in result.maps:
                message = unconverged_message(result.input, m)
                if message is not None:
                    self.err.print(f"warning: {escape(one_line(message))}")
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
        if self.stdout_closed:
            return  # the writes in flight finishing after the stop: nobody reads them
        # Plain print, not rich: one JSON object per line, never wrapped or styled. Flushed at
        # once, so a reader sees each result as it comes, and a closed pipe is noticed here.
        try:
            self.out.file.write(json_line(obj) + "\n")
            self.out.file.flush()
        except BrokenPipeError:
            self._closed()
            raise StdoutClosed from None

    def _closed(self) -> None:
        self.stdout_closed = True
        silence(self.out.file)

    @property
    def exit_code(self) -> int:
        if self.stdout_closed:
            return EXIT_BROKEN_PIPE
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failures else EXIT_OK

    def finish(self) -> int:
        """Print the table (unless JSON) and the summary line; return the exit code. Once
        stdout's reader has gone, nothing more is said (as ``yes | head -1`` says nothing)."""
        if not self.json_lines and self.results and not self.stdout_closed:
            try:
                print_table(self.out, self._table())
            except BrokenPipeError:
                self._closed()
        if self.stdout_closed:
            return self.exit_code
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
        # "rank" and "top-1" only when an image's top-1 class is not among its rows (--target
        # names another class): otherwise the rows show the classes in the model's order.
        beside = any(_top1_elsewhere(r) for r in self.results)
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("file", overflow="fold")
        table.add_column("class", overflow="fold")
        if beside:
            table.add_column("rank", justify="right")
        table.add_column("prob", justify="right")
        if beside:
            table.add_column("top-1", overflow="fold")
        integrated = any(m.ig is not None for r in self.results for m in r.maps)
        if integrated:
            table.add_column("IG gap", justify="right")
        if self.outputs:
            table.add_column("outputs", overflow="fold")
        for result in sorted(self.results, key=lambda r: r.input):
            if result.skipped:
                table.add_row(escape(shown(result.input)), "[dim]skipped[/dim]")
                continue
            for i, m in enumerate(result.maps):
                row = [
                    escape(shown(result.input)) if i == 0 else "",
                    escape(f"{m.class_name} ({m.class_index})"),
                ]
                if beside:
                    row.append(str(m.rank))
                row.append(f"{m.probability:.3f}")
                if beside:
                    top = m.top1
                    differs = top is not None and top.class_index != m.class_index
                    row.append(
                        escape(f"{top.class_name} ({top.class_index}) {top.probability:.3f}")
                        if differs
                        else ""
                    )
                if integrated:
                    row.append(_ig_cell(m.ig))
                if self.outputs:
                    row.append(escape(" ".join(shown(p) for p in m.outputs.values())))
                table.add_row(*row)
        return table


def _ig_cell(ig: IgCompleteness | None) -> str:
    if ig is None:
        return ""
    if ig.converged is False:  # said on stderr too; here it stands out among the rows
        return f"[bold red]{escape(ig.shown())}, over {ig.tolerance * 100:g}%[/bold red]"
    return escape(ig.shown())
