"""What the figure commands (``compare``, ``sweep``) share: their output options, loading
the explainer with one-line usage errors, and writing the figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..report import Report
from ..settings import MapSettings
from .app import OUTPUT, RUN, usage_error

if TYPE_CHECKING:
    from ..explainer import Explainer


def _output_option(name: str, *short: str, metavar: str | None = None, help: str):
    return typer.Option(name, *short, metavar=metavar, help=help, rich_help_panel=OUTPUT)


Figure = Annotated[Path, _output_option("--output", "-o", metavar="FIG", help="The figure: "
                                        ".png, .svg or .pdf (by its extension).")]  # fmt: skip
Percentile = Annotated[float, _output_option("--percentile", metavar="P", help="Cap of each "
                                             "map's display (the paper's: 99).")]  # fmt: skip
Cmap = Annotated[str, _output_option("--cmap", metavar="NAME", help="Matplotlib colormap of "
                                     "the maps.")]  # fmt: skip
Dpi = Annotated[int, _output_option("--dpi", metavar="N", help="Pixels per inch (a map's cell "
                                    "is 1.5 in: 225 pixels at 150).")]  # fmt: skip
FigureJson = Annotated[bool, _output_option("--json", help="One JSON object on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=RUN)]


def check_figure_options(output: Path, percentile: float, cmap: str, dpi: int) -> None:
    """Refuse, with exit 2 and before any model is loaded, what no figure can be made with."""
    from ..figures import check_options

    try:
        check_options(output, percentile, cmap, dpi)
    except ValueError as exc:
        usage_error(str(exc))


def load_explainer(settings: MapSettings, device: str) -> Explainer:
    from ..explainer import Explainer
    from ..images import quiet_pillow_bomb_warnings
    from ..settings import SettingsError

    quiet_pillow_bomb_warnings()
    try:
        return Explainer.load(settings, device)
    except SettingsError as exc:
        usage_error(exc.command_line_message())


def write_figure(grid, output: Path, dpi: int, report: Report) -> bool:
    """Save the figure; a file that cannot be written is one error line (exit 1)."""
    from ..figures import save_figure

    try:
        save_figure(grid, output, dpi)
    except OSError as exc:
        report.failed(output, f"cannot write the figure ({exc.strerror or exc})")
        return False
    return True


def say(report: Report, text: str) -> None:
    """A line on stdout, flushed (a closed pipe ends the run in ``app.Group``)."""
    report.out.file.write(text + "\n")
    report.out.file.flush()
