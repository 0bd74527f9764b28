"""Whether a stream is a terminal: tables fold to its width and progress bars redraw one line
there; in a pipe or a log file neither happens (no torch, no rich: any layer may ask)."""

from __future__ import annotations

from typing import Any


def is_a_terminal(stream: Any) -> bool:
    """``stream.isatty()``, and ``False`` for a stream replaced by an object without it, one
    closed, or none at all (``sys.stderr`` is ``None`` under ``pythonw``)."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False
