"""``smoothgrad check SPEC``: CI checks of what a model looks at (see ``smoothgrad_cli.check``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app


@app.command("check")
def check_command(
    spec: Annotated[
        Path,
        typer.Argument(
            metavar="SPEC",
            # escaped: Typer reads help as rich markup, where [defaults] would be a style tag
            help="The TOML spec: \\[defaults] and \\[\\[case]] tables.",
        ),
    ],
    junit: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Also write a JUnit XML report (one test per check)."),
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
        str | None,
        typer.Option(metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps (overrides the spec)."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Predictions per case, tracebacks.")
    ] = False,
) -> None:
    """Check what a model looks at: expected classes, regions, golden maps, sanity.

    Exit 0 when every check passes, 1 when any fails, 2 when the spec is invalid.
    """
    from ..check import check_main

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
