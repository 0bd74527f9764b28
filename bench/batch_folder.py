"""The closing figure of the batch issue: one `smoothgrad explain` run over a generated folder
of 1,000+ images with about 5% broken files.

It builds the folder (random-sized crops of the sample photos and noise pictures, JPEG and
PNG, in sub-folders, with odd-but-valid kinds mixed in and ~5% broken files of every kind the
runner must survive), runs the command as a subprocess, then checks the manifest: every good
image done, every broken one reported with the expected reason. It prints images found, done,
failed by reason, exit code, wall time, images/s and the child's peak RSS.

    python bench/batch_folder.py                       # 1,000 images, -n 1 --smoothing none
    python bench/batch_folder.py --images 2000 -- -n 2  # arguments after -- go to explain
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"

# broken kind → the start of the reason the run must give
BROKEN = {
    "empty": "empty file (0 bytes)",
    "truncated": "truncated or corrupt image",
    "text": "not an image file Pillow can read",
    "folder": "is a folder, not an image",
    "bomb": "refused before decoding",
    "zip": "not an image file Pillow can read",
}


def bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def make_folder(folder: Path, count: int, broken_share: float, seed: int) -> dict[str, str]:
    """Write ``count`` entries below ``folder``; → {relative path: expected reason or ""}."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.*")) if p.suffix in
              (".png", ".jpg")]  # fmt: skip
    n_broken = round(count * broken_share)
    kinds = ["broken"] * n_broken + ["good"] * (count - n_broken)
    rng.shuffle(kinds)
    expected: dict[str, str] = {}
    odd = ["gray", "palette", "rgba", "la", "cmyk", "exif", "gif", "tiny", "constant", "deep16"]
    for i, kind in enumerate(kinds):
        sub = folder / f"set{i % 12:02d}" / ("nested" if i % 5 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        if kind == "broken":
            what = list(BROKEN)[i % len(BROKEN)]
            name = f"img{i:05d}.{'png' if what == 'bomb' else 'jpg'}"
            path = sub / name
            if what == "empty":
                path.write_bytes(b"")
            elif what == "truncated":
                buffer = io.BytesIO()
                Image.fromarray(nrng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(
                    buffer, "JPEG", quality=90
                )
                path.write_bytes(buffer.getvalue()[: buffer.tell() // 2])
            elif what == "text":
                path.write_text("not a picture, just text with a .jpg name\n")
            elif what == "folder":
                path.mkdir()
            elif what == "bomb":
                path.write_bytes(bomb_png(30_000, 30_000))
            else:
                # a zip archive saved under an image name
                path.write_bytes(b"PK\x03\x04" + nrng.integers(0, 256, 4096, np.uint8).tobytes())
            expected[path.relative_to(folder).as_posix()] = BROKEN[what]
            continue
        width, height = rng.randint(48, 400), rng.randint(48, 400)
        if rng.random() < 0.7:
            photo = rng.choice(photos)
            w, h = min(width, photo.width), min(height, photo.height)
            left, top = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
            image = photo.crop((left, top, left + w, top + h))
        else:
            image = Image.fromarray(nrng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        variant = odd[i % len(odd)] if i % 10 == 3 else "plain"
        fmt = "JPEG" if rng.random() < 0.6 else "PNG"
        save: dict = {"quality": 88} if fmt == "JPEG" else {}
        if variant == "gray":
            image = image.convert("L")
        elif variant == "palette":
            image, fmt, save = image.quantize(64), "PNG", {}
        elif variant == "rgba":
            image, fmt, save = image.convert("RGBA"), "PNG", {}
            image.putalpha(Image.linear_gradient("L").resize(image.size))
        elif variant == "la":
            image, fmt, save = image.convert("LA"), "PNG", {}
        elif variant == "cmyk":
            image, fmt = image.convert("CMYK"), "JPEG"
            save = {"quality": 88}
        elif variant == "exif":
            exif = Image.Exif()
            exif[0x0112] = rng.choice([3, 6, 8])
            fmt, save = "JPEG", {"quality": 88, "exif": exif}
        elif variant == "gif":
            fmt, save = "GIF", {"save_all": True, "append_images": [image.rotate(90)]}
        elif variant == "tiny":
            image = image.resize((rng.randint(5, 20), rng.randint(5, 20)))
        elif variant == "constant":
            image = Image.new("RGB", image.size, (120, 130, 140))
        elif variant == "deep16":
            image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
            fmt, save = "PNG", {}
        suffix = {"JPEG": "jpg", "PNG": "png", "GIF": "gif"}[fmt]
        path = sub / f"img{i:05d}.{suffix}"
        image.save(path, fmt, **save)
        expected[path.relative_to(folder).as_posix()] = ""
    return expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--broken", type=float, default=0.05, help="share of broken files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, help="work here and keep it (default: a temp)")
    parser.add_argument("explain_args", nargs="*", help="after --: options for explain")
    args = parser.parse_args()
    explain_args = args.explain_args or ["-n", "1", "--smoothing", "none"]

    work = (args.folder or Path(tempfile.mkdtemp(prefix="smoothgrad-batch-"))).resolve()
    src, out = work / "images", work / "maps"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    expected = make_folder(src, args.images, args.broken, args.seed)
    made = time.perf_counter() - started
    n_bad = sum(1 for reason in expected.values() if reason)
    print(f"folder: {len(expected)} entries ({n_bad} broken) in {made:.1f} s under {src}")

    command = [sys.executable, "-m", "smoothgrad_cli", "explain", str(src), "-o", str(out)]
    command += ["-q", "--device", "cpu", *explain_args]
    print("command:", " ".join(command[1:]))
    print(f"machine: {os.cpu_count()} CPU cores, torch threads default")
    started = time.perf_counter()
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux

    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    by_input = {Path(x["input"]).relative_to(src).as_posix(): x for x in lines}
    done = [k for k, x in by_input.items() if x["status"] == "ok"]
    failed = {k: x["error"] for k, x in by_input.items() if x["status"] == "error"}
    reasons = collections.Counter(reason.split(" (")[0].split(":")[0] for reason in failed.values())
    good = {k for k, reason in expected.items() if not reason}
    missed = sorted(good - set(done))
    wrong = sorted(
        k for k, reason in expected.items() if reason and not failed.get(k, "").startswith(reason)
    )
    error_lines = [x for x in process.stderr.splitlines() if x.startswith("error: ")]

    print(f"images found:   {len(by_input)} by the run ({len(expected)} entries made)")
    print(f"done:           {len(done)} (good images expected: {len(good)})")
    print(f"failed:         {len(failed)} (broken files made: {n_bad})")
    for reason, count in reasons.most_common():
        print(f"  {count:4d}  {reason}")
    print(f"error lines on stderr: {len(error_lines)}")
    print(f"exit code:      {process.returncode}")
    print(f"wall time:      {wall:.1f} s (model load included)")
    print(
        f"images/s:       {len(expected) / wall:.2f} (all entries), {len(done) / wall:.2f} (done)"
    )
    print(f"peak RSS:       {peak_mib:.0f} MiB")
    print(f"summary line:   {process.stderr.strip().splitlines()[-1]}")
    ok = not missed and not wrong and process.returncode == (1 if n_bad else 0)
    if missed:
        print(f"NOT DONE: {missed[:10]}")
    if wrong:
        print(f"WRONG OR MISSING REASON: {[(k, failed.get(k)) for k in wrong[:10]]}")
    print("check:", "every good image done, every broken one reported" if ok else "FAILED")
    if args.folder is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
