"""``smoothgrad predict IMAGES``: top-k classes and probabilities, no maps."""

from __future__ import annotations

from typing import Annotated

import typer

from ..report import Report
from ..settings import EMBEDDED, Precision
from .app import METHOD, app, usage_error
from .options import Device, JsonLines, Labels, ModelName, PrecisionChoice, Verbose, Weights


@app.command()
def predict(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUTS...",
            help="Image files, folders (searched recursively), glob patterns and http(s) URLs.",
        ),
    ],
    model: ModelName = EMBEDDED,
    weights: Weights = None,
    labels: Labels = None,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k", metavar="K", help="How many classes per image.", rich_help_panel=METHOD
        ),
    ] = 5,
    json_lines: JsonLines = False,
    device: Device = "auto",
    precision: PrecisionChoice = Precision.AUTO,
    verbose: Verbose = False,
) -> None:
    """Print the model's K best classes for each image (no maps): check a model first."""
    from ..settings import MapSettings, SettingsError

    try:
        settings = MapSettings(
            model=model,
            weights=weights,
            labels=labels,
            precision=precision,
            top_k=top_k,
            smoothing="none",
        )
    except SettingsError as exc:
        usage_error(exc.command_line_message())
    report = Report(json_lines=json_lines, verbose=verbose, verb="classified", outputs=False)
    try:
        from ..errors import UsageError
        from ..predict import run_predict

        try:
            run_predict(inputs, settings, device, report)
        except UsageError as exc:
            usage_error(str(exc))
    except KeyboardInterrupt:
        report.interrupted = True
    raise typer.Exit(report.finish())
