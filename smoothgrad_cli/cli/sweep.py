"""``smoothgrad sweep IMAGE``: the paper's grid over noise level × sample count, with how far
the map has converged (``smoothgrad_cli.sweep`` computes it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ..names import json_line, shown
from ..render import DEFAULT_PERCENTILE
from ..report import Report
from ..settings import EMBEDDED, MapSettings, Method, Precision, Smoothing
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
    Labels,
    MethodChoice,
    ModelName,
    PrecisionChoice,
    Seed,
    SmoothingChoice,
    Target,
    Verbose,
    Weights,
)

#: the sweep's own defaults, the paper's: its Fig. 3 noise levels, and sample counts to 100
NOISE_LEVELS = "0,10,20,30,50"
SAMPLE_COUNTS = "1,10,50,100"


@app.command()
def sweep(
    image: Annotated[
        str, typer.Argument(metavar="IMAGE", help="The image: a file or an http(s) URL.")
    ],
    output: Figure = Path("sweep.png"),
    noise: Annotated[
        str,
        typer.Option(
            "--noise",
            metavar="PCT,…",
            rich_help_panel=METHOD,
            help="Noise levels σ, in percent of (max − min) of the model-input tensor: the rows.",
        ),
    ] = NOISE_LEVELS,
    samples: Annotated[
        str,
        typer.Option(
            "--samples",
            "-n",
            metavar="N,…",
            rich_help_panel=METHOD,
            help="Sample counts: the columns. All come from one run of the largest per level.",
        ),
    ] = SAMPLE_COUNTS,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            metavar="RHO",
            rich_help_panel=METHOD,
            help="Rank correlation from which on the map counts as no longer changing.",
        ),
    ] = 0.95,
    pool: Annotated[
        int,
        typer.Option(
            "--pool",
            metavar="PX",
            rich_help_panel=METHOD,
            help="Rank correlations on the display averaged over PX×PX pixel blocks: where "
            "the map is bright, not its speckle (1: pixel by pixel).",
        ),
    ] = 8,
    method: MethodChoice = Method.GRADIENT,
    smoothing: SmoothingChoice = Smoothing.SMOOTHGRAD,
    model: ModelName = EMBEDDED,
    weights: Weights = None,
    labels: Labels = None,
    seed: Seed = 0,
    ig_steps: Annotated[
        int,
        typer.Option(
            "--ig-steps",
            metavar="N",
            rich_help_panel=METHOD,
            help="Integrated gradients: Gauss–Legendre nodes per noisy copy, fixed (the maps "
            "of explain --ig-tolerance 0).",
        ),
    ] = 32,
    baseline: IgBaseline = "black",
    target: Target = None,
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
    """The paper's noise level × sample count grid for one image, and where it converges.

    Each count's map is a prefix of one run per noise level; split-half ρ shows convergence.
    """
    from ..settings import SettingsError

    if smoothing == Smoothing.NONE:
        usage_error("--smoothing none takes no samples, so there is nothing to sweep")
    try:
        levels = parse_list(noise, float, "--noise")
        counts = parse_list(samples, int, "--samples")
        settings = MapSettings(
            model=model, weights=weights, labels=labels, method=method, smoothing=smoothing,
            noise=levels[-1], samples=counts[-1], seed=seed, ig_steps=ig_steps,
            ig_tolerance=0.0, baseline=baseline, precision=precision, batch_size=batch_size,
            target=target,
        )  # fmt: skip
        for level in levels:
            settings.replace(noise=level)
        for count in counts:
            settings.replace(samples=count)
    except SettingsError as exc:
        usage_error(exc.command_line_message())
    except ValueError as exc:
        usage_error(str(exc))
    if not 0 < threshold <= 1:
        usage_error(f"--threshold must be a rank correlation in (0, 1], got {threshold}")
    if pool < 1:
        usage_error(f"--pool must be >= 1 (pixels), got {pool}")
    check_figure_options(output, percentile, cmap, dpi)
    report = Report(verbose=verbose)
    try:
        code = run_sweep_command(
            image, settings, levels, counts, threshold, device, output,
            percentile=percentile, pool=pool, cmap=cmap, dpi=dpi, json_out=json_out, report=report,
            progress=None if quiet else progress_bar(report.err),
        )  # fmt: skip
    except KeyboardInterrupt:
        report.interrupted = True
        code = report.exit_code
    raise typer.Exit(code)


def parse_list(text: str, kind: type, option: str) -> list:
    """``"0,10,20"`` → sorted distinct values; ``ValueError`` worded with ``option``."""
    values = set()
    for piece in text.split(","):
        try:
            value = kind(piece.strip())
        except ValueError:
            noun = "whole numbers" if kind is int else "numbers"
            raise ValueError(
                f"{option} takes a comma-separated list of {noun}, got {piece.strip()!r} in "
                f"{text!r}"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"{option}: {piece.strip()!r} is not a finite number")
        values.add(value)
    return sorted(values)


def run_sweep_command(
    image: str, settings: MapSettings, levels: list[float], counts: list[int],
    threshold: float, device: str, output: Path, *, percentile: float, pool: int, cmap: str,
    dpi: int,
    json_out: bool, report: Report, progress=None,
) -> int:  # fmt: skip
    import contextlib

    import torch

    from ..images import ImageError, load_image
    from ..sweep import Display, rows_of_work, run_sweep

    display = Display(percentile, pool)
    explainer = load_explainer(settings, device)
    for level in levels:
        for warning in settings.replace(noise=level).warnings():
            report.warn(warning)
    try:
        photo = load_image(image)
    except ImageError as exc:
        report.failed(image, str(exc))
        return report.exit_code
    x = explainer.transform(photo)
    probabilities = explainer.predict(x[None])
    if not torch.isfinite(probabilities).all():
        report.failed(image, "the model's scores are not finite (NaN or inf)")
        return report.exit_code
    target = explainer.classes(probabilities)[0][0]
    total = rows_of_work(levels, counts)
    explainer.plan_chunks(  # as explain chooses it: cached, else timed if the sweep pays for it
        compile=False,
        say=lambda message: report.err.print(message, markup=False),
        passes=total * explainer.smoother.base.passes_per_input,
    )
    bar = progress(1) if progress is not None else None
    with bar if bar is not None else contextlib.nullcontext():
        result = run_sweep(
            explainer, x, target, levels, counts, threshold=threshold, display=display,
            smoothing=settings.smoothing,
            progress=(lambda rows: bar.advance(rows / total)) if bar is not None else None,
        )  # fmt: skip
    p = float(probabilities[0, target])
    name = explainer.categories[target]
    grid = _grid(image, name, target, p, result, settings, cmap)
    if not write_figure(grid, output, dpi, report):
        return report.exit_code
    if json_out:
        say(report, json_line({
            "input": image, "figure": str(output), "class_index": int(target),
            "class_name": name, "probability": p, "method": settings.method,
            "model": settings.model, "seed": settings.seed, "percentile": display.percentile,
            **result.to_json(),
        }))  # fmt: skip
    else:
        _print_table(report, result)
        samples, noise = _summary(result)
        say(report, f"samples: {samples}")
        say(report, f"noise: {noise}")
        say(report, f"figure: {shown(output)}")
    return report.exit_code


def _rho(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _summary(result) -> tuple[str, str]:
    """The two convergence numbers in words (``sweep``'s doc defines them)."""
    t, largest = result.threshold, result.samples[-1]
    if result.stable_samples is not None:
        samples = (
            f"the map stops changing from n = {result.stable_samples} (split-half rho >= "
            f"{t:g} from there on, at every noise level above 0 %)"
        )
    else:
        samples = (
            f"the map still changes at n = {largest} (split-half rho < {t:g} at some noise "
            "level): sweep more samples"
        )
    if len(result.levels) < 2:
        noise = "one level swept, nothing to compare"
    elif result.stable_noise is not None:
        noise = (
            f"the map stops changing from {result.stable_noise:g} % on (rho >= {t:g} between "
            f"each level and the next at n = {largest})"
        )
    else:
        noise = (
            f"the map still changes between the two largest levels (rho < {t:g} at n = {largest})"
        )
    return samples, noise


def _print_table(report: Report, result) -> None:
    from rich.table import Table

    from ..report import print_table

    table = Table(show_edge=False, pad_edge=False)
    table.add_column("noise", justify="right")
    for n in result.samples:
        table.add_column(f"n={n}", justify="right")
    table.add_column("stable from", justify="right")
    table.add_column("rho to next noise", justify="right")
    for level in result.levels:
        table.add_row(
            f"{level.noise:g}%",
            *(_rho(rho) for rho in level.split_half),
            "—" if level.stable_samples is None else f"n={level.stable_samples}",
            _rho(level.noise_change) if level is not result.levels[-1] else "",
        )
    pool = result.display.pool
    blocks = f", in {pool}×{pool}-pixel blocks" if pool > 1 else ""
    say(report, f"split-half rank correlation (rho) of the map{blocks}, by noise and samples:")
    print_table(report.out, table)


#: the paper's names for the smoothings, and what each takes over the samples
_SMOOTHING_NAMES = {
    "smoothgrad": "SmoothGrad",
    "smoothgrad-sq": "SmoothGrad²",
    "vargrad": "VarGrad",
}
_OVER = {"smoothgrad": "mean", "smoothgrad-sq": "mean of squares", "vargrad": "variance"}


def _grid(image, name, target, p, result, settings: MapSettings, cmap):
    from .. import figures, render

    percentile, pool, largest = result.display.percentile, result.display.pool, result.samples[-1]
    cells, row_labels = [], []
    for i, level in enumerate(result.levels):
        cells.append([
            figures.Cell(render.magnitude_map(m, percentile),
                         label=f"split-half ρ = {rho:.3f}" if rho is not None else "")
            for m, rho in zip(level.maps, level.split_half, strict=True)
        ])  # fmt: skip
        at = level.stable_samples
        lines = [f"noise {level.noise:g} %", f"stable from n={at}" if at else "not yet stable"]
        if i + 1 < len(result.levels):
            lines.append(f"ρ to {result.levels[i + 1].noise:g} %: {_rho(level.noise_change)}")
        row_labels.append("\n".join(lines))
    method = _SMOOTHING_NAMES[settings.smoothing]
    if settings.method != Method.GRADIENT:
        method = f"{method}, {settings.method}"
    title = (
        f"{shown(image)} — {figures.class_title(name, target, p)} · {method}, seed {settings.seed}"
    )
    blocks = f"in {pool}×{pool}-pixel blocks of this display" if pool > 1 else "in this display"
    samples, noise = _summary(result)
    caption = " ".join([
        figures.display_note(percentile),
        f"A cell: the {_OVER[settings.smoothing]} of the first n of one run of {largest} noisy "
        "copies at its noise "
        "level (σ in percent of the input's range). Split-half ρ: Spearman's rank correlation, "
        f"{blocks}, between the maps of the even- and of the odd-numbered of the n samples. "
        f"Stable from n: from there on every swept n has ρ ≥ {result.threshold:g}. ρ to the next "
        f"level: between the row's map and the next row's at n = {largest}.",
        f"Samples: {samples}. Noise: {noise}.".replace("rho", "ρ").replace(">=", "≥"),
    ])  # fmt: skip
    return figures.Grid(
        cells,
        [f"n = {n}" for n in result.samples],
        caption=caption,
        title=title,
        row_labels=row_labels,
        colorbar_label=f"map display: 0 = the map's smallest value, 1 = its {percentile:g}th "
        "percentile and above",
        cmap=cmap,
    )
