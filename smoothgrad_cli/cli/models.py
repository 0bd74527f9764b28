"""``smoothgrad models [PATTERN]``: the classifiers, and which work offline."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .app import app


@app.command("models")
def models_command(
    pattern: Annotated[
        str | None, typer.Argument(help="Glob or substring to filter the names.")
    ] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List the classifiers; mark those usable offline (embedded or weights cached)."""
    import json

    from ..models import list_models, torch_home

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
