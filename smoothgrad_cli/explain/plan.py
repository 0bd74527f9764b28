"""The first step of an ``explain`` run: everything decided before the model loads.

Inputs and the output folder are checked first, so a typo or a folder that cannot be written
is reported now, not after a download or an hour of compute; output names are known before
anything is computed, so ``--skip-existing`` knows what is done.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import outputs
from ..errors import UsageError
from ..images import InputImage, MissingInput, discover
from ..manifest import read_manifest, recorded_done
from ..names import shown
from .options import ExplainOptions


@dataclass
class Plan:
    todo: list[InputImage]  # to explain, in order
    missing: list[MissingInput]  # inputs that failed before decoding (not found, unreadable)
    skipped: list[InputImage] = field(default_factory=list)  # done already (--skip-existing)

    @classmethod
    def make(cls, options: ExplainOptions) -> Plan:
        """Raises ``UsageError`` for what makes the whole run impossible."""
        options.validate()
        check_inputs_outside(options.inputs, options.output)
        images, missing = discover(options.inputs, options.patterns, exclude=[options.output])
        if not images and not missing:
            raise UsageError("no input images given")
        check_writable(options.output)
        outputs.remove_stale_temporaries(
            path
            for image in images
            for files in options.output_names(image.relative)
            for path in files.values()
        )
        if not options.skip_existing:
            return cls(images, missing)
        todo, skipped = not_done(images, options)
        return cls(todo, missing, skipped)


def check_inputs_outside(inputs: list[str], output: Path) -> None:
    """The output folder is never searched for images (its maps are no inputs), so an input
    inside it would silently give nothing: say so instead."""
    out = os.path.realpath(output)
    for spec in inputs:
        real = os.path.realpath(spec)
        if real == out or real.startswith(out.rstrip(os.sep) + os.sep):
            where = "is" if real == out else "is inside"
            raise UsageError(
                f"{shown(spec)} {where} the output folder {shown(output)}, which is never "
                "searched for images: give another --output"
            )


def check_writable(folder: Path) -> None:
    """Fail now, not after an hour of compute, if outputs cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(
            f"{folder}: output folder cannot be written ({exc.strerror or exc})"
        ) from None


def manifest_path(options: ExplainOptions) -> Path:
    return options.output / "manifest.jsonl"


def not_done(
    images: list[InputImage], options: ExplainOptions
) -> tuple[list[InputImage], list[InputImage]]:
    """``--skip-existing``: (still to do, done). Done means all outputs on disk *and* a
    manifest line saying so: a run killed between its last write and its manifest line
    (``kill -9``) left outputs the manifest does not know, and those images are done again,
    which rewrites the same maps and adds their line."""
    relatives, inputs = recorded_done(read_manifest(manifest_path(options)))
    todo, done = [], []
    for image in images:
        names = options.output_names(image.relative)
        on_disk = all(outputs.exists(p) for files in names for p in files.values())
        recorded = image.relative.as_posix() in relatives or os.fspath(image.path) in inputs
        (done if on_disk and recorded else todo).append(image)
    return todo, done
