"""``smoothgrad models [PATTERN]``: the classifiers, and which work offline."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import EXIT_FAILED, did_you_mean
from ..report import print_table, stdout_console
from .app import app


@app.command("models")
def models_command(
    pattern: Annotated[
        str | None,
        typer.Argument(
            metavar="PATTERN",
            help="Glob or substring to filter the names; timm:PATTERN lists timm models, "
            "hf:[PATTERN] the transformers classifiers in the local hub cache.",
        ),
    ] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List the classifiers; mark those usable offline (embedded or weights cached).

    Without a family prefix: the embedded model and torchvision's classifiers. Nothing is
    built or loaded: only the registries and caches are read.

    Exit 1 when PATTERN matches no model (as grep does), so a script can test for a name.
    """
    import json

    # The time of this command is the import of torch and torchvision (whose registry holds
    # the names) or timm, not anything done here: no model is built.
    from ..models import HF, TIMM, list_models, weights_cache

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    infos = list_models(pattern)
    if not infos:
        # One line, not an empty table: a pattern that matches nothing is most often a typo.
        family = next((p for p in (TIMM, HF) if (pattern or "").startswith(p)), None)
        names = [info.name for info in list_models(family)]
        err.print(
            f"no model matches {pattern!r}{did_you_mean(pattern or '', names)} "
            f"(`smoothgrad models{' ' + family if family else ''}` lists all {len(names)})",
            markup=False,
        )
        raise typer.Exit(EXIT_FAILED)
    if json_lines:
        for info in infos:
            typer.echo(json.dumps(info.__dict__))
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("model", "default weights", "offline", "note"):
        table.add_column(column)
    for info in infos:
        table.add_row(
            escape(info.name),
            escape(info.default_weights),
            "yes" if info.offline else "no",
            escape(info.note),
        )
    print_table(stdout_console(), table)
    err.print(f"{len(infos)} model(s); {weights_cache(pattern)}", markup=False)
