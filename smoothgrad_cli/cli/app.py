"""The Typer application, the entry point, and what every command shares: one-line usage
errors, help as users read it, a quiet end when stdout is closed, the progress bar and the
option panels."""

from __future__ import annotations

import inspect
import math
import re
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from ..errors import EXIT_INTERRUPTED, EXIT_USAGE, did_you_mean
from ..report import stdout_closed

# --- help as users read it -----------------------------------------------------------------
#
# The typer installed here (0.29) writes a type after every option in its rich help, flags
# included: `--overlay <bool>` reads as if the flag took a value, and `--overlay true` then
# makes "true" an input file. Its plain (non-rich) help already leaves flags bare; its rich
# formatter shows an option's `metavar` instead of the type whenever one is set. So the
# least intrusive fix is to give every flag the empty metavar (a flag takes no value) in the
# command classes below: no typer internals are patched, and an option that sets its own
# metavar keeps it. The usage line is the other half: typer writes a required argument as
# `{inputs}...`, not the `INPUTS...` that click, argparse and man pages use; the classes
# write arguments in that convention, from the argument's metavar (or its name, in capitals).


def _bare_flags(params) -> None:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        elif getattr(param, "param_type_name", None) == "argument":
            # An argument's name (INPUTS..., SPEC, DIR) already says what it takes; typer
            # would add its Python type beside it (`<list[str]>`), which reads as a value.
            param.display_type_rich = lambda ctx: None


def _usage_name(argument) -> str:
    """``INPUTS...``, ``SPEC``, ``[PATTERN]``: the metavar as given (its name in capitals
    without one), ``...`` if it takes several values, in brackets if it may be left out."""
    name = argument.metavar or argument.name.upper()
    if argument.nargs != 1 and not name.endswith("..."):
        name += "..."
    if not argument.required and not name.startswith("["):
        name = f"[{name}]"
    return name


def _flowing(text: str | None) -> str | None:
    """A docstring's paragraphs each on one line. Typer's rich help keeps every line break of
    a command's help, so a docstring wrapped at 92 columns would break mid-sentence in an
    80-column terminal; rich then wraps each paragraph to the terminal. A paragraph that
    starts with click's ``\\b`` keeps its lines."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
        for p in paragraphs
    )


class _BareFlags:
    """Flags, ``--help`` included, without a metavar (see above); help text that flows."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _bare_flags(self.params)
        self.help = _flowing(self.help)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        _bare_flags([option] if option is not None else [])
        return option

    def format_help(self, ctx, formatter) -> None:
        # Typer prints --help on a rich console of its own, whose answer to a reader that
        # has gone (`--help | head -1`) is SystemExit(1); nothing else in printing help
        # exits. As a BrokenPipeError it ends as any closed stdout does (``Group``: 141).
        try:
            super().format_help(ctx, formatter)
        except SystemExit as exc:
            if exc.code == 1:
                raise BrokenPipeError from None
            raise


class Command(_BareFlags, TyperCommand):
    """Every command of ``app``: bare flags, and arguments as ``NAME`` in the usage line."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_usage_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Group(_BareFlags, TyperGroup):
    """``smoothgrad`` itself: bare flags too, and the place that sees a closed stdout.

    ``smoothgrad … | head -1`` closes the pipe while the tool still writes: the next write
    raises ``BrokenPipeError``. Typer would turn it into a silent exit 1, which reads as
    "some inputs failed". Here it ends the run as a Unix tool ends when its reader goes
    away: no traceback, no message, exit 141 (128 + SIGPIPE, what a shell reports for a
    tool the signal killed). ``Report`` stops an ``explain``/``predict`` run at the first
    result it cannot write; this catches the rest (``models``, ``check``, ``--version``).
    ``--help`` is printed by typer's own rich console, which ends quietly with exit 1."""

    def make_context(self, *args, **kwargs):
        # --version is printed while the options are parsed, before any command runs.
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:
            raise typer.Exit(stdout_closed()) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise typer.Exit(stdout_closed()) from None


class _Typer(typer.Typer):
    """``typer.Typer`` whose commands are ``Command``s unless one names its own class."""

    def command(self, name: str | None = None, *, cls=None, **kwargs):
        return super().command(name, cls=cls or Command, **kwargs)


app = _Typer(
    name="smoothgrad",
    cls=Group,
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


class _Done(ProgressColumn):
    """``M/N P%``: images wholly done and the share done, both rounded down, so they agree.

    rich's own columns write ``int(completed)`` beside a percentage rounded to nearest, so a
    run at 15.99 of 16 images reads "15/16 100%"."""

    def render(self, task) -> Text:
        total = int(task.total or 0)
        done = min(total, math.floor(task.completed))
        share = math.floor(100 * task.completed / total) if total else 0
        return Text(f"{done}/{total} {min(share, 100):>3}%", style="progress.percentage")


class ProgressBar:
    """Images done, their rate and the time left, on stderr.

    An image advances by fractions, one per chunk of its noisy copies (``rows / rows per
    image``); the sum is kept here and rounded to 1e-9 of an image, so that 50 fiftieths make
    exactly one image whatever the float sums give. Outside a terminal rich prints the bar once,
    at the end: that line must be exact. A run that ends without an exception has dealt with
    every image (done or failed), so the bar ends at N/N; an interrupted one shows how far it
    got."""

    def __init__(self, console: Console, total: int) -> None:
        self.total = total
        self.done = 0.0
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            _Done(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("explaining", total=total, rate="")

    def advance(self, amount: float) -> None:
        self.done += amount
        self.progress.update(self.task, completed=min(self.total, round(self.done, 9)))
        speed = self.progress.tasks[0].speed
        if speed:
            rate = f"{speed:.2f} img/s" if speed >= 0.1 else f"{1 / speed:.1f} s/img"
            self.progress.update(self.task, rate=rate)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.progress.update(self.task, completed=self.total)
        return self.progress.__exit__(exc_type, exc, tb)


def _click_exceptions():
    """The exceptions of the click that typer runs on: its own copy from typer 0.2x on (where
    the ``click`` package may not even be installed), ``click`` itself before."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


#: how Typer words a value outside an enum's choices, after its validator's "Value error, "
_NOT_A_CHOICE = re.compile(r"(?:Value error, )?'(?P<value>.*)' is not one of (?P<choices>.*)\.$")


def usage_message(message: str) -> str:
    """Typer's message for a bad value, in our words: without the ``Value error,`` its
    validation puts before a choice's message, and with the choices closest to a typo."""
    head, sep, tail = message.partition(": ")
    found = _NOT_A_CHOICE.fullmatch(tail) if sep else None
    if found is None:
        return message
    value, choices = found["value"], re.findall(r"'([^']*)'", found["choices"])
    hint = did_you_mean(value, choices, show=repr)
    return f"{head}: {value!r} is not one of {found['choices']}{hint or '.'}"


def main() -> None:
    """Entry point: usage errors become one line on stderr and exit code 2; a closed stdout
    ends the run quietly with 141 (see ``Group``)."""
    errors = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except errors.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `smoothgrad`: the help, as is
            if exc.format_message().strip():
                print(exc.format_message(), file=sys.stderr)
        else:
            print(f"smoothgrad: error: {usage_message(exc.format_message())}", file=sys.stderr)
        code = EXIT_USAGE
    except (typer.Abort, getattr(errors, "Abort", typer.Abort)):
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except errors.ClickException as exc:
        print(f"smoothgrad: error: {exc.format_message()}", file=sys.stderr)
        code = exc.exit_code
    except BrokenPipeError:  # written outside any command; Group catches those inside
        code = stdout_closed()
    # Whatever is still buffered goes out now, not in Python's shutdown, which would report a
    # reader that has gone as "Exception ignored ... BrokenPipeError" on stderr.
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = stdout_closed()
    sys.exit(code if isinstance(code, int) else 0)
