"""The ``smoothgrad`` command: a thin Typer layer over the runner."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
from rich.table import Table

from . import __version__
from .images import DEFAULT_MAX_PIXELS
from .render import DEFAULT_PERCENTILE
from .report import EXIT_USAGE, Report

app = typer.Typer(
    name="smoothgrad",
    help="SmoothGrad saliency maps: what is this image classifier looking at?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_MODEL = "Model"
_METHOD = "Method"
_OUT = "Output"
_RUN = "Run"


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


@app.command()
def explain(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Image files, folders (searched recursively) and glob patterns."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the maps.", rich_help_panel=_OUT)
    ] = Path("smoothgrad_out"),
    model: Annotated[
        str,
        typer.Option(
            help="Classifier: the embedded efficientnet_lite0 or any torchvision classifier.",
            rich_help_panel=_MODEL,
        ),
    ] = "efficientnet_lite0",
    weights: Annotated[
        str | None,
        typer.Option(
            help="Weights enum name (DEFAULT, IMAGENET1K_V2, …) or a local state-dict file.",
            rich_help_panel=_MODEL,
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="Base method: gradient, input-x-gradient, integrated-gradients, guided-backprop.",
            rich_help_panel=_METHOD,
        ),
    ] = "gradient",
    smoothing: Annotated[
        str,
        typer.Option(
            help="smoothgrad (mean), smoothgrad-sq (mean of squares), vargrad (variance), none.",
            rich_help_panel=_METHOD,
        ),
    ] = "smoothgrad",
    noise: Annotated[
        float,
        typer.Option(
            help="Noise level σ in percent of (max − min) of each image's model-input tensor.",
            rich_help_panel=_METHOD,
        ),
    ] = 15.0,
    samples: Annotated[
        int,
        typer.Option("--samples", "-n", help="Noisy copies per image.", rich_help_panel=_METHOD),
    ] = 50,
    seed: Annotated[
        int, typer.Option(help="Seed of the noise: same seed, same map.", rich_help_panel=_METHOD)
    ] = 0,
    ig_steps: Annotated[
        int,
        typer.Option(help="Integration steps for integrated-gradients.", rich_help_panel=_METHOD),
    ] = 32,
    target: Annotated[
        str | None,
        typer.Option(
            help="Class to explain: an index or a class name (default: the top-1 prediction).",
            rich_help_panel=_METHOD,
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option(help="One map for each of the K best classes.", rich_help_panel=_METHOD)
    ] = 1,
    percentile: Annotated[
        float,
        typer.Option(help="Cap the display at this percentile.", rich_help_panel=_OUT),
    ] = DEFAULT_PERCENTILE,
    cmap: Annotated[
        str | None,
        typer.Option(
            help="Matplotlib colormap for the map (default: grayscale).", rich_help_panel=_OUT
        ),
    ] = None,
    overlay: Annotated[
        bool,
        typer.Option(
            "--overlay",
            help="Also write the map blended on the photo, at its size.",
            rich_help_panel=_OUT,
        ),
    ] = False,
    diverging: Annotated[
        bool,
        typer.Option(
            "--diverging",
            help="Signed map: zero at the centre of a diverging colormap.",
            rich_help_panel=_OUT,
        ),
    ] = False,
    save_raw: Annotated[
        bool,
        typer.Option(
            "--save-raw",
            help="Also save the float32 attribution (C×H×W) as .npy.",
            rich_help_panel=_OUT,
        ),
    ] = False,
    json_lines: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per image on stdout.", rich_help_panel=_OUT),
    ] = False,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=_RUN)
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            help="fp32, bf16, fp16 or auto (bf16 on CUDA, fp32 on CPU).", rich_help_panel=_RUN
        ),
    ] = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Noisy copies per forward/backward chunk (default: timed once per model, "
            "device, input size and precision, then cached; see SMOOTHGRAD_CACHE_DIR).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    compile_model: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the model first (says how long it took; kernels cached in "
            "the cache folder): worth it for folders on GPUs, not for a few images.",
            rich_help_panel=_RUN,
        ),
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="Skip images whose outputs all exist (resume).",
            rich_help_panel=_RUN,
        ),
    ] = False,
    fail_fast: Annotated[
        bool,
        typer.Option("--fail-fast", help="Stop at the first failed input.", rich_help_panel=_RUN),
    ] = False,
    max_pixels: Annotated[
        int,
        typer.Option(
            help="Refuse images with more pixels (decompression bombs).", rich_help_panel=_RUN
        ),
    ] = DEFAULT_MAX_PIXELS,
    pattern: Annotated[
        list[str] | None,
        typer.Option(
            help="File-name glob(s) to take from folders (default: image extensions).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(help="Threads that decode and write beside the model.", rich_help_panel=_RUN),
    ] = 4,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=_RUN)
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Tracebacks for failures.", rich_help_panel=_RUN)
    ] = False,
) -> None:
    """Write SmoothGrad maps for images, files or whole folders."""
    report = Report(json_lines=json_lines, verbose=verbose)
    try:
        _explain(
            report,
            None if quiet else _progress(report.err),
            inputs=inputs,
            output=output,
            model=model,
            weights=weights,
            method=method,
            smoothing=smoothing,
            noise=noise,
            samples=samples,
            seed=seed,
            batch_size=batch_size,
            ig_steps=ig_steps,
            target=target,
            top_k=top_k,
            device=device,
            precision=precision,
            compile=compile_model,
            percentile=percentile,
            cmap=cmap,
            overlay=overlay,
            diverging=diverging,
            save_raw=save_raw,
            skip_existing=skip_existing,
            fail_fast=fail_fast,
            max_pixels=max_pixels,
            patterns=pattern,
            workers=workers,
        )
    except KeyboardInterrupt:  # in start-up (importing torch, loading the model): nothing done
        report.interrupted = True
    raise typer.Exit(report.finish())


def _explain(report: Report, progress, **options) -> None:
    # torch is imported here, not at the top, so that --help and --version answer at once.
    from .runner import ExplainOptions, UsageError, run_explain

    try:
        run_explain(ExplainOptions(**options), report, progress)
    except UsageError as exc:
        _usage_error(str(exc))


@app.command("models")
def models_command(
    pattern: Annotated[
        str | None, typer.Argument(help="Glob or substring to filter the names.")
    ] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List the classifiers; mark those usable offline (embedded or weights cached)."""
    import json

    from .models import list_models, torch_home

    infos = list_models(pattern)
    if json_lines:
        for info in infos:
            typer.echo(json.dumps(info.__dict__))
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("model", "default weights", "offline", "note"):
        table.add_column(column)
    for info in infos:
        table.add_row(info.name, info.default_weights, "yes" if info.offline else "no", info.note)
    Console(highlight=False).print(table)
    Console(stderr=True, highlight=False).print(
        f"{len(infos)} model(s); weights cache: {torch_home()} (set TORCH_HOME to move it)"
    )


@app.command("check")
def check_command(
    spec: Annotated[
        # escaped: Typer reads help as rich markup, where [defaults] would be a style tag
        Path, typer.Argument(help="The TOML spec: \\[defaults] and \\[\\[case]] tables.")
    ],
    junit: Annotated[
        Path | None, typer.Option(help="Also write a JUnit XML report (one test per check).")
    ] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per check.")] = False,
    update_golden: Annotated[
        bool,
        typer.Option("--update-golden", help="Write or refresh the golden maps named in the spec."),
    ] = False,
    allow_outside_spec_folder: Annotated[
        bool,
        typer.Option(
            "--allow-outside-spec-folder",
            help="Let --update-golden write goldens the spec places outside its own folder "
            "(through ../, an absolute path or a symlink), into folders that exist.",
        ),
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps (overrides the spec).")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Predictions per case, tracebacks.")
    ] = False,
) -> None:
    """Check what a model looks at: expected classes, regions, golden maps, sanity.

    Exit 0 when every check passes, 1 when any fails, 2 when the spec is invalid.
    """
    from .check import check_main

    raise typer.Exit(
        check_main(
            spec,
            junit=junit,
            json_lines=json_lines,
            update_golden=update_golden,
            allow_outside_spec_folder=allow_outside_spec_folder,
            device=device,
            verbose=verbose,
        )
    )


def _progress(console: Console):
    def factory(total: int) -> _ProgressBar:
        return _ProgressBar(console, total)

    return factory


class _ProgressBar:
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


def _usage_error(message: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"smoothgrad: error: {message}", markup=False
    )
    raise typer.Exit(EXIT_USAGE)


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
        code = 130
    except errors.ClickException as exc:
        print(f"smoothgrad: error: {exc.format_message()}", file=sys.stderr)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
