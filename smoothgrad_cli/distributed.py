"""torchrun: the ranks of one job, their devices, and the two times they meet.

Under ``torchrun`` (or any launcher that sets the ``env://`` variables ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) each process is one rank of a job over
the same inputs. The ranks meet twice, through ``torch.distributed``:

* **At the start**, once every rank has planned (found the images, read the manifest) and
  loaded its model, and before any of them writes a file: they exchange what they found
  (``Readiness``) and go on only if all agree, so that their split (``shard.deal``) is one
  split, and no rank adds to the manifest while another still reads it. A rank that cannot
  start (its model does not load, its device is missing) stops them all, with its reason.
* **At the end**, each rank hands its results to rank 0 (``RankReport``), which prints the
  one summary and whose exit code is the job's; the others then exit 0 and say nothing
  more. Rank 0 then folds the ranks' manifest parts into one ``manifest.jsonl``.

The process group is gloo's on every device: only a few kilobytes pass, on the CPU, at the
start and at the end; NCCL would cost GPU memory and set-up for nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .errors import UsageError
from .report import ImageResult, Report

#: How long ranks wait for each other to join and to finish planning: they do the same
#: work at the same time, so a rank this late is not coming (a launcher that started only
#: some of them), and no one should hang for days on it.
START = timedelta(hours=1)
#: How long a rank that is done waits for the others at the end. Ranks are dealt the same
#: work and end together; a rank that dies closes its sockets, which ends the wait at once.
#: So only a slow rank is waited for, as long as a job may run.
END = timedelta(days=7)

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Readiness:
    """What a rank tells the others before any work: the usage error that stops it, or what
    it found (``Plan.fingerprint``: the images, which are done, their sizes)."""

    problem: str | None = None
    images: int = 0
    fingerprint: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RankReport:
    """A rank's results for rank 0: whole results where rank 0 prints a table, counts where
    each rank printed its own JSON lines (a million results need not travel)."""

    results: list[ImageResult] | None
    done: int
    skipped: int
    failures: list[tuple[str, str]]


@dataclass
class Ranks:
    rank: int
    world: int
    local_rank: int
    _end: Any = field(default=None, repr=False)  # the process group with the end's timeout

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Ranks | None:
        """The ranks of a launched job, or ``None`` for a process on its own (no launcher,
        or one process in all)."""
        if not all(name in env for name in ENV):
            return None
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", rank))
        except ValueError:
            raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be numbers") from None
        if world <= 1:
            return None
        if not 0 <= rank < world:
            raise UsageError(f"RANK={rank} is not below WORLD_SIZE={world}")
        return cls(rank, world, local)

    def join(self) -> None:
        import torch.distributed as dist

        try:
            dist.init_process_group("gloo", init_method="env://", timeout=START)
            self._end = dist.new_group(backend="gloo", timeout=END)
        except Exception as exc:  # an address that cannot be reached, a port taken
            raise UsageError(f"rank {self.rank} cannot join the other ranks: {exc}") from None

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def use_device(self, requested: str) -> str:
        """``auto`` and ``cuda`` mean this rank's own GPU, ``cuda:LOCAL_RANK`` (modulo the
        GPUs it sees, for a launcher that shows each rank only its own); any other device is
        taken as given."""
        import torch

        if requested not in ("auto", "cuda") or not torch.cuda.is_available():
            return requested
        device = f"cuda:{self.local_rank % torch.cuda.device_count()}"
        torch.cuda.set_device(device)  # for what uses the current device (compiled kernels)
        return device

    def agree(self, mine: Readiness) -> None:
        """Exchange ``mine`` with every rank's; ``UsageError`` unless all can start and found
        the same. Returns when every rank has finished planning."""
        import torch.distributed as dist

        everyone: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(everyone, mine)
        except Exception as exc:  # a rank died before the start: its error is its own
            raise UsageError(f"a rank stopped before the work started ({exc})") from None
        if mine.problem is not None:
            raise UsageError(mine.problem)
        for rank, theirs in enumerate(everyone):
            if theirs.problem is not None:
                raise UsageError(f"rank {rank} cannot start: {theirs.problem}")
        first = everyone[0]
        for rank, theirs in enumerate(everyone[1:], start=1):
            if theirs.parameters != first.parameters:
                keys = sorted(
                    k
                    for k in set(theirs.parameters) | set(first.parameters)
                    if theirs.parameters.get(k) != first.parameters.get(k)
                )
                said = ", ".join(
                    f"{k} {first.parameters.get(k)} on rank 0, {theirs.parameters.get(k)} on "
                    f"rank {rank}"
                    for k in keys
                )
                raise UsageError(
                    f"the ranks would make different maps ({said}): give the same options "
                    "everywhere (--precision, not auto, on mixed GPUs)"
                )
            if theirs.images != first.images:
                raise UsageError(
                    f"rank {rank} found {theirs.images} images, rank 0 {first.images}: every "
                    "rank must see the same inputs (one file system all machines share)"
                )
            if theirs.fingerprint != first.fingerprint:
                raise UsageError(
                    f"rank {rank} sees other files, file sizes or finished images than rank "
                    "0: every rank must see the same inputs and output folder"
                )

    def meet_at_end(self, report: Report) -> None:
        """Hand this rank's results to rank 0, which takes them into its report; the others'
        reports are emptied and quiet, so that one summary and one exit code come out. An
        interrupted rank does not wait for the others: it stops now, with its own summary."""
        import torch.distributed as dist

        if report.interrupted or report.stdout_closed:
            return
        mine = _handover(report)
        gathered: list[Any] | None = [None] * self.world if self.rank == 0 else None
        try:
            dist.gather_object(mine, gathered, dst=0, group=self._end)
        except Exception as exc:  # a rank died: what it did is in the manifest, not here
            report.failed(
                f"rank {self.rank}",
                f"could not meet the other ranks at the end ({exc}); this summary is this "
                "rank's alone",
            )
            return
        if gathered is None:
            report.results.clear()
            report.failures.clear()
            report.err.quiet = True
            return
        for theirs in gathered[1:]:
            _absorb(report, theirs)


#: Stand-ins for other ranks' results in rank 0's report when they printed their own JSON
#: lines: the report counts its results for the summary and needs nothing else of them.
_DONE_ELSEWHERE = ImageResult(input="")
_SKIPPED_ELSEWHERE = ImageResult(input="", skipped=True)


def _handover(report: Report) -> RankReport:
    skipped = sum(1 for r in report.results if r.skipped)
    return RankReport(
        results=None if report.json_lines else list(report.results),
        done=len(report.results) - skipped,
        skipped=skipped,
        failures=list(report.failures),
    )


def _absorb(report: Report, theirs: RankReport) -> None:
    # Their error lines are on stderr already, from their own process: counted, not repeated.
    report.failures.extend(theirs.failures)
    if theirs.results is not None:
        report.results.extend(theirs.results)
    else:
        report.results.extend([_DONE_ELSEWHERE] * theirs.done)
        report.results.extend([_SKIPPED_ELSEWHERE] * theirs.skipped)
