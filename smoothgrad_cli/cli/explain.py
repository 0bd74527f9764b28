"""``smoothgrad explain INPUTS``: maps for images, files or whole folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..images import DEFAULT_MAX_PIXELS
from ..render import DEFAULT_PERCENTILE, Sign
from ..report import Report
from ..settings import EMBEDDED, MapSettings, Method, Precision, Smoothing
from .app import OUTPUT, RUN, app, progress_bar, usage_error
from .options import (
    BatchSize,
    Device,
    IgBaseline,
    IgSteps,
    IgTolerance,
    JsonLines,
    Labels,
    MethodChoice,
    ModelName,
    Noise,
    PrecisionChoice,
    Samples,
    Seed,
    SmoothingChoice,
    Target,
    TopK,
    Verbose,
    Weights,
)


def _flag(name: str, help: str, panel: str = OUTPUT, *short: str, metavar: str | None = None):
    return typer.Option(name, *short, metavar=metavar, help=help, rich_help_panel=panel)


@app.command()
def explain(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="INPUTS...",
            help="Image files, folders (searched recursively), glob patterns and http(s) URLs "
            "(or none, with --files-from).",
        ),
    ] = None,
    output: Annotated[
        Path, _flag("--output", "Folder for the maps.", OUTPUT, "-o", metavar="DIR")
    ] = Path("smoothgrad_out"),
    model: ModelName = EMBEDDED,
    weights: Weights = None,
    labels: Labels = None,
    method: MethodChoice = Method.GRADIENT,
    smoothing: SmoothingChoice = Smoothing.SMOOTHGRAD,
    noise: Noise = 15.0,
    samples: Samples = 50,
    seed: Seed = 0,
    ig_steps: IgSteps = MapSettings.ig_steps,
    ig_tolerance: IgTolerance = MapSettings.ig_tolerance,
    baseline: IgBaseline = "black",
    target: Target = None,
    top_k: TopK = 1,
    percentile: Annotated[
        float, _flag("--percentile", "Cap the display at this percentile.", metavar="P")
    ] = DEFAULT_PERCENTILE,
    cmap: Annotated[
        str | None,
        _flag("--cmap", "Matplotlib colormap for the map (default: grayscale).", metavar="NAME"),
    ] = None,
    overlay: Annotated[
        bool, _flag("--overlay", "Also write the map blended on the photo, at its size.")
    ] = False,
    overlay_blur: Annotated[
        float | None,
        _flag(
            "--overlay-blur",
            "Gaussian blur (σ, photo pixels) of the map as the overlay shows it, stated in its "
            "legend; the map and --save-raw are never blurred (default: 2% of the part of the "
            "photo the model saw; 0: none).",
            metavar="PX",
        ),
    ] = None,
    no_overlay_legend: Annotated[
        bool,
        _flag("--no-overlay-legend", "No legend (colour bar, scale, blur) on the overlay."),
    ] = False,
    sign: Annotated[
        Sign,
        _flag(
            "--sign",
            "What the map shows: |attribution| summed over channels (the paper's), or the "
            "channels summed with their sign: its positive part, negative part, or all of it "
            "around zero in a diverging colormap.",
        ),
    ] = Sign.ABSOLUTE,
    diverging: Annotated[
        bool, _flag("--diverging", "Signed map: zero at the centre of a diverging colormap.")
    ] = False,
    save_raw: Annotated[
        bool, _flag("--save-raw", "Also save the float32 attribution (C×H×W) as .npy.")
    ] = False,
    json_lines: JsonLines = False,
    device: Device = "auto",
    precision: PrecisionChoice = Precision.AUTO,
    batch_size: BatchSize = None,
    compile_model: Annotated[
        bool,
        _flag(
            "--compile",
            "torch.compile the model first (says how long it took; kernels cached in "
            "the cache folder): worth it for folders on GPUs, not for a few images.",
            RUN,
        ),
    ] = False,
    skip_existing: Annotated[
        bool, _flag("--skip-existing", "Skip images whose outputs all exist (resume).", RUN)
    ] = False,
    fail_fast: Annotated[
        bool, _flag("--fail-fast", "Stop at the first failed input.", RUN)
    ] = False,
    max_pixels: Annotated[
        int,
        _flag(
            "--max-pixels",
            "Refuse images with more pixels (decompression bombs).",
            RUN,
            metavar="N",
        ),
    ] = DEFAULT_MAX_PIXELS,
    pattern: Annotated[
        list[str] | None,
        _flag(
            "--pattern",
            "File-name glob(s) to take from folders (default: image extensions).",
            RUN,
            metavar="GLOB",
        ),
    ] = None,
    workers: Annotated[
        int, _flag("--workers", "Threads that decode and write beside the model.", RUN, metavar="N")
    ] = 4,
    files_from: Annotated[
        str | None,
        _flag(
            "--files-from",
            "Also explain the inputs listed in FILE, one per line (- reads standard input).",
            RUN,
            metavar="FILE",
        ),
    ] = None,
    null: Annotated[
        bool, _flag("--null", "--files-from names are NUL-separated (find -print0).", RUN, "-0")
    ] = False,
    shard: Annotated[
        str | None,
        _flag(
            "--shard",
            "Explain only shard I of N of the images (job arrays; the union of the N shards "
            "is the whole run), or auto: from SLURM_ARRAY_TASK_ID or RANK/WORLD_SIZE.",
            RUN,
            metavar="I/N|auto",
        ),
    ] = None,
    quiet: Annotated[bool, _flag("--quiet", "No progress bar.", RUN, "-q")] = False,
    html_report: Annotated[
        bool,
        _flag(
            "--report",
            "At the end, write DIR/index.html: a page to browse the output folder's maps "
            "(as `smoothgrad report DIR`).",
        ),
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Write SmoothGrad maps for images, files or whole folders."""
    from ..settings import SettingsError

    try:  # no torch needed to refuse a bad setting: it is said at once
        settings = MapSettings(
            model=model,
            weights=weights,
            labels=labels,
            method=method,
            smoothing=smoothing,
            noise=noise,
            samples=samples,
            seed=seed,
            ig_steps=ig_steps,
            ig_tolerance=ig_tolerance,
            baseline=baseline,
            precision=precision,
            batch_size=batch_size,
            target=target,
            top_k=top_k,
        )
    except SettingsError as exc:
        usage_error(exc.command_line_message())
    report = Report(json_lines=json_lines, verbose=verbose)
    try:
        # torch is imported here, not at the top, so that --help and --version answer at once.
        from ..explain import ExplainOptions, UsageError, run_explain

        options = ExplainOptions(
            inputs=inputs or [],
            settings=settings,
            output=output,
            device=device,
            compile=compile_model,
            percentile=percentile,
            cmap=cmap,
            overlay=overlay,
            overlay_blur=overlay_blur,
            overlay_legend=not no_overlay_legend,
            sign=_sign(sign, diverging),
            save_raw=save_raw,
            skip_existing=skip_existing,
            fail_fast=fail_fast,
            max_pixels=max_pixels,
            patterns=pattern,
            workers=workers,
            files_from=files_from,
            null=null,
            shard=shard,
        )
        try:
            run_explain(options, report, None if quiet else progress_bar(report.err))
        except UsageError as exc:
            usage_error(str(exc))
    except KeyboardInterrupt:  # in start-up (importing torch, loading the model): nothing done
        report.interrupted = True
    if html_report and not (report.interrupted or report.stdout_closed):
        from .report import write_for_run

        write_for_run(output, report, quiet)
    raise typer.Exit(report.finish())


def _sign(sign: Sign, diverging: bool) -> str:
    """``--diverging`` is ``--sign all``, kept for the scripts that use it."""
    if diverging and sign not in (Sign.ABSOLUTE, Sign.ALL):
        usage_error(f"--diverging is --sign all: it cannot go with --sign {sign.value}")
    return Sign.ALL.value if diverging else sign.value
