"""Grids of maps as one figure, for ``compare`` and ``sweep``: titles, column labels, one
colour bar, a caption, written as PNG, SVG or PDF by the output's extension.

Every length is fixed in inches and rounded to whole pixels at the figure's DPI, and the
axes are placed by hand rather than by ``tight_layout``: a figure's size in pixels is then a
function of its rows, columns and DPI alone (``Layout``), the same for every image and
model, which is what lets a test (and a script) predict it, and keeps a cell of a 224-pixel
map at about its own resolution (1.5 in at 150 DPI is 225 pixels).
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_write

#: what ``-o`` may end in, and the format matplotlib is asked for
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
DEFAULT_DPI = 150


def figure_format(path: Path) -> str:
    """``png``, ``svg`` or ``pdf`` from ``path``'s extension; ``ValueError`` otherwise."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"{path.name}: unknown figure format {suffix or '(no extension)'!r}: "
            f"end the file name in {', '.join(FORMATS)}"
        )
    return FORMATS[suffix]


def check_options(path: Path, percentile: float, cmap: str, dpi: int) -> None:
    """``ValueError`` for what no figure can be made with, before any map is computed."""
    from . import render

    figure_format(path)
    render.check_percentile(percentile)
    render.check_cmap(cmap)
    if not 20 <= dpi <= 1200:
        raise ValueError(f"--dpi must be between 20 and 1200, got {dpi}")


@dataclass(frozen=True)
class Geometry:
    """The figure's lengths, in inches (see the module's doc)."""

    cell: float = 1.5  # a map's side
    gap: float = 0.06  # between two columns
    row_gap: float = 0.1  # between two rows
    margin: float = 0.12  # around everything
    row_label: float = 1.25  # the column of labels left of the rows, when there is one
    title: float = 0.34
    column_label: float = 0.44  # two lines of a column's name
    row_title: float = 0.22  # the line above a row, when rows have one
    cell_label: float = 0.2  # the line under each cell, when cells have one
    colorbar: float = 0.62  # the bar, its ticks and its label
    caption_line: float = 0.15


GEOMETRY = Geometry()

# Font sizes in points; the caption's width of a character is estimated as 0.6 em to wrap
# it into lines of known count before anything is drawn (the height depends on it).
TITLE_PT, LABEL_PT, ROW_TITLE_PT, CELL_LABEL_PT, NOTE_PT, CAPTION_PT = 10, 8, 8, 7.5, 6.5, 7.5
_EM_WIDTH = 0.6


@dataclass
class Cell:
    """One place in the grid: a map in [0, 1] ``(H, W)`` drawn with the grid's colormap, a
    photo ``(H, W, 3)`` uint8 drawn as it is, or nothing, with ``note`` said in its place."""

    image: np.ndarray | None = None
    note: str | None = None
    label: str | None = None  # a short line under the cell


@dataclass
class Grid:
    cells: list[list[Cell]]  # rows of cells, every row as long as ``column_labels``
    column_labels: list[str]
    caption: str = ""
    title: str | None = None
    row_labels: list[str] | None = None  # beside each row, at the left
    row_titles: list[str] | None = None  # above each row, across it
    colorbar_label: str = "map value"
    cmap: str = "gray"

    @property
    def rows(self) -> int:
        return len(self.cells)

    @property
    def columns(self) -> int:
        return len(self.column_labels)

    @property
    def has_cell_labels(self) -> bool:
        return any(cell.label for row in self.cells for cell in row)


@dataclass(frozen=True)
class Layout:
    """Where everything goes, in whole pixels from the figure's top left corner."""

    grid: Grid
    dpi: int = DEFAULT_DPI
    geometry: Geometry = field(default_factory=Geometry)

    def px(self, inches: float) -> int:
        return round(inches * self.dpi)

    @property
    def left(self) -> int:
        g = self.geometry
        return self.px(g.margin) + (self.px(g.row_label) if self.grid.row_labels else 0)

    @property
    def grid_width(self) -> int:
        g, cols = self.geometry, self.grid.columns
        return cols * self.px(g.cell) + (cols - 1) * self.px(g.gap)

    @property
    def width(self) -> int:
        return self.left + self.grid_width + self.px(self.geometry.margin)

    @property
    def top(self) -> int:
        """Where the first row begins: below the margin, the title and the column labels."""
        g = self.geometry
        title = self.px(g.title) if self.grid.title else 0
        return self.px(g.margin) + title + self.px(g.column_label)

    @property
    def row_height(self) -> int:
        g = self.geometry
        title = self.px(g.row_title) if self.grid.row_titles else 0
        label = self.px(g.cell_label) if self.grid.has_cell_labels else 0
        return title + self.px(g.cell) + label

    def row_top(self, row: int) -> int:
        return self.top + row * (self.row_height + self.px(self.geometry.row_gap))

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) of a cell's map."""
        g = self.geometry
        title = self.px(g.row_title) if self.grid.row_titles else 0
        left = self.left + col * (self.px(g.cell) + self.px(g.gap))
        return left, self.row_top(row) + title, self.px(g.cell), self.px(g.cell)

    @property
    def grid_bottom(self) -> int:
        rows = self.grid.rows
        return self.top + rows * self.row_height + (rows - 1) * self.px(self.geometry.row_gap)

    @property
    def caption_lines(self) -> list[str]:
        chars = max(20, int(self.width / self.dpi / (CAPTION_PT / 72 * _EM_WIDTH)))
        lines: list[str] = []
        for paragraph in self.grid.caption.split("\n"):
            lines.extend(textwrap.wrap(paragraph, chars) or [""])
        return lines if self.grid.caption else []

    @property
    def height(self) -> int:
        g = self.geometry
        caption = len(self.caption_lines) * self.px(g.caption_line)
        return self.grid_bottom + self.px(g.colorbar) + caption + self.px(g.margin)


def _fraction(layout: Layout, left: int, top: int, width: int, height: int) -> list[float]:
    """A pixel box from the top left → matplotlib's figure fractions from the bottom left."""
    return [
        left / layout.width,
        1 - (top + height) / layout.height,
        width / layout.width,
        height / layout.height,
    ]


def _chars(inches: float, points: float) -> int:
    return max(8, int(inches / (points / 72 * _EM_WIDTH)))


def _fit(text: str, inches: float, points: float) -> str:
    """One line that fits ``inches``: cut with an ellipsis when it would not."""
    room = _chars(inches, points)
    return text if len(text) <= room else text[: room - 1].rstrip() + "…"


def draw(grid: Grid, dpi: int = DEFAULT_DPI):
    """The grid as a matplotlib ``Figure`` of exactly ``Layout(grid, dpi)``'s pixels."""
    # Figure itself, not pyplot: no global state, no GUI backend, nothing left open.
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if any(len(row) != grid.columns for row in grid.cells) or not grid.cells:
        raise ValueError("every row of a grid needs one cell per column label")
    layout = Layout(grid, dpi)
    g = layout.geometry
    # Agg makes int(width × DPI) pixels: a thousandth of a pixel more keeps the float
    # product from landing just under the whole number and losing a pixel.
    fig = Figure(figsize=((layout.width + 1e-3) / dpi, (layout.height + 1e-3) / dpi), dpi=dpi)
    fig.patch.set_facecolor("white")

    def text(x_px: float, y_px: float, s: str, **kwargs):
        fig.text(x_px / layout.width, 1 - y_px / layout.height, s, **kwargs)

    y = layout.px(g.margin)
    if grid.title:
        wide = (layout.width - 2 * layout.px(g.margin)) / dpi
        text(
            layout.width / 2,
            y + layout.px(g.title) / 2,
            _fit(grid.title, wide, TITLE_PT),
            ha="center",
            va="center",
            fontsize=TITLE_PT,
            weight="bold",
        )
        y += layout.px(g.title)
    cell_px = layout.px(g.cell)
    for col, label in enumerate(grid.column_labels):
        left = layout.cell_box(0, col)[0]
        wrapped = "\n".join(textwrap.wrap(label, _chars(g.cell, LABEL_PT))[:2])
        text(
            left + cell_px / 2,
            y + layout.px(g.column_label) - 4,
            wrapped,
            ha="center",
            va="bottom",
            fontsize=LABEL_PT,
            weight="bold",
            linespacing=1.1,
        )
    cmap = colormaps[grid.cmap]
    for row, cells in enumerate(grid.cells):
        top = layout.row_top(row)
        if grid.row_titles:
            text(
                layout.left,
                top + layout.px(g.row_title) / 2,
                _fit(grid.row_titles[row], layout.grid_width / dpi, ROW_TITLE_PT),
                ha="left",
                va="center",
                fontsize=ROW_TITLE_PT,
            )
        if grid.row_labels:
            box = layout.cell_box(row, 0)
            text(
                layout.left - 8,
                box[1] + cell_px / 2,
                grid.row_labels[row],
                ha="right",
                va="center",
                fontsize=LABEL_PT,
                linespacing=1.3,
            )
        for col, cell in enumerate(cells):
            box = layout.cell_box(row, col)
            ax = fig.add_axes(_fraction(layout, *box))
            _draw_cell(ax, cell, cmap, g.cell)
            if cell.label:
                text(
                    box[0] + cell_px / 2,
                    box[1] + cell_px + layout.px(g.cell_label) / 2,
                    _fit(cell.label, g.cell, CELL_LABEL_PT),
                    ha="center",
                    va="center",
                    fontsize=CELL_LABEL_PT,
                )
    # The colour bar: one for the whole figure, since every map is on the same [0, 1] scale.
    bar_width = min(layout.grid_width, layout.px(3.2))
    bar_left = layout.left + (layout.grid_width - bar_width) // 2
    bar_top = layout.grid_bottom + layout.px(0.14)
    bar = fig.add_axes(_fraction(layout, bar_left, bar_top, bar_width, layout.px(0.11)))
    colorbar = fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap), cax=bar, orientation="horizontal"
    )
    colorbar.set_ticks([0, 0.25, 0.5, 0.75, 1])
    colorbar.ax.tick_params(labelsize=CELL_LABEL_PT, length=2, pad=1.5)
    colorbar.outline.set_linewidth(0.5)
    text(
        layout.left + layout.grid_width / 2,
        bar_top + layout.px(0.11) + layout.px(0.2),
        grid.colorbar_label,
        ha="center",
        va="top",
        fontsize=CELL_LABEL_PT,
    )
    y = layout.grid_bottom + layout.px(g.colorbar)
    for line in layout.caption_lines:
        text(layout.px(g.margin), y, line, ha="left", va="top", fontsize=CAPTION_PT, color="0.15")
        y += layout.px(g.caption_line)
    return fig


def _draw_cell(ax, cell: Cell, cmap, side_inches: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.4)
        spine.set_color("0.6")
    if cell.image is None:
        ax.set_facecolor("0.93")
        if cell.note:
            note = "\n".join(textwrap.wrap(cell.note, _chars(side_inches * 0.9, NOTE_PT))[:9])
            ax.text(
                0.5,
                0.5,
                note,
                ha="center",
                va="center",
                fontsize=NOTE_PT,
                color="0.25",
                transform=ax.transAxes,
                linespacing=1.2,
            )
        return
    image = np.asarray(cell.image)
    if image.ndim == 2:
        # "antialiased": a 224-pixel map drawn at 225 pixels without nearest-neighbour seams;
        # vector formats embed the map at its own pixels whatever is asked here.
        ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="antialiased")
    else:
        ax.imshow(image, interpolation="antialiased")
    ax.set_aspect("auto")  # the cell's square, whatever the input's aspect ratio


def figure_bytes(grid: Grid, format: str, dpi: int = DEFAULT_DPI) -> bytes:
    fig = draw(grid, dpi)
    buffer = io.BytesIO()
    # No dates in the metadata: the same maps make the same file.
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
    fig.savefig(buffer, format=format, dpi=dpi, metadata=metadata[format])
    return buffer.getvalue()


def save_figure(grid: Grid, path: Path, dpi: int = DEFAULT_DPI) -> None:
    """Write the figure to ``path`` in the format its extension names, atomically (a run
    stopped midway leaves the old file or none, never half a figure)."""
    atomic_write(path, figure_bytes(grid, figure_format(path), dpi))


# --- what compare and sweep both put in their figures ----------------------------------------


def model_view(photo, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The part of ``photo`` the model saw (``box``, from ``LoadedModel.crop_box``) at the
    maps' ``size`` (height, width), as RGB uint8: the photo cell lines up with the maps."""
    from PIL import Image

    height, width = size
    view = photo.convert("RGB").resize((width, height), Image.Resampling.BICUBIC, box=box)
    return np.asarray(view, dtype=np.uint8)


def class_title(name: str, index: int, probability: float) -> str:
    return f"{name} ({index}), p = {probability:.3f}"


def display_note(percentile: float) -> str:
    """The one normalisation of every map, for captions."""
    return (
        f"Every map is shown as the paper shows it, each on its own: |attribution| summed over "
        f"the colour channels, from its smallest value (0) to its {percentile:g}th percentile "
        f"(1, and everything above), so maps compare by where they are bright, not by scale."
    )


__all__ = [
    "DEFAULT_DPI", "FORMATS", "GEOMETRY", "Cell", "Geometry", "Grid", "Layout", "check_options",
    "class_title", "display_note", "draw", "figure_bytes", "figure_format", "model_view",
    "save_figure",
]  # fmt: skip
