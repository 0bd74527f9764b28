"""Beyond one process: the manifest's parts (one writer each, merged whole) and where
torchrun's ranks meet, with the collectives stood in for (the real ones:
``test_scale_torchrun.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smoothgrad_cli.manifest import Manifest, ManifestInUse, merge_parts

ROOT = Path(__file__).resolve().parents[1]


# --- the manifest's parts ---------------------------------------------------------------------


#: A process appending to its own part: lines of very different lengths, up to 64 KiB (far
#: over a pipe's atomic 4 KiB), each one whole JSON object. Only the manifest is imported.
WRITER = """
import random, sys
from pathlib import Path
from smoothgrad_cli.manifest import Manifest
writer, lines = int(sys.argv[2]), int(sys.argv[3])
manifest = Manifest(Path(sys.argv[1]), {"writer": writer}, part=True)
rng = random.Random(writer)
for i in range(lines):
    manifest.record({"i": i, "pad": "x" * rng.randrange(65536)})
manifest.close()
"""


def test_parts_merged_while_written_give_every_line_once_and_whole(tmp_path):
    """Four processes write their parts while this one merges again and again: a merge takes
    only the parts no one holds, and the main manifest ends with every line exactly once, and
    no line cut or mixed with another."""
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(tmp_path / f"manifest.rank-{w}.jsonl"),
                str(w),
                "300",
            ],
            cwd=ROOT,
        )
        for w in range(4)
    ]
    busy_seen = 0
    while any(p.poll() is None for p in writers):
        busy_seen += len(merge_parts(tmp_path).busy)
    assert [p.wait(timeout=60) for p in writers] == [0] * 4
    merge_parts(tmp_path)
    assert busy_seen > 0  # the merges did run while parts were held
    lines = (tmp_path / "manifest.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    entries = [json.loads(line) for line in lines[:-1]]
    assert sorted((e["writer"], e["i"]) for e in entries) == [
        (w, i) for w in range(4) for i in range(300)
    ]
    assert not list(tmp_path.glob("manifest.rank-*"))


def test_a_part_cut_by_a_kill_merges_its_whole_lines_only(tmp_path):
    part = tmp_path / "manifest.rank-1.jsonl"
    part.write_bytes(b'{"input": "a", "status": "ok"}\n{"input": "b", "sta')
    merged = merge_parts(tmp_path)
    assert merged.lines == 1 and merged.parts == [part]
    assert (tmp_path / "manifest.jsonl").read_bytes() == b'{"input": "a", "status": "ok"}\n'


def test_a_part_has_one_writer(tmp_path):
    first = Manifest(tmp_path / "manifest.rank-0.jsonl", {}, part=True)
    with pytest.raises(ManifestInUse):
        Manifest(tmp_path / "manifest.rank-0.jsonl", {}, part=True)
    # and in another process too (flock is per open file, not per process)
    code = (
        "import sys; from pathlib import Path; from smoothgrad_cli.manifest import Manifest\n"
        f"Manifest(Path({str(tmp_path / 'manifest.rank-0.jsonl')!r}), {{}}, part=True)"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert other.returncode != 0 and "ManifestInUse" in other.stderr
    assert merge_parts(tmp_path).busy == [tmp_path / "manifest.rank-0.jsonl"]
    first.close()
    assert merge_parts(tmp_path).parts == [tmp_path / "manifest.rank-0.jsonl"]


def test_a_writer_waits_out_a_merge_that_holds_its_new_part(tmp_path):
    """A merge locks the empty part a writer has just created, finds nothing, removes it: the
    writer, whose lock failed meanwhile, opens the name again instead of refusing to run as
    if another process wrote the part (what a CI run once saw with four writers)."""
    import fcntl
    import os
    import threading

    part = tmp_path / "manifest.rank-3.jsonl"
    part.touch()
    held = os.open(part, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # the merge has it

    def merge_done():
        os.unlink(part)  # nothing to fold in: the merge removes it and lets go
        os.close(held)

    threading.Timer(0.2, merge_done).start()
    manifest = Manifest(part, {"writer": 3}, part=True)
    manifest.record({"i": 0})
    manifest.close()
    assert [json.loads(line)["i"] for line in part.read_text().splitlines()] == [0]


# --- where torchrun's ranks meet -----------------------------------------------------------


def test_ranks_start_only_if_all_can_and_all_see_the_same(monkeypatch):
    import torch.distributed as dist

    from smoothgrad_cli.distributed import Ranks, Readiness
    from smoothgrad_cli.errors import UsageError

    def ready(images: int = 3, fingerprint: str = "a", precision: str = "fp32") -> Readiness:
        return Readiness(
            images=images, fingerprint=fingerprint, parameters={"precision": precision}
        )

    first = ready()

    def all_gather_object(into, mine):
        into[:] = [first, mine]

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    ranks = Ranks(rank=1, world=2, local_rank=1)
    ranks.agree(ready())
    cases = {
        "rank 1 found 4 images, rank 0 3": ready(images=4, fingerprint="b"),
        "precision fp32 on rank 0, bf16 on rank 1": ready(precision="bf16"),
        "rank 1 sees other files": ready(fingerprint="b"),
        "no such model": Readiness(problem="no such model"),
    }
    for message, mine in cases.items():
        with pytest.raises(UsageError, match=message):
            ranks.agree(mine)
    first.problem = "cuda:0 is not there"
    with pytest.raises(UsageError, match="rank 0 cannot start: cuda:0 is not there"):
        ranks.agree(ready())


@pytest.mark.parametrize("json_lines", [True, False])
def test_rank_0_reports_for_all_and_the_others_hand_over(monkeypatch, json_lines):
    import io

    import torch.distributed as dist
    from rich.console import Console

    from smoothgrad_cli.distributed import Ranks
    from smoothgrad_cli.report import ImageResult, Report

    def report_of(inputs: list[str], failed: list[str]) -> Report:
        report = Report(
            Console(file=io.StringIO(), width=200),
            Console(file=io.StringIO(), width=200),
            json_lines=json_lines,
        )
        for name in inputs:
            report.done(ImageResult(name, skipped=name.startswith("s")))
        for name in failed:
            report.failed(name, "broken")
        return report

    handed = []
    monkeypatch.setattr(dist, "gather_object", lambda mine, into, dst, group: handed.append(mine))
    other = report_of(["a", "b", "s1"], ["bad"])
    Ranks(rank=1, world=2, local_rank=1).meet_at_end(other)
    assert other.finish() == 0 and other.err.file.getvalue().count("\n") == 1  # its error only

    def gathered(mine, into, dst, group):
        into[:] = [mine, handed[0]]

    monkeypatch.setattr(dist, "gather_object", gathered)
    zero = report_of(["c", "s2"], [])
    Ranks(rank=0, world=2, local_rank=0).meet_at_end(zero)
    assert zero.finish() == 1
    assert zero.err.file.getvalue().splitlines()[-1] == (
        "3 images explained, 2 skipped (outputs exist), 1 failed"
    )
    table = zero.out.file.getvalue()
    assert json_lines or all(name in table for name in ("a", "b", "c", "s1", "s2"))
