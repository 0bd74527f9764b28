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
from typing import Any

from .. import engine, outputs, remote
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
    #: --skip-existing: images whose outputs were made with other settings (done again), and
    #: what differed, ``{parameter: (recorded, now)}`` over all of them
    redone: list[InputImage] = field(default_factory=list)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    precision: str = "fp32"  # the precision the maps are made in, on this run's device

    @classmethod
    def make(cls, options: ExplainOptions) -> Plan:
        """Raises ``UsageError`` for what makes the whole run impossible."""
        options.validate()
        try:
            device = engine.resolve_device(options.device)
            precision = engine.resolve_precision(options.settings.precision, device)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
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
            return cls(images, missing, precision=precision)
        return not_done(cls(images, missing, precision=precision), options)


def check_inputs_outside(inputs: list[str], output: Path) -> None:
    """The output folder is never searched for images (its maps are no inputs), so an input
    inside it would silently give nothing: say so instead."""
    out = os.path.realpath(output)
    for spec in inputs:
        if remote.is_url(spec):
            continue  # downloaded, never looked for on disk
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


def not_done(plan: Plan, options: ExplainOptions) -> Plan:
    """``--skip-existing``: ``plan`` with the images done already moved out of ``todo``.

    Done means all outputs on disk *and* a manifest line saying so, made with the settings
    of this run. A run killed between its last write and its manifest line (``kill -9``) left
    outputs the manifest does not know; outputs made with other settings (another method, a
    noise level changed) are not this run's maps: both kinds are done again, which rewrites
    their outputs and adds their line, and the second is said (``plan.changed``)."""
    done = recorded_done(read_manifest(manifest_path(options)))
    wanted = options.parameters(plan.precision)
    todo = []
    for image in plan.todo:
        names = options.output_names(image.relative)
        on_disk = all(outputs.exists(p) for files in names for p in files.values())
        entry = done.get(f"relative:{image.relative.as_posix()}") or done.get(
            f"input:{os.fspath(image.path)}"
        )
        if not (on_disk and entry is not None):
            todo.append(image)
            continue
        recorded = entry.get("parameters")
        if isinstance(recorded, dict) and recorded != wanted:
            todo.append(image)
            plan.redone.append(image)
            for key in sorted(set(recorded) | set(wanted)):
                if recorded.get(key) != wanted.get(key):
                    plan.changed.setdefault(key, (recorded.get(key), wanted.get(key)))
            continue
        plan.skipped.append(image)
    plan.todo = todo
    return plan
