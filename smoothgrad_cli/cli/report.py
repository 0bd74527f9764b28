"""``smoothgrad report OUT``: a browsable page, ``OUT/index.html``, of a folder run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError
from ..names import shown
from ..report import Report
from .app import RUN, ProgressBar, app, usage_error

if TYPE_CHECKING:
    from ..html_report import Written

# One line per paragraph: typer keeps a docstring's line breaks, and folds lines itself.
REPORT_HELP = (
    "Write DIR/index.html: a page to browse a run's maps in any browser, offline.\n\n"
    "Built from DIR/manifest.jsonl: the run's settings and versions, a card per image "
    "(photo, map and overlay, with its class and probability), filters by class and "
    "status, sorting by probability, and the failed inputs with their reasons. "
    "Thumbnails go to DIR/.thumbs and are made again only for files that changed. "
    "`smoothgrad explain … --report` writes the same page at the end of a run."
)


@app.command("report", help=REPORT_HELP)
def report_command(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="The output folder of a run (-o).")],
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=RUN)
    ] = False,
) -> None:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    code = write(folder, err, quiet)
    if code == EXIT_OK:
        typer.echo(shown(folder / "index.html"))
    raise typer.Exit(code)


def write(folder: Path, err: Console, quiet: bool = False) -> int:
    """``smoothgrad report``: write ``folder``'s report and say so on ``err``; the exit code.
    A folder without a manifest is a usage error (exit 2); a file that cannot be written,
    exit 1; Ctrl-C, 130."""
    from ..html_report import NoManifest, write_report

    if not folder.is_dir():
        usage_error(f"{shown(folder)}: no such folder")
    try:
        written = write_report(folder, None if quiet else _thumbnail_bar(err))
    except NoManifest:
        usage_error(
            f"{shown(folder / 'manifest.jsonl')}: no manifest: not the output folder of "
            "`smoothgrad explain` (-o)"
        )
    except KeyboardInterrupt:
        err.print("interrupted: report not written", markup=False)
        return EXIT_INTERRUPTED
    except OSError as exc:
        err.print(f"error: {_failure(folder, exc)}", markup=False)
        return EXIT_FAILED
    err.print(_written(written), markup=False)
    return EXIT_OK


def write_for_run(folder: Path, report: Report, quiet: bool = False) -> None:
    """``explain --report``, once the run is done: the page of the output folder, said on
    the run's stderr. A page that cannot be written is one more failure (exit 1); Ctrl-C
    while thumbnails are made is the run's interruption (130). Under torchrun only rank 0
    writes it; each shard of a job array writes what the folder holds so far."""
    from ..distributed import Ranks
    from ..html_report import NoManifest, write_report

    try:
        ranks = Ranks.from_environment()
    except UsageError:
        ranks = None
    if ranks is not None and ranks.rank != 0:
        return
    try:
        written = write_report(folder, None if quiet else _thumbnail_bar(report.err))
    except NoManifest:
        report.warn(f"--report: {shown(folder)} has no manifest: no report written")
        return
    except KeyboardInterrupt:
        report.interrupted = True
        return
    except OSError as exc:
        where = exc.filename or folder / "index.html"
        report.failed(str(where), f"report not written ({exc.strerror or exc})")
        return
    report.err.print(_written(written), markup=False)


def _written(written: Written) -> str:
    parts = [f"{written.ok:,} explained"]
    if written.failed:
        parts.append(f"{written.failed:,} failed")
    if written.thumbnails_failed:
        parts.append(f"{written.thumbnails_failed:,} thumbnails could not be made")
    return f"report: {shown(written.path)} ({', '.join(parts)})"


def _failure(folder: Path, exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else folder / "index.html"
    return f"{shown(where)}: {exc.strerror or exc}"


def _thumbnail_bar(console: Console):
    def factory(total: int) -> ProgressBar:
        bar = ProgressBar(console, total)
        bar.progress.update(bar.task, description="thumbnails")
        return bar

    return factory
