"""torchrun for real: 2 ranks on the gloo backend, spawned by the tests, rendezvous on the
loopback address only (``GLOO_SOCKET_IFNAME=lo``, ``--master-addr 127.0.0.1``).

Maps are compared with a single process's byte for byte. On the CPU a map depends on the
number of threads a process computes with (the order of float sums): every rank here has one
(``OMP_NUM_THREADS=1``, torchrun's own choice with 2 ranks a node), and so has the
single-process reference.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_scale import explain, make_images, maps_below

from smoothgrad_cli.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
FAST = ["-n", "2", "--batch-size", "4", "--device", "cpu", "-q"]
GOOD = [f"set{i % 2}/img {i}.png" for i in range(8)]
SUMMARY = re.compile(r"^(interrupted: )?\d+ images? explained")

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, port: int, nproc: int = 2, node: int | None = None) -> subprocess.Popen:
    """``torchrun … -m smoothgrad_cli explain ARGS``; ``node``: one of two machines."""
    nodes = ["--nnodes", "1"] if node is None else ["--nnodes", "2", "--node-rank", str(node)]
    where = ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    command = [str(TORCHRUN), *nodes, "--nproc-per-node", str(nproc), *where, "-m"]
    command += ["smoothgrad_cli", "explain", *args]
    # torchrun sets one thread per rank only for 2 ranks a node or more; the same for all here
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 400) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{err[-3000:]}")
    return process.returncode, out, err


def summaries(*stderr: str) -> list[str]:
    return [line for text in stderr for line in text.splitlines() if SUMMARY.match(line)]


def single_thread_run(src: Path, out: Path, *args: str) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's ranks
    try:
        result = explain(str(src), "-o", str(out), *args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Eight images in two folders, names with spaces, and one process's maps of them."""
    root = tmp_path_factory.mktemp("torchrun")
    src = root / "in"
    make_images(src, GOOD)
    single_thread_run(src, root / "reference", *FAST)
    return src, root / "reference"


def test_two_ranks_do_every_image_once_with_one_summary_and_one_manifest(reference, tmp_path):
    """… and a bad file in one rank's part makes the job's exit code 1."""
    good, expected = reference
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, GOOD)
    (src / "set1" / "broken.png").write_text("not an image")
    code, stdout, stderr = finish(
        torchrun(str(src), "-o", str(out), *FAST, "--json", port=free_port())
    )
    assert code == 1, stderr[-3000:]
    results = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(r["input"] for r in results) == sorted(
        [str(src / n) for n in GOOD] + [str(src / "set1" / "broken.png")]
    )  # each result once, from the rank that did it
    assert [r["status"] for r in results].count("error") == 1
    assert summaries(stderr) == ["8 images explained, 1 failed"]
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        f"error: {src / 'set1' / 'broken.png'}: not an image file Pillow can read"
    ]
    assert maps_below(out) == maps_below(expected)  # byte for byte
    entries = read_manifest(out / "manifest.jsonl")
    assert sorted(e["input"] for e in entries) == sorted(r["input"] for r in results)
    assert {e["part"] for e in entries} == {"rank-0", "rank-1"}  # both ranks worked
    assert sorted(p.name for p in out.glob("manifest*")) == ["manifest.jsonl"]


def test_two_machines_over_the_loopback_with_a_file_list(reference, tmp_path):
    """``--nnodes 2 --node-rank 0|1``: two torchrun agents as two machines would run them,
    inputs from ``--files-from``, the table (not JSON): rank 0's node prints it, whole, with
    the summary; the other node prints nothing but its own errors (none)."""
    src, expected = reference
    out = tmp_path / "out"
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{src / name}\n" for name in GOOD))
    port = free_port()
    args = ["--files-from", str(listed), "-o", str(out), *FAST]
    nodes = [torchrun(*args, port=port, nproc=1, node=n) for n in (0, 1)]
    (code0, out0, err0), (code1, out1, err1) = [finish(p) for p in nodes]
    assert (code0, code1) == (0, 0), err0[-2000:] + err1[-2000:]
    assert summaries(err0, err1) == ["8 images explained"] == summaries(err0)
    for name in GOOD:
        assert out0.count(str(src / name)) == 1
    assert out1 == ""
    assert maps_below(out) == maps_below(expected)
    entries = read_manifest(out / "manifest.jsonl")
    assert sorted(e["relative"] for e in entries) == sorted(GOOD)
    assert {e["part"] for e in entries} == {"rank-0", "rank-1"}


# --- a rank killed mid-run, then the job restarted ------------------------------------------

KILL = [f"k{i:02d}.png" for i in range(16)]
KILL_ARGS = ["-n", "4", "--batch-size", "4", "--device", "cpu", "-q"]


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v[5:]) for v in environ if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def started(out: Path) -> bool:
    """Some maps written and recorded: a kill now stops the job part-way, with work to skip."""
    lines = sum(p.read_bytes().count(b"\n") for p in out.glob("manifest.rank-*.jsonl"))
    return lines >= 2


def test_a_rank_killed_mid_run_then_restarted_with_skip_existing_finishes_the_job(tmp_path):
    src, out, expected = tmp_path / "in", tmp_path / "out", tmp_path / "expected"
    make_images(src, KILL, side=32)
    single_thread_run(src, expected, *KILL_ARGS)
    job = torchrun(str(src), "-o", str(out), *KILL_ARGS, port=free_port())
    deadline = time.monotonic() + 300
    victim = None
    while victim is None and time.monotonic() < deadline and job.poll() is None:
        if started(out):  # kill -9 rank 1 now
            victim = next((p for p in descendants(job.pid) if rank_of(p) == 1), None)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.01)
    code, _, stderr = finish(job)
    assert victim is not None, "rank 1 was never seen at work"
    assert code != 0, stderr[-2000:]
    killed = sorted(p.name for p in out.glob("*.map.png"))
    assert 1 <= len(killed) < len(KILL), "the job was not stopped part-way"
    for name in killed:  # whole files only
        with Image.open(out / name) as image:
            image.load()
    parts = sorted(p.name for p in out.glob("manifest.rank-*.jsonl"))
    assert parts == ["manifest.rank-0.jsonl", "manifest.rank-1.jsonl"]  # no merge: no meeting
    recorded = {e["relative"] for p in parts for e in read_manifest(out / p)}
    before = {n: (out / f"{n}.map.png").stat().st_mtime_ns for n in recorded}

    resumed = torchrun(
        str(src), "-o", str(out), *KILL_ARGS, "--skip-existing", "--json", port=free_port()
    )
    code, stdout, stderr = finish(resumed)
    assert code == 0, stderr[-3000:]
    results = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(Path(r["input"]).name for r in results) == KILL
    assert {Path(r["input"]).name for r in results if r["status"] == "skipped"} == recorded
    assert {n: (out / f"{n}.map.png").stat().st_mtime_ns for n in recorded} == before
    assert maps_below(out) == maps_below(expected)  # the union equals a clean run
    entries = read_manifest(out / "manifest.jsonl")
    assert sorted(e["relative"] for e in entries if e["status"] == "ok") == KILL  # once each
    assert sorted(p.name for p in out.glob("manifest*")) == ["manifest.jsonl"]
    assert not list(out.rglob("*.tmp"))
    redone = len(KILL) - len(recorded)
    explained = f"{redone} image{'s' if redone != 1 else ''} explained"
    assert summaries(stderr) == [f"{explained}, {len(recorded)} skipped (outputs exist)"]
    assert recorded  # (the kill came once work was recorded, so some was skipped)
