"""Writing files so that none is ever half-written, whatever stops the process."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


#: ``atomic_write``'s temporary files: ``.<stem>.<8 random characters>.tmp``
TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.[A-Za-z0-9_]{8}\.tmp$", re.DOTALL)
_TEMPORARY_ROOM = 255 - len("..12345678.tmp")


def temporary_stem(name: str) -> str:
    """What a temporary file for ``name`` is called after its leading dot: the name itself,
    or, when that would make the temporary's name too long for the file system (255 bytes),
    a digest of it, so any name that fits as an output can be written."""
    raw = os.fsencode(name)
    if len(raw) <= _TEMPORARY_ROOM:
        return name
    return "sg-" + hashlib.sha256(raw).hexdigest()[:32]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A crash, Ctrl-C or kill leaves either the old file or the complete new one, never a
    truncated file; a full disk fails here, before the rename. No fsync: the rename is atomic
    against the process dying, and syncing every map would throttle runs over big folders.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{temporary_stem(path.name)}.", suffix=".tmp", dir=path.parent
    )
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


__all__ = ["TEMPORARY", "atomic_write", "temporary_stem"]
