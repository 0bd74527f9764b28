"""``smoothgrad compare IMAGE...``: one figure, a row per image (and class), a column per
method."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import did_you_mean
from ..names import json_line, shown
from ..render import DEFAULT_PERCENTILE
from ..report import Report
from ..settings import EMBEDDED, MapSettings, Method, Precision
from .app import METHOD, app, progress_bar, usage_error
from .figure_options import (
    Cmap,
    Dpi,
    Figure,
    FigureJson,
    Percentile,
    Quiet,
    check_figure_options,
    load_explainer,
    say,
    write_figure,
)
from .options import (
    BatchSize,
    Device,
    IgBaseline,
    IgSteps,
    IgTolerance,
    Labels,
    ModelName,
    Noise,
    PrecisionChoice,
    Samples,
    Seed,
    Target,
    TopK,
    Verbose,
    Weights,
)

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Column:
    """A column of the figure: a base method, plain or under SmoothGrad."""

    name: str  # as --methods takes it
    label: str  # as the figure heads it
    method: Method
    smoothed: bool


_IXG, _IG, _GB = Method.INPUT_X_GRADIENT, Method.INTEGRATED_GRADIENTS, Method.GUIDED_BACKPROP
COLUMNS = (
    Column("gradient", "Gradient", Method.GRADIENT, False),
    Column("smoothgrad", "SmoothGrad", Method.GRADIENT, True),
    Column("input-x-gradient", "Input × Gradient", _IXG, False),
    Column("smooth-input-x-gradient", "SmoothGrad of Input × Gradient", _IXG, True),
    Column("integrated-gradients", "Integrated Gradients", _IG, False),
    Column("smooth-integrated-gradients", "SmoothGrad of Integrated Gradients", _IG, True),
    Column("guided-backprop", "Guided Backprop", _GB, False),
    Column("smooth-guided-backprop", "SmoothGrad of Guided Backprop", _GB, True),
)
BY_NAME = {column.name: column for column in COLUMNS}
#: more rows than this make a figure nobody reads, and hold every map in memory
MAX_ROWS = 40
PHOTO_LABEL = "Input (as the model sees it)"


def parse_methods(text: str) -> list[Column]:
    """``--methods`` → its columns, in the order given; ``ValueError`` for an unknown name."""
    columns: list[Column] = []
    for name in (piece.strip() for piece in text.split(",")):
        if name not in BY_NAME:
            hint = did_you_mean(name, BY_NAME) or f": use {', '.join(BY_NAME)}"
            raise ValueError(f"unknown method {name!r} in --methods{hint}")
        if BY_NAME[name] not in columns:
            columns.append(BY_NAME[name])
    return columns


@app.command()
def compare(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...", help="Image files, folders, glob patterns or http(s) URLs."
        ),
    ],
    output: Figure = Path("compare.png"),
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            metavar="NAME,…",
            rich_help_panel=METHOD,
            show_default=False,
            help=f"Columns, in order (default: all): {', '.join(BY_NAME)} (smooth-X: X under "
            "SmoothGrad).",
        ),  # fmt: skip
    ] = ",".join(BY_NAME),
    model: ModelName = EMBEDDED,
    weights: Weights = None,
    labels: Labels = None,
    noise: Noise = 15.0,
    samples: Samples = 50,
    seed: Seed = 0,
    ig_steps: IgSteps = MapSettings.ig_steps,
    ig_tolerance: IgTolerance = MapSettings.ig_tolerance,
    baseline: IgBaseline = "black",
    target: Target = None,
    top_k: TopK = 1,
    percentile: Percentile = DEFAULT_PERCENTILE,
    cmap: Cmap = "gray",
    dpi: Dpi = 150,
    json_out: FigureJson = False,
    device: Device = "auto",
    precision: PrecisionChoice = Precision.AUTO,
    batch_size: BatchSize = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """One figure comparing methods: a row per image (and class), a column per method."""
    from ..settings import SettingsError

    try:
        columns = parse_methods(methods)
        settings = MapSettings(
            model=model, weights=weights, labels=labels, method=Method.GRADIENT,
            smoothing="none", noise=noise, samples=samples, seed=seed, ig_steps=ig_steps,
            ig_tolerance=ig_tolerance, baseline=baseline, precision=precision, target=target,
            top_k=top_k, batch_size=batch_size,
        )  # fmt: skip
    except SettingsError as exc:
        usage_error(exc.command_line_message())
    except ValueError as exc:
        usage_error(str(exc))
    check_figure_options(output, percentile, cmap, dpi)
    report = Report(verbose=verbose)
    try:
        code = run_compare(
            inputs, columns, settings, device, output,
            percentile=percentile, cmap=cmap, dpi=dpi, json_out=json_out, report=report,
            progress=None if quiet else progress_bar(report.err),
        )  # fmt: skip
    except KeyboardInterrupt:
        report.interrupted = True
        code = report.exit_code
    raise typer.Exit(code)


def run_compare(
    inputs: list[str], columns: list[Column], settings: MapSettings, device: str,
    output: Path, *, percentile: float, cmap: str, dpi: int, json_out: bool, report: Report,
    progress=None,
) -> int:  # fmt: skip
    """Compute every cell, write the figure, print its path (or JSON); the exit code."""
    import torch

    from ..images import discover

    images, missing = discover(inputs)
    if not images and not missing:
        usage_error("no input images given")
    explainer = load_explainer(settings, device)
    per_image = explainer.classes_per_image
    if (len(images) + len(missing)) * per_image > MAX_ROWS:
        usage_error(
            f"{len(images) + len(missing)} images × {per_image} classes make more than "
            f"{MAX_ROWS} rows: give fewer images or a smaller --top-k"
        )
    if any(column.smoothed for column in columns):
        for warning in settings.replace(smoothing="smoothgrad").warnings():
            report.warn(warning)
    explainers, refused = _column_explainers(explainer, settings, columns, report)
    for item in missing:
        report.failed(item.path, item.reason)
    good, tensors, views = _decode(explainer, images, report)
    probabilities = explainer.predict(torch.stack(tensors)) if good else None
    keep = []
    for i, image in enumerate(good):
        if torch.isfinite(probabilities[i]).all():
            keep.append(i)
        else:
            report.failed(image.path, "the model's scores are not finite (NaN or inf)")
    if not keep:
        report.err.print("no figure written: no input could be used", markup=False)
        return report.exit_code
    good, views = [good[i] for i in keep], [views[i] for i in keep]
    x, probabilities = torch.stack(tensors)[keep], probabilities[keep]
    classes = explainer.classes(probabilities)
    if explainers:
        _plan_chunks(explainers, len(good), report)
    maps = {}
    # The bar counts images: each column's rows make 1 / columns of each image.
    bar = progress(len(good)) if progress and explainers else None
    with bar if bar is not None else contextlib.nullcontext():
        for column, each in explainers.items():
            per_row = each.rows_per_image * len(explainers)

            def advance(rows: float, per_row=per_row) -> None:
                if bar is not None:
                    bar.advance(rows / per_row)

            maps[column], convergence = each.attributions(x, classes, progress=advance)
            _warn_unconverged(report, column, good, classes, convergence, each)
    grid, rows = _grid(
        good, views, classes, probabilities, columns, maps, refused, explainer, settings,
        percentile, cmap,
    )  # fmt: skip
    if not write_figure(grid, output, dpi, report):
        return report.exit_code
    if json_out:
        say(report, json_line({
            "figure": str(output),
            "columns": [
                {"name": c.name, "label": c.label, "available": c not in refused,
                 **({"reason": refused[c]} if c in refused else {})}
                for c in columns
            ],
            "rows": rows,
            "failed": [{"input": path, "error": reason} for path, reason in report.failures],
            "parameters": _parameters(settings, columns, percentile),
        }))  # fmt: skip
    else:
        say(report, shown(output))
    failed = f", {len(report.failures)} failed" if report.failures else ""
    report.err.print(
        f"{_count(len(good), 'image')} compared in {_count(len(rows), 'row')} × "
        f"{_count(len(columns), 'method')}{failed}",
        markup=False,
    )
    return report.exit_code


def _plan_chunks(explainers: dict, images: int, report: Report) -> None:
    """One chunk size for every column, chosen as ``explain`` chooses one (the cached size,
    else a timed probe when the whole figure's passes pay for it): the columns share the
    model, device, input size and precision that the choice depends on."""
    first, *others = explainers.values()
    passes = images * sum(each.passes_per_image for each in explainers.values())
    first.plan_chunks(
        compile=False, say=lambda message: report.err.print(message, markup=False), passes=passes
    )
    for each in others:
        each.smoother.batch_size = first.chunk_size


def _column_explainers(explainer, settings, columns, report):
    """Each column's explainer on the one loaded model, and the columns the model refuses
    with the reason: guided backprop on a SiLU or GELU network is a column of labelled empty
    cells, not an error (``Explainer`` refuses it as a ``SettingsError`` on ``method``)."""
    from ..settings import SettingsError

    explainers, refused = {}, {}
    for column in columns:
        smoothing = "smoothgrad" if column.smoothed else "none"
        try:
            explainers[column] = explainer.with_settings(
                settings.replace(method=column.method, smoothing=smoothing)
            )
        except SettingsError as exc:
            if exc.key != "method":  # a bad --baseline file, say: the user's to fix
                usage_error(exc.command_line_message())
            refused[column] = exc.message("--method")
            report.warn(f"{column.name}: not available: {refused[column]}")
    return explainers, refused


def _decode(explainer, images, report):
    """The images that load, their model inputs and the part of each the model sees."""
    from .. import figures
    from ..images import ImageError, load_image

    good, tensors, views = [], [], []
    _, height, width = explainer.prepared.input_shape
    for image in images:
        try:
            photo = load_image(image)
            tensors.append(explainer.transform(photo))
        except ImageError as exc:
            report.failed(image.path, str(exc))
            continue
        good.append(image)
        box = explainer.loaded.crop_box(*photo.size)
        views.append(figures.model_view(photo, box, (height, width)))
    return good, tensors, views


def _parameters(settings: MapSettings, columns: list[Column], percentile: float) -> dict:
    """What decides the maps, for the JSON: each column has its own method and smoothing,
    so those are not one parameter; integrated gradients' settings only with its columns."""
    ig = any(column.method == Method.INTEGRATED_GRADIENTS for column in columns)
    method = Method.INTEGRATED_GRADIENTS if ig else Method.GRADIENT
    values = settings.replace(method=method).parameters()
    del values["method"], values["smoothing"]
    return {**values, "percentile": percentile}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _warn_unconverged(report, column, images, classes, convergence, each) -> None:
    """Integrated-gradients maps left short of --ig-tolerance are said, as explain says them."""
    if convergence is None:
        return
    from ..report import IgCompleteness, MapResult, unconverged_message

    for image, cs, results in zip(images, classes, convergence, strict=True):
        for c, result in zip(cs, results, strict=True):
            name = each.categories[c]
            message = unconverged_message(
                str(image.path), MapResult(0, c, name, 0.0, {}, ig=IgCompleteness.of(result))
            )
            if message is not None:
                report.warn(f"{column.name}: {message}")


def _grid(images, views, classes, probabilities, columns, maps, refused, explainer, settings,
          percentile, cmap):  # fmt: skip
    """The figure's grid, and each row for the JSON."""
    import numpy as np

    from .. import figures, render

    cells, titles, rows = [], [], []
    for i, image in enumerate(images):
        p = probabilities[i].numpy()
        for k, c in enumerate(classes[i]):
            rank = int((p > p[c]).sum()) + 1
            name = explainer.categories[c]
            title = f"{shown(image.path)} — {figures.class_title(name, c, float(p[c]))}"
            titles.append(title + (f" (rank {rank})" if rank > 1 else ""))
            rows.append({"input": str(image.path), "class_index": int(c), "class_name": name,
                         "probability": float(p[c]), "rank": rank})  # fmt: skip
            row = [figures.Cell(views[i])]
            for column in columns:
                if column in refused:
                    row.append(figures.Cell(note=f"not available: {refused[column]}"))
                    continue
                attribution = maps[column][i, k]
                if not np.isfinite(attribution).all():
                    row.append(figures.Cell(note="no map: NaN or inf in the gradient"))
                    continue
                row.append(figures.Cell(render.magnitude_map(attribution, percentile)))
            cells.append(row)
    grid = figures.Grid(
        cells,
        [PHOTO_LABEL, *(column.label for column in columns)],
        caption=_caption(columns, explainer, settings, percentile),
        title=f"Sensitivity maps of {explainer.loaded.name}",
        row_titles=titles,
        colorbar_label=f"map display: 0 = the map's smallest value, 1 = its {percentile:g}th "
        "percentile and above",
        cmap=cmap,
    )
    return grid, rows


def _caption(columns, explainer, settings: MapSettings, percentile: float) -> str:
    from .. import figures

    loaded = explainer.loaded
    parts = [f"Model: {loaded.name}, weights {loaded.weights}.", figures.display_note(percentile)]
    if any(column.smoothed for column in columns):
        parts.append(
            f"SmoothGrad: the mean over n = {settings.samples} noisy copies x + N(0, σ²), "
            f"σ = {settings.noise:g} % of each input's range (max − min), seed {settings.seed}; "
            "the other columns are the method on the clean input."
        )
    if any(column.method == Method.INTEGRATED_GRADIENTS for column in columns):
        refine = (
            f"refined up to {settings.ig_steps} Gauss–Legendre nodes until complete within "
            f"{settings.ig_tolerance:.0%}"
            if settings.ig_tolerance
            else f"{settings.ig_steps} Gauss–Legendre nodes"
        )
        parts.append(f"Integrated gradients: from a {settings.baseline} baseline, {refine}.")
    target = "--target" if settings.target is not None else f"top-{settings.top_k}"
    parts.append(
        f"Each row: the class explained ({target}) and its softmax probability; the maps "
        "are of its score before the softmax."
    )
    return " ".join(parts)
