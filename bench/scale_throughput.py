"""One process against torchrun's ranks on the same folder and machine.

It builds a folder of small images, then times, each as a subprocess: the plain command
(the threads torch takes by default), the plain command with one thread, and
``torchrun --nproc-per-node R`` (torchrun gives each rank one thread). Start-up (importing
torch, loading the model, the ranks' meeting) is part of each wall time, as a user sees it;
the rate over the work alone is the images over the time between the first and the last map
written. Maps are compared between the runs, byte for byte where the threads are the same.

    python bench/scale_throughput.py                        # 48 images, -n 10, 2 ranks
    python bench/scale_throughput.py --images 200 --ranks 4 -- --workers 2  # after --: explain's
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def make_folder(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(command: list[str], out: Path, env: dict[str, str]) -> dict:
    started = time.time()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    times = sorted(p.stat().st_mtime for p in out.rglob("*.map.png"))
    work = times[-1] - times[0] if len(times) > 1 else float("nan")
    return {"wall": wall, "maps": len(times), "work": work}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--ranks", type=int, default=2)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    explain = ["explain", "-n", "10", "--batch-size", "8", "--device", "cpu", "-q", *extra]
    with tempfile.TemporaryDirectory(prefix="scale-throughput-") as tmp:
        src = Path(tmp) / "in"
        make_folder(src, args.images)
        base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        loopback = ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
        runs = {
            "1 process": ([sys.executable, "-m", "smoothgrad_cli"], base),
            "1 process, 1 thread": (
                [sys.executable, "-m", "smoothgrad_cli"],
                {**base, "OMP_NUM_THREADS": "1"},
            ),
            f"torchrun, {args.ranks} ranks": (
                [str(TORCHRUN), "--nproc-per-node", str(args.ranks), *loopback, "-m"]
                + ["smoothgrad_cli"],
                {**base, "GLOO_SOCKET_IFNAME": "lo"},
            ),
        }
        print(f"{args.images} images of 64×64, {' '.join(explain[1:])}, {os.cpu_count()} CPUs")
        print(f"{'run':<24} {'wall s':>7} {'img/s':>6} {'work s':>7} {'img/s':>6}")
        outputs = {}
        for name, (command, env) in runs.items():
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            r = timed([*command, *explain, str(src), "-o", str(out)], out, env)
            outputs[name] = out
            print(
                f"{name:<24} {r['wall']:>7.1f} {r['maps'] / r['wall']:>6.2f} "
                f"{r['work']:>7.1f} {r['maps'] / r['work']:>6.2f}",
                flush=True,
            )
        one, ranked = list(outputs.values())[1:]
        same = all((one / p.name).read_bytes() == p.read_bytes() for p in ranked.glob("*.map.png"))
        print(f"maps of 1 thread and of the ranks byte-identical: {same}")


if __name__ == "__main__":
    main()
