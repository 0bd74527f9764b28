"""The first step of an ``explain`` run: everything decided before the model loads.

Inputs and the output folder are checked first, so a typo or a folder that cannot be written
is reported now, not after a download or an hour of compute; output names are known before
anything is computed, so ``--skip-existing`` knows what is done.

A process that is one part of a bigger job (``--shard``, a torchrun rank) finds every image
of the job first, since output names mirror the inputs below the root of *all* of them, and
then keeps its own: its shard (``shard.bucket``), then its rank's part of that (``part``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import engine, outputs, remote
from ..errors import UsageError
from ..file_list import read_file_list
from ..images import InputImage, MissingInput, discover
from ..manifest import MAIN, folder_entries, part_name, recorded_done
from ..names import shown
from ..shard import Shard, deal, file_size
from .options import ExplainOptions, comparable


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
    shard: Shard | None = None  # --shard: this process's shard of the job's images
    rank: int | None = None  # a torchrun rank's part of them (``part``)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, options: ExplainOptions) -> Plan:
        """Raises ``UsageError`` for what makes the whole run impossible."""
        options.validate()
        shard, warning = options.shard_of_job()
        try:  # a precision this device cannot take is refused before the model loads
            device = engine.resolve_device(options.device)
            engine.resolve_precision(options.settings.precision, device)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        inputs = list(options.inputs)
        if options.files_from is not None:
            inputs += read_file_list(options.files_from, options.null)
        check_inputs_outside(inputs, options.output)
        images, missing = discover(inputs, options.patterns, exclude=[options.output])
        # An empty --files-from list is a batch job with nothing new to do, not a mistake.
        if not images and not missing and options.files_from is None:
            raise UsageError("no input images given")
        check_writable(options.output)
        if shard is not None:
            images = [image for image in images if shard.holds(image.relative)]
            # Inputs that are not there belong to no shard: the first says them, once.
            missing = missing if shard.index == 0 else []
        return cls(images, missing, shard=shard, warnings=[warning] if warning else [])

    def without_done(self, options: ExplainOptions, precision: str) -> Plan:
        """The plan for maps made in ``precision`` (the explainer's: ``auto`` may depend on
        the model, ``tuning.precision_probe``), less what ``--skip-existing`` finds done."""
        plan = dataclasses.replace(self, precision=precision)
        return not_done(plan, options) if options.skip_existing else plan

    @cached_property
    def sizes(self) -> list[int]:
        """The estimated cost of each image to do (``shard.file_size``)."""
        return [file_size(image.path, image.url is not None) for image in self.todo]

    def fingerprint(self) -> str:
        """A digest of what the split depends on, equal for ranks that may share one split."""
        digest = hashlib.sha256()
        for image, size in zip(self.todo, self.sizes, strict=True):
            digest.update(b"T%d:" % size + os.fsencode(image.relative.as_posix()) + b"\0")
        for image in self.skipped:
            digest.update(b"S:" + os.fsencode(image.relative.as_posix()) + b"\0")
        return digest.hexdigest()

    def part(self, rank: int, ranks: int) -> Plan:
        """Rank ``rank``'s part, of ``ranks``, of the images to do and of those skipped
        (``shard.deal``); the inputs that are not there go to rank 0, to be said once."""
        owner = deal(
            [True] * len(self.todo) + [False] * len(self.skipped),
            self.sizes + [0] * len(self.skipped),
            ranks,
        )
        done_owner = owner[len(self.todo) :]
        todo = [image for image, o in zip(self.todo, owner, strict=False) if o == rank]
        skipped = [image for image, o in zip(self.skipped, done_owner, strict=True) if o == rank]
        mine = {id(image) for image in todo}
        return dataclasses.replace(
            self,
            todo=todo,
            skipped=skipped,
            missing=self.missing if rank == 0 else [],
            redone=[image for image in self.redone if id(image) in mine],
            rank=rank,
        )

    def manifest_path(self, options: ExplainOptions) -> Path:
        """``manifest.jsonl`` for a whole job; this process's own part of it otherwise."""
        if self.shard is None and self.rank is None:
            return options.output / MAIN
        return options.output / part_name(self.shard and self.shard.tag, self.rank)

    def remove_stale_temporaries(self, options: ExplainOptions) -> None:
        """What a killed run left beside this process's outputs, and only those: another
        shard may be writing its own in the same folders right now."""
        outputs.remove_stale_temporaries(
            path
            for image in [*self.todo, *self.skipped]
            for files in options.output_names(image.relative)
            for path in files.values()
        )


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


def not_done(plan: Plan, options: ExplainOptions) -> Plan:
    """``--skip-existing``: ``plan`` with the images done already moved out of ``todo``.

    Done means all outputs on disk *and* a manifest line saying so, made with the settings
    of this run. A run killed between its last write and its manifest line (``kill -9``) left
    outputs the manifest does not know; outputs made with other settings (another method, a
    noise level changed) are not this run's maps: both kinds are done again, which rewrites
    their outputs and adds their line, and the second is said (``plan.changed``)."""
    # the main manifest and the parts of split runs not merged yet, all of them: a shard
    # restarted alone finds its own part, a job split another way the parts of the last one
    done = recorded_done(folder_entries(options.output))
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
        if isinstance(recorded, dict) and (recorded := comparable(recorded, wanted)) != wanted:
            todo.append(image)
            plan.redone.append(image)
            for key in sorted(set(recorded) | set(wanted)):
                if recorded.get(key) != wanted.get(key):
                    plan.changed.setdefault(key, (recorded.get(key), wanted.get(key)))
            continue
        plan.skipped.append(image)
    plan.todo = todo
    return plan
