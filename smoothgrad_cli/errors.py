"""Exit codes, the usage-error type and "did you mean", shared by every command."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

EXIT_OK = 0
EXIT_FAILED = 1  # some inputs or checks failed
EXIT_USAGE = 2  # nothing could be done: bad options, a bad spec, a model that does not load
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as shells report SIGINT


class UsageError(Exception):
    """Bad options or set-up: nothing can be done; exit 2 with this one-line message."""


def did_you_mean(
    word: str, choices: Iterable[str], n: int = 3, show: Callable[[str], str] = str
) -> str:
    """``"; did you mean a, b?"`` for the ``n`` choices closest to ``word`` (each written by
    ``show``), or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=n)
    return f"; did you mean {', '.join(show(c) for c in close)}?" if close else ""
