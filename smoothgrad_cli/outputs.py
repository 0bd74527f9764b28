"""Where an image's outputs go, and what a resumed run may take as already done.

Names are decided before anything is computed, from the image's place below the inputs'
common root alone, so ``--skip-existing`` knows what to look for and two runs with different
output options still agree on the map's name: ``a/cat.jpg`` → ``OUT/a/cat.jpg.map.png``,
``.overlay.png``, ``.raw.npy``, ``.top2.map.png`` …

A file name holds at most ``NAME_MAX`` bytes. An input whose name leaves too little room for
the longest suffix gets a shortened stem, the same for all its outputs: its first bytes (cut
at a character boundary), ``~`` and 16 hex digits of the SHA-256 of its whole name, so two
long names that share their beginning still get different outputs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from .files import TEMPORARY, temporary_stem

#: the longest file name most Linux file systems take (ext4, XFS, Btrfs, tmpfs), in bytes
NAME_MAX = 255
#: room kept for the longest suffix an output can get: ``.top1000.overlay.png`` is 20 bytes
SUFFIX_ROOM = 24
_DIGEST_HEX = 16


def output_stem(name: str) -> str:
    """The part of an output's name that stands for the input ``name`` (see the module)."""
    raw = os.fsencode(name)
    if len(raw) + SUFFIX_ROOM <= NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:_DIGEST_HEX]
    room = NAME_MAX - SUFFIX_ROOM - 1 - _DIGEST_HEX
    prefix, used = [], 0
    for char in name:  # whole characters only, so the prefix reads as the name began
        size = len(os.fsencode(char))
        if used + size > room:
            break
        prefix.append(char)
        used += size
    return "".join(prefix) + "~" + digest


def output_names(
    relative: Path, output: Path, top_k: int, overlay: bool, save_raw: bool
) -> list[dict[str, Path]]:
    """The files one image produces, one dict per rank (``map``, ``overlay``, ``raw``)."""
    folder = output / relative.parent
    stem = output_stem(relative.name)
    names = []
    for rank in range(1, top_k + 1):
        tag = f".top{rank}" if top_k > 1 else ""
        files = {"map": folder / f"{stem}{tag}.map.png"}
        if overlay:
            files["overlay"] = folder / f"{stem}{tag}.overlay.png"
        if save_raw:
            files["raw"] = folder / f"{stem}{tag}.raw.npy"
        names.append(files)
    return names


def exists(path: Path) -> bool:
    """``path`` is a file; a name the file system refuses (too long, a bad byte) is not."""
    try:
        return path.is_file()
    except OSError:
        return False


def remove_stale_temporaries(paths: Iterable[Path]) -> int:
    """Delete the temporary files a killed run (``kill -9``, a crash) left beside ``paths``,
    the outputs this run is about to write. Ctrl-C and ``kill`` clean up after themselves;
    only a process that could not run its clean-up leaves one. Only temporaries of these
    outputs are touched, so another run writing other files in the same folder is safe.
    Returns how many were removed."""
    wanted: dict[Path, set[str]] = {}
    for path in paths:
        wanted.setdefault(path.parent, set()).add(temporary_stem(path.name))
    removed = 0
    for folder, stems in wanted.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue  # not made yet: nothing to clean
        for entry in entries:
            match = TEMPORARY.match(entry)
            if match and match["stem"] in stems:
                try:
                    os.unlink(folder / entry)
                    removed += 1
                except OSError:
                    pass
    return removed
