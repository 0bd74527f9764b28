"""Damaged images are refused with a one-line reason; odd-but-valid ones load as before.

libjpeg only warns when a scan's data ends early, padding the rest with grey, and Pillow
drops the warning: such files decoded "fine" and were explained with confidence. Every
damaged file here is made from a real photo; every valid one must give Pillow's own pixels.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from smoothgrad_cli.cli import app
from smoothgrad_cli.images import ImageError, load_image

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
EOI = b"\xff\xd9"

TRUNCATED = "truncated or corrupt image (JPEG data truncated: "
PREMATURE_END = TRUNCATED + "premature end of data segment)"
RESTARTS_MISSING = TRUNCATED + "restart markers missing)"
SCANS_MISSING = TRUNCATED + "scans missing)"
HEADER_CUT = TRUNCATED + "a header segment is cut short)"
CORRUPT = "truncated or corrupt image (corrupt JPEG data: "
EXTRANEOUS = CORRUPT + "extraneous bytes in a scan)"
OUT_OF_SEQUENCE = CORRUPT + "restart markers out of sequence)"
STRAY_RESTART = CORRUPT + "a restart marker where none belongs)"

#: kind of JPEG → how it is saved
KINDS = {
    "baseline": {},
    "progressive": {"progressive": True},
    "restart": {"restart_marker_blocks": 4},
    "progressive-restart": {"progressive": True, "restart_marker_rows": 1},
    "grayscale": {"mode": "L"},
    "cmyk-progressive": {"mode": "CMYK", "progressive": True},
    "444": {"subsampling": 0},
}
#: with restart markers, a cut shows in the structure already, before anything is decoded
CUT_REASON = {"restart": RESTARTS_MISSING, "progressive-restart": RESTARTS_MISSING}


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(SAMPLES / "coffee.png").convert("RGB")


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **{"quality": 90, **options})
    return buffer.getvalue()


def encode(photo: Image.Image, kind: str) -> bytes:
    options = dict(KINDS[kind])
    return jpeg(photo.convert(options.pop("mode", "RGB")), **options)


def scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan's entropy-coded data: a walk over the segments from SOI,
    each scan running from its SOS header to the first marker that is no RSTn."""
    spans, pos = [], 2
    while data[pos] == 0xFF and data[pos + 1] != 0xD9:
        code, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
        if code == 0xDA:
            end = re.compile(rb"\xff[^\x00\xd0-\xd7]").search(data, pos).start()
            spans.append((pos, end))
            pos = end
    return spans


def largest_scan(data: bytes) -> tuple[int, int]:
    return max(scans(data), key=lambda span: span[1] - span[0])


def write(tmp_path: Path, data: bytes, name: str = "damaged.jpg") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ImageError) as caught:
        load_image(path)
    return str(caught.value)


# --- cut short ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("share", [0.3, 0.5, 0.8])
def test_cut_with_an_end_marker_appended_is_refused(tmp_path, photo, kind, share):
    data = encode(photo, kind)
    path = write(tmp_path, data[: int(len(data) * share)] + EOI)
    assert refusal(path) == CUT_REASON.get(kind, PREMATURE_END)


@pytest.mark.parametrize("kind", KINDS)
def test_plain_cut_is_refused(tmp_path, photo, kind):
    data = encode(photo, kind)
    path = write(tmp_path, data[: len(data) // 2])
    assert refusal(path) == CUT_REASON.get(kind, PREMATURE_END)


@pytest.mark.parametrize("kind", ["baseline", "progressive"])
def test_whole_scans_without_the_end_marker_are_refused(tmp_path, photo, kind):
    data = encode(photo, kind)[:-2]
    assert refusal(write(tmp_path, data)) == TRUNCATED + "no end-of-image marker)"


def test_the_old_grey_file_decoded_without_a_word(tmp_path, photo):
    """What the review found: Pillow on its own decodes the cut file, the rest of it grey."""
    data = encode(photo, "baseline")
    path = write(tmp_path, data[: int(len(data) * 0.3)] + EOI)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels == 128).all(axis=-1).mean() > 0.5
    assert refusal(path) == PREMATURE_END


def test_header_claiming_9000_x_9000_over_25_kb_is_refused(tmp_path):
    """81 M pixels pass the bomb check (89 M); the scan's data covers a sliver of them."""
    data = jpeg(Image.open(SAMPLES / "rocket.jpg"), quality=75)
    sof = data.index(b"\xff\xc0") + 5  # marker, length, precision: then height and width
    data = data[:sof] + (9000).to_bytes(2, "big") * 2 + data[sof + 4 : 25_000] + EOI
    path = write(tmp_path, data)
    with Image.open(path) as image:
        assert image.size == (9000, 9000)
    assert refusal(path) == PREMATURE_END


def test_progressive_with_its_last_scan_left_out_is_refused(tmp_path, photo):
    data = encode(photo, "progressive")
    last = data.rindex(b"\xff\xda")  # the last scan's header; everything before it is whole
    assert refusal(write(tmp_path, data[:last] + EOI)) == SCANS_MISSING


def test_progressive_cut_inside_a_header_between_scans_is_refused(tmp_path, photo):
    data = encode(photo, "progressive")
    second = scans(data)[1][0]
    header = data.rindex(b"\xff\xda", 0, second)
    assert refusal(write(tmp_path, data[: header + 6] + EOI)) == HEADER_CUT


# --- corrupt in the middle --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["baseline", "progressive", "grayscale", "444"])
def test_scan_data_cut_out_of_the_middle_is_refused(tmp_path, photo, kind):
    data = encode(photo, kind)
    start, end = largest_scan(data)
    a, b = start + (end - start) // 3, start + (end - start) * 2 // 3
    assert refusal(write(tmp_path, data[:a] + data[b:])) == PREMATURE_END


@pytest.mark.parametrize("kind", ["baseline", "progressive", "grayscale", "444"])
def test_scan_data_repeated_in_the_middle_is_refused(tmp_path, photo, kind):
    """The decoder has all its blocks long before the scan's data ends."""
    data = encode(photo, kind)
    start, end = largest_scan(data)
    a, b = start + (end - start) // 3, start + (end - start) * 2 // 3
    assert refusal(write(tmp_path, data[:b] + data[a:])) == EXTRANEOUS


@pytest.mark.parametrize("kind", ["baseline", "progressive"])
def test_end_marker_written_over_the_middle_of_the_scan_is_refused(tmp_path, photo, kind):
    data = encode(photo, kind)
    start, end = largest_scan(data)
    middle = (start + end) // 2
    middle += data[middle - 1] == 0xFF  # never right after an 0xFF: that would be stuffed
    damaged = data[:middle] + EOI + data[middle + 2 :]
    assert refusal(write(tmp_path, damaged)).startswith(TRUNCATED)


def test_restart_markers_out_of_sequence_are_refused(tmp_path, photo):
    data = encode(photo, "restart")
    start, _ = scans(data)[0]
    first, second = data.index(b"\xff\xd1", start), data.index(b"\xff\xd2", start)
    damaged = bytearray(data)
    damaged[first + 1], damaged[second + 1] = 0xD2, 0xD1
    assert refusal(write(tmp_path, bytes(damaged))) == OUT_OF_SEQUENCE


def test_restart_marker_in_a_scan_without_restarts_is_refused(tmp_path, photo):
    data = encode(photo, "baseline")
    start, end = largest_scan(data)
    middle = (start + end) // 2
    middle += data[middle - 1] == 0xFF
    damaged = data[:middle] + b"\xff\xd3" + data[middle + 2 :]
    assert refusal(write(tmp_path, damaged)) == STRAY_RESTART


# --- valid files: loaded, with Pillow's own pixels ---------------------------------------------


def surplus_restarts(photo: Image.Image) -> bytes:
    """Restart intervals past the last block, as some scanners write: odd, but whole."""
    data = jpeg(photo, restart_marker_blocks=4)
    count = len(re.findall(rb"\xff[\xd0-\xd7]", data[scans(data)[0][0] :]))
    junk = bytes([0x12, 0x34] * 200)
    extra = bytes([0xFF, 0xD0 + count % 8]) + junk + bytes([0xFF, 0xD0 + (count + 1) % 8]) + junk
    return data[:-2] + extra + EOI


def valid_jpegs(photo: Image.Image) -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    small = photo.crop((100, 50, 301, 190))
    return {
        "stray-bytes-before-the-end": jpeg(photo)[:-2] + b"\x00\x00" + EOI,
        "surplus-restarts": surplus_restarts(photo),
        "baseline": jpeg(photo),
        "progressive": jpeg(photo, progressive=True),
        "progressive-optimized": jpeg(photo, progressive=True, optimize=True, quality=75),
        "restart-blocks": jpeg(photo, restart_marker_blocks=1),
        "restart-rows": jpeg(photo, restart_marker_rows=2),
        "progressive-restart": jpeg(photo, progressive=True, restart_marker_blocks=3),
        "grayscale": jpeg(photo.convert("L")),
        "grayscale-progressive": jpeg(photo.convert("L"), progressive=True),
        "cmyk": jpeg(photo.convert("CMYK")),
        "cmyk-progressive": jpeg(photo.convert("CMYK"), progressive=True),
        "exif-rotated": jpeg(small, exif=exif),
        "exif-rotated-progressive": jpeg(small, exif=exif, progressive=True),
        "444": jpeg(photo, subsampling=0),
        "422": jpeg(photo, subsampling=1),
        "420": jpeg(photo, subsampling=2),
        "quality-1": jpeg(photo, quality=1),
        "quality-100": jpeg(photo, quality=100, subsampling=0),
        "odd-size": jpeg(photo.crop((0, 0, 17, 9)), progressive=True, restart_marker_blocks=1),
        "one-pixel": jpeg(photo.crop((0, 0, 1, 1))),
        "flat-grey": jpeg(Image.new("RGB", (64, 40), (128, 128, 128))),
        "rocket.jpg": (SAMPLES / "rocket.jpg").read_bytes(),
    }


def test_valid_jpegs_load_with_pillows_own_pixels(tmp_path, photo):
    for name, data in valid_jpegs(photo).items():
        path = write(tmp_path, data, f"{name}.jpg")
        with Image.open(path) as image:
            expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        loaded = load_image(path)
        assert loaded.mode == "RGB", name
        assert np.array_equal(np.asarray(loaded), expected), name
    rotated = load_image(tmp_path / "exif-rotated.jpg")
    assert rotated.size == (140, 201)  # upright: stored 201 × 140


def test_mpo_loads_its_first_frame(tmp_path, photo):
    path = tmp_path / "stereo.mpo"
    photo.save(path, "MPO", save_all=True, append_images=[photo.rotate(180)])
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(np.asarray(load_image(path)), expected)
    data = path.read_bytes()
    assert refusal(write(tmp_path, data[: len(data) // 4] + EOI, "cut.mpo")) == PREMATURE_END


# --- other formats: Pillow refuses these itself; they must stay refused ------------------------


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "TIFF"])
def test_other_formats_cut_in_half_are_refused(tmp_path, photo, fmt):
    buffer = io.BytesIO()
    photo.save(buffer, fmt)
    data = buffer.getvalue()
    path = write(tmp_path, data[: len(data) // 2], f"cut.{fmt.lower()}")
    with pytest.raises(ImageError):
        load_image(path)
    assert load_image(write(tmp_path, data + bytes(100), f"padded.{fmt.lower()}")).size == (
        photo.size
    )


# --- through the command line -----------------------------------------------------------------


def test_explain_reports_the_truncated_jpeg_as_failed(tmp_path, photo):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    data = encode(photo, "baseline")
    (src / "good.jpg").write_bytes(data)
    (src / "grey.jpg").write_bytes(data[: len(data) // 2] + EOI)
    args = ["explain", str(src), "-o", str(out), "-n", "2", "--smoothing", "none"]
    # --batch-size: no timed probe of the chunk size, which a run alone would wait for
    result = CliRunner().invoke(
        app, [*args, "--device", "cpu", "-q", "--json", "--batch-size", "2"]
    )
    assert result.exit_code == 1, result.output
    lines = {Path(line["input"]).name: line for line in map(json.loads, result.stdout.splitlines())}
    assert lines["good.jpg"]["status"] == "ok"
    assert lines["grey.jpg"]["status"] == "error"
    assert lines["grey.jpg"]["error"] == PREMATURE_END
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {src / 'grey.jpg'}: {PREMATURE_END}"]
    assert not (out / "grey.jpg.map.png").exists()
    assert (out / "good.jpg.map.png").exists()
