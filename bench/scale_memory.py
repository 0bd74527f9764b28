"""Memory over a long shard: peak RSS of one `smoothgrad explain` run over 1,000 and over
10,000 tiny images (``--smoothing none -n 1`` on the CPU, so the run is about the
per-image bookkeeping, not the model). A shard of 100,000 images must not need more memory
than one of 1,000 beyond what its lists of names cost.

For each count it builds a folder of 16×16 PNGs in sub-folders of 500, runs the command as a
subprocess, samples the child's resident set every 0.5 s (``/proc/PID/status``) and reads
its peak from ``wait4``. It prints, per run: images, wall time, images/s, peak RSS, and the
RSS at 10 %, 50 % and 90 % of the run, whose rise is the growth per image.

    python bench/scale_memory.py                      # 1,000 and 10,000 images
    python bench/scale_memory.py --counts 1000 -- --workers 2   # arguments after -- go to explain
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        sub = folder / f"part{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(sub / f"{i}.png")


def rss_of(pid: int) -> int | None:
    """The process's resident set in bytes, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run(count: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="scale-memory-") as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        make_folder(src, count)
        command = [
            sys.executable, "-m", "smoothgrad_cli", "explain", str(src), "-o", str(out),
            "--smoothing", "none", "-n", "1", "--device", "cpu", "-q", "--json", *extra,
        ]  # fmt: skip
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
        samples: list[tuple[float, int]] = []

        def sample() -> None:
            while child.poll() is None:
                rss = rss_of(child.pid)
                if rss is not None:
                    samples.append((time.perf_counter() - started, rss))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4: this child's own peak, whatever else this process has run before
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        sampler.join()
        done = sum(1 for _ in out.rglob("*.map.png"))
    at = {}
    for share in (0.1, 0.5, 0.9):
        near = [rss for t, rss in samples if t >= share * wall]
        at[share] = near[0] if near else None
    return {
        "images": count,
        "done": done,
        "exit": child.returncode,
        "wall_s": wall,
        "rate": done / wall,
        "peak_mib": usage.ru_maxrss / 1024,  # Linux: KiB
        "at": {k: (v / 2**20 if v else None) for k, v in at.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    header = f"{'images':>7} {'done':>7} {'exit':>4} {'wall s':>7} {'img/s':>6} {'peak MiB':>9}"
    print(f"{header}  RSS MiB at 10% / 50% / 90%")
    for count in args.counts:
        r = run(count, extra)
        at = " / ".join("?" if v is None else f"{v:.0f}" for v in r["at"].values())
        print(
            f"{r['images']:>7} {r['done']:>7} {r['exit']:>4} {r['wall_s']:>7.1f} "
            f"{r['rate']:>6.1f} {r['peak_mib']:>9.0f}  {at}",
            flush=True,
        )


if __name__ == "__main__":
    main()
