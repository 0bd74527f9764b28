"""The Typer application, the entry point, and what every command shares: one-line usage
errors, the progress bar and the option panels."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .. import __version__
from ..errors import EXIT_INTERRUPTED, EXIT_USAGE

app = typer.Typer(
    name="smoothgrad",
    help="SmoothGrad saliency maps: what is this image classifier looking at?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --help panels
MODEL = "Model"
METHOD = "Method"
OUTPUT = "Output"
RUN = "Run"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"smoothgrad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    pass


def usage_error(message: str) -> NoReturn:
    """``smoothgrad: error: MESSAGE`` on stderr, exit 2."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"smoothgrad: error: {message}", markup=False
    )
    raise typer.Exit(EXIT_USAGE)


def progress_bar(console: Console):
    """A factory of progress bars for ``total`` images, or ``None`` with ``--quiet``."""

    def factory(total: int) -> ProgressBar:
        return ProgressBar(console, total)

    return factory


class ProgressBar:
    """Images done, their rate and the time left, on stderr."""

    def __init__(self, console: Console, total: int) -> None:
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("explaining", total=total, rate="")

    def advance(self, amount: float) -> None:
        self.progress.advance(self.task, amount)
        task = self.progress.tasks[0]
        speed = task.speed
        if speed:
            rate = f"{speed:.2f} img/s" if speed >= 0.1 else f"{1 / speed:.1f} s/img"
            self.progress.update(self.task, rate=rate)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def _click_exceptions():
    """The exceptions of the click that typer runs on: its own copy from typer 0.2x on (where
    the ``click`` package may not even be installed), ``click`` itself before."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def main() -> None:
    """Entry point: usage errors become one line on stderr and exit code 2."""
    errors = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except errors.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `smoothgrad`: the help, as is
            if exc.format_message().strip():
                print(exc.format_message(), file=sys.stderr)
        else:
            print(f"smoothgrad: error: {exc.format_message()}", file=sys.stderr)
        code = EXIT_USAGE
    except (typer.Abort, getattr(errors, "Abort", typer.Abort)):
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except errors.ClickException as exc:
        print(f"smoothgrad: error: {exc.format_message()}", file=sys.stderr)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)
