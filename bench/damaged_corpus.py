"""How many damaged image files `load_image` refuses, against a plain Pillow load.

Builds a corpus in a temporary folder: the four sample photos and photo-like random pictures,
encoded as baseline, progressive, restart-interval, grayscale, CMYK and 4:4:4 JPEGs, then
damaged (cut at many fractions with and without an end-of-image marker after the cut, a
header that claims 9000 × 9000 over 25 KB of data, bytes flipped or junk inserted in the
entropy-coded data), and PNG, WebP, GIF and TIFF files cut or with bytes flipped. For each
kind of damage it prints how many files a plain Pillow load accepted (the old way: the
decoder pads missing data with grey and says nothing), how many `load_image` refuses, and of
those it still accepts how many are visibly damaged (over 1 % of the pixels more than 24
levels off the undamaged file's); then every valid file of the corpus, which must all load
with Pillow's exact pixels (the exit status is 1 if one does not).

    python bench/damaged_corpus.py             # the corpus and the table (about a minute)
    python bench/damaged_corpus.py --timing    # also the decode cost, old and new, per size
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import random
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smoothgrad_cli.images import ImageError, _to_rgb, load_image  # noqa: E402

SAMPLES = ROOT / "sample_images"
CUTS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
EOI = b"\xff\xd9"


def photo_like(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Smooth colour fields with edges and grain: compresses about as a photo does."""
    coarse = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), float)
    image += rng.normal(0, 12, image.shape)
    image[height // 3 : height // 2, width // 4 :] *= 0.5  # a hard edge
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


JPEG_KINDS = {
    "baseline": lambda im: jpeg(im, quality=90),
    "baseline-q50-opt": lambda im: jpeg(im, quality=50, optimize=True),
    "progressive": lambda im: jpeg(im, quality=90, progressive=True),
    "restart": lambda im: jpeg(im, quality=90, restart_marker_blocks=4),
    "progressive-restart": lambda im: jpeg(im, quality=85, progressive=True, restart_marker_rows=1),
    "grayscale": lambda im: jpeg(im.convert("L"), quality=90),
    "cmyk-progressive": lambda im: jpeg(im.convert("CMYK"), quality=90, progressive=True),
    "444": lambda im: jpeg(im, quality=95, subsampling=0),
}


SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def scan_data(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan's entropy-coded data: a walk over the segments from SOI,
    each scan's data running from its SOS header to the first marker that is no RSTn."""
    spans, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] != 0xD9:
        code, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
        if code == 0xDA:
            end = SCAN_END.search(data, pos)
            spans.append((pos, end.start() if end else len(data)))
            pos = spans[-1][1]
    return spans


def in_scan(data: bytes, rng: random.Random, margin: int = 0) -> int:
    """A random offset inside the entropy-coded data, weighted by size."""
    spans = [(a + margin, b - margin) for a, b in scan_data(data) if b - a > 2 * margin + 1]
    a, b = rng.choices(spans, weights=[b - a for a, b in spans])[0]
    return rng.randrange(a, b)


def flip(data: bytes, rng: random.Random, count: int) -> bytes:
    damaged = bytearray(data)
    for _ in range(count):
        at = in_scan(data, rng)
        damaged[at] ^= rng.randrange(1, 256)
    return bytes(damaged)


def huge_header(image: Image.Image) -> bytes:
    """A JPEG whose header says 9000 × 9000 over about 25 KB of scan data: a small photo's
    scan with its frame header patched (81 M pixels: under the 89 M bomb limit)."""
    for quality in (90, 70, 50, 30, 15, 5):
        data = jpeg(image, quality=quality)
        if len(data) <= 30_000:
            break
    sof = data.index(b"\xff\xc0") + 5
    return data[:sof] + (9000).to_bytes(2, "big") * 2 + data[sof + 4 :]


def damaged_jpegs(name: str, data: bytes, rng: random.Random):
    for cut in CUTS:
        body = data[: int(len(data) * cut)]
        yield f"JPEG {name}: cut, end marker appended", body + EOI
        if cut in (0.3, 0.5, 0.8, 0.95):
            yield f"JPEG {name}: cut", body
    for _ in range(4):
        yield "JPEG: 1 byte flipped in the scan data", flip(data, rng, 1)
    for _ in range(2):
        yield "JPEG: 16 bytes flipped in the scan data", flip(data, rng, 16)
    at = in_scan(data, rng)
    yield (
        "JPEG: 200 random bytes inserted in the scan data",
        (data[:at] + rng.randbytes(200).replace(b"\xff", b"\xfe") + data[at:]),
    )
    at = in_scan(data, rng, margin=300)
    yield "JPEG: 512 bytes of the scan data zeroed", data[:at] + bytes(512) + data[at + 512 :]
    at = in_scan(data, rng)
    yield "JPEG: 4 KB of the scan data deleted", data[:at] + data[at + 4096 :]


def damaged_others(image: Image.Image, rng: random.Random):
    files = {
        "PNG": encode(image, "PNG"),
        "WebP": encode(image, "WEBP", quality=80),
        "GIF": encode(image.convert("P"), "GIF"),
        "TIFF": encode(image, "TIFF", compression="tiff_lzw"),
    }
    for fmt, data in files.items():
        for cut in (0.3, 0.5, 0.8, 0.95):
            yield fmt, f"{fmt}: cut", data[: int(len(data) * cut)]
        damaged = bytearray(data)
        for _ in range(8):
            at = rng.randrange(len(data) // 4, len(data))
            damaged[at] ^= rng.randrange(1, 256)
        yield fmt, f"{fmt}: 8 bytes flipped", bytes(damaged)
        yield fmt, f"{fmt}: junk appended (valid image)", data + rng.randbytes(1000)


def pillow_loads(path: Path) -> bool:
    """The old way: Pillow decodes it without an error."""
    try:
        with Image.open(path) as image:
            image.seek(0)
            image.load()
        return True
    except Exception:
        return False


def surplus_restarts(image: Image.Image) -> bytes:
    """Valid pixels, odd tail: restart intervals past the last block, as some scanners write."""
    data = jpeg(image, quality=90, restart_marker_blocks=4)
    count = len(re.findall(rb"\xff[\xd0-\xd7]", data))
    junk = bytes([0x12, 0x34] * 200)
    extra = bytes([0xFF, 0xD0 + count % 8]) + junk + bytes([0xFF, 0xD0 + (count + 1) % 8]) + junk
    return data[:-2] + extra + EOI


def build(folder: Path, seed: int):
    """(kind, path, valid, path of the undamaged file or None) for every file of the corpus."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    sources = {p.stem: Image.open(p).convert("RGB") for p in photos}
    for i, (h, w) in enumerate([(224, 224), (300, 451), (480, 640), (1000, 750)]):
        sources[f"random{i}"] = photo_like(nrng, h, w)
    exif = Image.Exif()
    exif[0x0112] = 6
    extra_valid = {
        "exif-rotated": lambda im: jpeg(im, quality=90, exif=exif),
        "422": lambda im: jpeg(im, quality=90, subsampling=1),
        "progressive-gray-restart": lambda im: jpeg(
            im.convert("L"), progressive=True, restart_marker_blocks=1
        ),
        "restart, surplus intervals": surplus_restarts,
        "tiny": lambda im: jpeg(im.resize((7, 5)), quality=90),
        "flat-grey": lambda im: jpeg(Image.new("RGB", im.size, (128, 128, 128))),
    }
    files = []

    def add(kind: str, name: str, data: bytes, valid: bool, clean: Path | None = None) -> Path:
        path = folder / f"{len(files):05d}.{name}"
        path.write_bytes(data)
        files.append((kind, path, valid, clean))
        return path

    for image in sources.values():
        for kind, make in {**JPEG_KINDS, **extra_valid}.items():
            data = make(image)
            clean = add(f"valid JPEG {kind}", "jpg", data, True)
            if kind in JPEG_KINDS:
                for damage, damaged in damaged_jpegs(kind, data, rng):
                    add(damage, "jpg", damaged, False, clean)
        add("JPEG: header claims 9000 x 9000 over ~25 KB", "jpg", huge_header(image), False)
        for fmt in ("PNG", "WebP", "GIF", "TIFF"):
            add(f"valid {fmt}", fmt.lower(), encode(image, fmt.upper()), True)
        for fmt, damage, damaged in damaged_others(image, rng):
            add(damage, fmt.lower(), damaged, "valid" in damage)
    if "rocket" in sources:
        add("valid JPEG sample rocket.jpg", "jpg", (SAMPLES / "rocket.jpg").read_bytes(), True)
    return files


def visibly_damaged(path: Path, clean: Path) -> bool:
    """More than 1 % of the pixels off by more than 24 levels from the undamaged file's."""
    with Image.open(path) as damaged, Image.open(clean) as original:
        a, b = (np.asarray(_to_rgb(im), dtype=np.int16) for im in (damaged, original))
    return a.shape != b.shape or (np.abs(a - b).max(axis=-1) > 24).mean() > 0.01


@contextlib.contextmanager
def quiet_stderr():
    """libtiff prints its complaints on file descriptor 2; they say nothing the table does."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def table(files) -> int:
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    reasons: collections.Counter = collections.Counter()
    wrong = 0
    with quiet_stderr():
        for kind, path, valid, clean in files:
            row = rows[kind]
            row["files"] += 1
            row["old accepted"] += pillow_loads(path)
            try:
                image = load_image(path)
            except ImageError as error:
                row["refused"] += 1
                if valid:
                    wrong += 1
                    print(f"WRONGLY REFUSED {kind} {path.name}: {error}")
                reasons[re.sub(r"\d+", "N", str(error))] += 1
                continue
            if valid:
                with Image.open(path) as reference:
                    same = np.array_equal(np.asarray(_to_rgb(reference)), np.asarray(image))
                row["pixels differ"] += not same
                wrong += not same
            elif clean is not None:
                row["visibly damaged"] += visibly_damaged(path, clean)
    width = max(len(kind) for kind in rows)
    print(
        f"{'kind of file':{width}}  files  old: accepted  new: refused  still accepted"
        "  (visibly damaged)"
    )
    for kind in sorted(rows, key=lambda k: ("valid" in k, k)):
        row = rows[kind]
        accepted = row["files"] - row["refused"]
        seen = f"({row['visibly damaged']})" if "visibly damaged" in row else ""
        note = f"  PIXELS DIFFER: {row['pixels differ']}" if row["pixels differ"] else ""
        print(
            f"{kind:{width}}  {row['files']:5}  {row['old accepted']:13}  {row['refused']:12}"
            f"  {accepted:14}  {seen:>17}{note}"
        )
    damaged = [row for kind, row in rows.items() if "valid" not in kind]
    total, refused = sum(r["files"] for r in damaged), sum(r["refused"] for r in damaged)
    old = sum(r["old accepted"] for r in damaged)
    valid = sum(row["files"] for kind, row in rows.items() if "valid" in kind)
    print(
        f"\ndamaged files: {total}; a plain Pillow load accepted {old}; load_image refuses "
        f"{refused}, accepts {total - refused}"
    )
    print(f"valid files: {valid}; wrongly refused or with other pixels than Pillow's: {wrong}")
    print("\nreasons given:")
    for reason, count in reasons.most_common():
        print(f"  {count:5}  {reason}")
    return wrong


def timing() -> None:
    """Decode cost per image: a plain Pillow load (what load_image did before) against
    load_image, best of several runs each, alternating."""
    rng = np.random.default_rng(1)
    print("\ndecode cost per image (best of n, one thread):")
    with tempfile.TemporaryDirectory() as tmp:
        for label, (h, w), runs in (("224 x 224", (224, 224), 50), ("12 MP", (3000, 4000), 5)):
            image = photo_like(rng, h, w)
            for kind in ("baseline", "progressive", "restart"):
                path = Path(tmp) / f"{kind}.jpg"
                path.write_bytes(JPEG_KINDS[kind](image))

                def old(path=path):
                    with Image.open(path) as im:
                        im.load()
                        return _to_rgb(im)

                best = [float("inf")] * 2
                for _ in range(runs):
                    for i, run in enumerate((old, lambda path=path: load_image(path))):
                        begin = time.perf_counter()
                        run()
                        best[i] = min(best[i], time.perf_counter() - begin)
                old_ms, new_ms = best[0] * 1000, best[1] * 1000
                print(
                    f"  {label:9} {kind:11} {path.stat().st_size / 1e6:5.2f} MB: Pillow "
                    f"{old_ms:7.2f} ms, load_image {new_ms:7.2f} ms "
                    f"({new_ms - old_ms:+.2f} ms, {new_ms / old_ms - 1:+.0%})"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", action="store_true", help="also measure the decode cost")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Pillow's warnings on broken files
    with tempfile.TemporaryDirectory() as tmp:
        begin = time.perf_counter()
        files = build(Path(tmp), args.seed)
        print(f"corpus: {len(files)} files built in {time.perf_counter() - begin:.0f} s\n")
        wrong = table(files)
    if args.timing:
        timing()
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
