"""The ``smoothgrad`` command: a thin Typer layer, one module per command, over the commands'
own modules (``explain``, ``check``, ``models``) and the explainer they share."""

from __future__ import annotations

from . import check, explain, manifest, models, predict  # noqa: F401  (each registers its command)
from .app import app, main

__all__ = ["app", "main"]
