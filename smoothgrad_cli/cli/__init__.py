"""The ``smoothgrad`` command: a thin Typer layer, one module per command, over the commands'
own modules (``explain``, ``check``, ``models``) and the explainer they share."""

from __future__ import annotations

# each module registers its command
from . import check, compare, explain, manifest, models, predict, report, sweep  # noqa: F401
from .app import app, main

__all__ = ["app", "main"]
