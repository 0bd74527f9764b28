"""Which images a process explains when many processes share one job.

Two kinds of jobs, two splits, both deterministic and both a partition of the sorted input
list (every image in exactly one part):

* **Shards** (``--shard I/N``: job arrays, CI matrix jobs, ``xargs -P``) start, stop and are
  restarted on their own and never talk to each other. Whatever one shard sees of the
  others' progress is already out of date, so their split must not depend on it: an image's
  shard is a hash of its place below the inputs' root alone (``bucket``). A shard restarted
  alone, hours later, takes exactly its images again; a file added to the folder meanwhile
  moves no other image to another shard. Parts are even by the law of large numbers (with
  10,000 images per shard, counts within about 3 %), not exactly.
* **Ranks** of one torchrun job meet before any of them writes (``distributed.py``), so they
  can split by the work that is really left: ``deal``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_SHARD = re.compile(r"^(\d+)/(\d+)$")


class ShardError(ValueError):
    """A ``--shard`` that cannot be used; the message names the option."""


@dataclass(frozen=True)
class Shard:
    index: int  # from 0
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        """The shard in file names: ``shard-2-of-8``."""
        return f"shard-{self.index}-of-{self.count}"

    def holds(self, relative: Path) -> bool:
        return bucket(relative, self.count) == self.index


def parse(text: str, env: Mapping[str, str] = os.environ) -> tuple[Shard | None, str | None]:
    """``--shard I/N`` or ``--shard auto`` → (the shard or ``None`` for all images, a warning
    to say or ``None``). ``ShardError`` for anything else."""
    if text == "auto":
        return from_environment(env)
    match = _SHARD.match(text.strip())
    if not match:
        raise ShardError(f"--shard {text!r}: expected I/N (such as 0/4) or auto")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"--shard {text}: N must be 1 or more and I from 0 to N-1")
    return Shard(index, count), None


def from_environment(env: Mapping[str, str]) -> tuple[Shard | None, str | None]:
    """``--shard auto``: a SLURM job array task, else ``RANK``/``WORLD_SIZE`` from a launcher
    that gives no rendezvous address. Under torchrun (``MASTER_ADDR`` too) the ranks split
    the work themselves, so auto adds no shard; nor does it outside any job, with a warning,
    since N copies of a job array that all took every image would do the work N times."""
    task = env.get("SLURM_ARRAY_TASK_ID")
    if task is not None:
        try:
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
            first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            step = int(env.get("SLURM_ARRAY_TASK_STEP", "1")) or 1
            index, off_step = divmod(int(task) - first, step)
        except (KeyError, ValueError):
            raise ShardError(
                "--shard auto: SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT (or "
                "they are not numbers): give --shard I/N"
            ) from None
        if off_step or not 0 <= index < count:
            # --array=1,4,9: the task IDs are not evenly spaced, so an ID is no shard number
            raise ShardError(
                f"--shard auto: cannot number SLURM array task {task} (min {first}, step "
                f"{step}, {count} tasks): use an evenly spaced --array, or give --shard I/N"
            )
        return Shard(index, count), None
    if "RANK" in env and "WORLD_SIZE" in env:
        if "MASTER_ADDR" in env and "MASTER_PORT" in env:
            return None, None  # torchrun: the ranks meet and deal the work (distributed.py)
        try:
            return parse(f"{int(env['RANK'])}/{int(env['WORLD_SIZE'])}", env)
        except ValueError:
            raise ShardError("--shard auto: RANK and WORLD_SIZE must be numbers") from None
    return None, (
        "--shard auto: no job array or launcher variables (SLURM_ARRAY_TASK_ID, RANK and "
        "WORLD_SIZE) are set, so this process takes all the images"
    )


def bucket(relative: Path, count: int) -> int:
    """The shard of an image, from its place below the inputs' root only: the first 8 bytes
    of the SHA-256 of that name, modulo ``count``. The same on every machine and Python
    version (``hash()`` is salted per process), and independent of every other image."""
    digest = hashlib.sha256(os.fsencode(relative.as_posix())).digest()
    return int.from_bytes(digest[:8], "big") % count


def deal(todo: Sequence[bool], sizes: Sequence[int], ranks: int) -> list[int]:
    """The rank of each image, for ranks that share one view of what is left to do.

    An image's work has two parts: the model's, the same for every image (n noisy copies at
    the model's input size), and decoding (and overlays), which grows with the file. Which
    bounds a run depends on the device: the model on a CPU, often decoding on a fast GPU. So
    no single weight fits, and none is guessed: the images to do are sorted by file size,
    largest first, and dealt like cards in a snake order (0, 1, …, N-1, N-1, …, 0, 0, …),
    then the skipped ones the same way. Every rank gets the same number of images to do to
    within one *and* the same total size to within one file, so ranks end together whichever
    part dominates. Ties keep the sorted input order, so the result is deterministic."""
    order = sorted(range(len(todo)), key=lambda i: (not todo[i], -sizes[i], i))
    owner = [0] * len(todo)
    for place, i in enumerate(order):
        lap, seat = divmod(place, ranks)
        owner[i] = seat if lap % 2 == 0 else ranks - 1 - seat
    return owner


def file_size(path: Path | str, is_url: bool) -> int:
    """The cost estimate ``deal`` sorts by: the file's size in bytes, which grows with its
    pixels as decoding does. A ``stat`` is 10–20 times cheaper than reading the image's header
    (measured: ~12 µs against ~220 µs), and every rank looks at every image. A URL's size is
    not known before its download: 0, so URLs are dealt evenly among themselves."""
    if is_url:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
