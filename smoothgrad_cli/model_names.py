"""How model names and weights are spelt, without loading anything (no torch): what a spec
or a command line can be checked against before the seconds an import of torch takes."""

from __future__ import annotations

import os
from pathlib import Path

#: ``--model timm:NAME[.TAG]`` and ``--model hf:FOLDER|ORG/NAME``
TIMM, HF = "timm:", "hf:"


def looks_like_file(weights: str) -> bool:
    """Whether ``--weights`` names a file (a path, a name with a suffix, or one that exists)
    rather than an enum name or a timm tag."""
    return (
        os.sep in weights or "/" in weights or Path(weights).suffix != "" or Path(weights).exists()
    )


def model_beside(name: str, root: Path) -> str:
    """A model name as a spec in ``root`` means it: ``hf:FOLDER`` relative to the spec's
    folder, as the spec's images are; any other name as it is."""
    if not name.startswith(HF):
        return name
    folder = name.removeprefix(HF)
    beside = root / folder  # an absolute folder stays itself
    if beside.is_dir() or folder.startswith((".", os.sep)):
        return f"{HF}{beside}"
    return name
