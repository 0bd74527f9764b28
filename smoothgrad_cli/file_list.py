"""``--files-from FILE``: inputs listed in a file or on standard input, as shell batch jobs
make them (``find photos -newer stamp | smoothgrad explain --files-from -``)."""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

from .errors import UsageError
from .names import shown

STDIN = "-"


def read_file_list(source: str, null: bool, stdin: BinaryIO | None = None) -> list[str]:
    """The inputs listed in ``source`` (``-``: standard input): one per line, or separated by
    NUL bytes with ``null`` (``find -print0``, ``-0``), each taken exactly as written, spaces
    and all; empty entries are passed over. Read as bytes and decoded as file names are
    (``os.fsdecode``), so a name that is not UTF-8 names the same file."""
    try:
        if source == STDIN:
            data = (stdin or sys.stdin.buffer).read()
        else:
            with open(source, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        raise UsageError(
            f"--files-from {shown(source)}: cannot read ({exc.strerror or exc})"
        ) from None
    if not null and b"\0" in data:
        # a list from find -print0 read by lines would be one name with NULs in it
        raise UsageError(f"--files-from {shown(source)} is NUL-separated: add -0")
    return [os.fsdecode(name) for name in data.split(b"\0" if null else b"\n") if name]
