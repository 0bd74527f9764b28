"""``smoothgrad manifest merge DIR``: the parts that the shards of a job array wrote, folded
into one ``manifest.jsonl`` once the shards are done."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import EXIT_FAILED, EXIT_OK
from ..names import shown
from .app import Group, app, usage_error

manifest_app = type(app)(
    cls=Group, help="The manifest of an output folder.", no_args_is_help=True, add_completion=False
)
app.add_typer(manifest_app, name="manifest")


# One line per paragraph: typer keeps a docstring's line breaks, and folds lines itself.
MERGE_HELP = (
    "Fold the parts of a split job's manifest into DIR/manifest.jsonl and remove them.\n\n"
    "Parts (manifest.shard-I-of-N.jsonl, …) go in oldest first. One that a running shard "
    "still writes is left, with exit 1, so that a script that merges after its job array "
    "knows a shard is not done. A torchrun job merges its ranks' parts itself at its end."
)


@manifest_app.command("merge", help=MERGE_HELP)
def merge_command(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="The output folder of the shards (-o).")
    ],
) -> None:
    from ..manifest import MAIN, merge_parts

    if not folder.is_dir():
        usage_error(f"{shown(folder)}: no such folder")
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        merged = merge_parts(folder)
    except OSError as exc:
        err.print(f"error: {shown(folder / MAIN)}: {exc.strerror or exc}", markup=False)
        raise typer.Exit(EXIT_FAILED) from None
    parts = len(merged.parts)
    err.print(
        f"{parts} part{'s' if parts != 1 else ''} ({merged.lines} lines) merged into "
        f"{shown(folder / MAIN)}",
        markup=False,
    )
    for path in merged.busy:
        err.print(f"warning: {shown(path)} is still being written: left as it is", markup=False)
    raise typer.Exit(EXIT_FAILED if merged.busy else EXIT_OK)
