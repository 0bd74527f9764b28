"""Finding images in folders and decoding every odd kind of file into an upright RGB photo.

No model here: these tests are fast and check exact pixel values and exact reasons.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from smoothgrad_cli import images
from smoothgrad_cli.explain import ExplainOptions
from smoothgrad_cli.images import BACKGROUND, ImageError, discover, load_image
from smoothgrad_cli.settings import MapSettings

# --- helpers ----------------------------------------------------------------------------------


def png_bytes(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: any bit depth, and a header that may lie about the size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def touch_tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def relatives(found) -> list[str]:
    return [image.relative.as_posix() for image in found]


def rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def forbid_decoding(monkeypatch) -> None:
    """From now on, fail the test if any pixel data is decoded."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)


# --- discovery --------------------------------------------------------------------------------


def test_walk_is_recursive_sorted_and_filters_extensions(tmp_path):
    touch_tree(
        tmp_path,
        ["b/z.jpg", "a/y.PNG", "c.jpeg", "a/sub/x.webp", "notes.txt", "a/readme.md", "B.bmp"],
    )
    found, missing = discover([str(tmp_path)])
    assert missing == []
    assert relatives(found) == ["B.bmp", "a/sub/x.webp", "a/y.PNG", "b/z.jpg", "c.jpeg"]
    # the same tree gives the same order, however it was made
    assert relatives(discover([str(tmp_path)])[0]) == relatives(found)


def test_pattern_replaces_the_extension_list(tmp_path):
    touch_tree(tmp_path, ["a/one.jpg", "a/two.PNG", "b/three.png", "notes.txt"])
    found, _ = discover([str(tmp_path)], patterns=["*.png"])
    assert relatives(found) == ["a/two.PNG", "b/three.png"]
    found, _ = discover([str(tmp_path)], patterns=["one.*", "*.txt"])
    assert relatives(found) == ["a/one.jpg", "notes.txt"]


def test_symlink_loop_does_not_hang(tmp_path):
    touch_tree(tmp_path, ["a/cat.jpg", "a/b/dog.jpg"])
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a")  # a/b/up → a: a loop
    (tmp_path / "self").symlink_to(tmp_path)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=discover([str(tmp_path)])))
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "discover() hangs on a symlink loop"
    found, missing = result["out"]
    assert relatives(found) == ["a/b/dog.jpg", "a/cat.jpg"]
    assert missing == []


def test_same_name_in_two_folders_gives_two_outputs(tmp_path):
    touch_tree(tmp_path, ["a/cat.jpg", "b/cat.jpg"])
    options = ExplainOptions(inputs=[], output=tmp_path / "out")
    for inputs in ([str(tmp_path)], [str(tmp_path / "a/cat.jpg"), str(tmp_path / "b/cat.jpg")]):
        found, _ = discover(inputs)
        assert relatives(found) == ["a/cat.jpg", "b/cat.jpg"]
        maps = [options.output_names(image.relative)[0]["map"] for image in found]
        assert maps == [tmp_path / "out/a/cat.jpg.map.png", tmp_path / "out/b/cat.jpg.map.png"]


def test_output_tree_mirrors_the_input_tree(tmp_path):
    touch_tree(tmp_path, ["photos/2024/jan/x.jpg", "photos/y.png"])
    found, _ = discover([str(tmp_path / "photos")])
    assert relatives(found) == ["2024/jan/x.jpg", "y.png"]
    found, _ = discover([str(tmp_path / "photos" / "*.png")])
    assert relatives(found) == ["y.png"]
    found, _ = discover([str(tmp_path / "photos" / "**" / "*.jpg")])
    assert relatives(found) == ["2024/jan/x.jpg"]


def test_several_outputs_per_image_have_distinct_predictable_names(tmp_path):
    options = ExplainOptions(
        inputs=[], settings=MapSettings(top_k=3), output=tmp_path, overlay=True, save_raw=True
    )
    names = options.output_names(Path("a/cat.jpg"))
    assert [files for files in names] == [
        {
            "map": tmp_path / f"a/cat.jpg.top{k}.map.png",
            "overlay": tmp_path / f"a/cat.jpg.top{k}.overlay.png",
            "raw": tmp_path / f"a/cat.jpg.top{k}.raw.npy",
        }
        for k in (1, 2, 3)
    ]
    every = [path for files in names for path in files.values()]
    assert len(set(every)) == 9
    # one class: no rank in the names
    assert ExplainOptions(inputs=[], output=tmp_path).output_names(Path("cat.jpg")) == [
        {"map": tmp_path / "cat.jpg.map.png"}
    ]


def test_output_folder_inside_the_input_is_not_searched(tmp_path):
    touch_tree(tmp_path, ["cat.jpg", "smoothgrad_out/cat.jpg.map.png", "smoothgrad_out/a/b.png"])
    found, _ = discover([str(tmp_path)], exclude=[tmp_path / "smoothgrad_out"])
    assert relatives(found) == ["cat.jpg"]
    found, _ = discover([str(tmp_path / "*")], exclude=[tmp_path / "smoothgrad_out"])
    assert relatives(found) == ["cat.jpg"]


def test_folder_named_like_an_image_is_listed_and_searched(tmp_path):
    touch_tree(tmp_path, ["x.jpg/inner.png", "y.png"])
    found, _ = discover([str(tmp_path)])
    assert relatives(found) == ["x.jpg", "x.jpg/inner.png", "y.png"]
    with pytest.raises(ImageError, match="is a folder, not an image"):
        load_image(found[0].path)


def test_missing_inputs_and_unreadable_folders_are_reported(tmp_path, monkeypatch):
    touch_tree(tmp_path, ["ok/a.jpg", "locked/b.jpg"])
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found, missing = discover([str(tmp_path), str(tmp_path / "nope.jpg"), str(tmp_path / "*.gif")])
    assert relatives(found) == ["ok/a.jpg"]
    assert [(Path(m.path).name, m.reason) for m in missing] == [
        ("locked", "cannot read folder (Permission denied)"),
        ("nope.jpg", "no such file or folder"),
        ("*.gif", "no image matches this pattern"),
    ]


# --- bad inputs: one reason each --------------------------------------------------------------


def jpeg_bytes(size=(64, 48), seed=0, **save) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=95, **save)
    return buffer.getvalue()


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"^empty file \(0 bytes\)$"):
        load_image(tmp_path / "empty.jpg")


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ImageError, match=r"^truncated or corrupt image \(.*truncated"):
        load_image(tmp_path / "cut.jpg")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    with pytest.raises(ImageError, match=r"^not an image file Pillow can read$"):
        load_image(tmp_path / "notes.jpg")


def test_folder_named_jpg(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageError, match=r"^is a folder, not an image$"):
        load_image(tmp_path / "x.jpg")


def test_vanished_file_and_broken_link(tmp_path):
    with pytest.raises(ImageError, match=r"^file vanished before it could be read$"):
        load_image(tmp_path / "gone.jpg")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match=r"^broken symbolic link$"):
        load_image(tmp_path / "link.jpg")


def test_permission_denied_simulated(tmp_path, monkeypatch):
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes())

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(images, "open", denied, raising=False)
    with pytest.raises(ImageError, match=r"^permission denied$"):
        load_image(tmp_path / "secret.jpg")


def test_permission_denied_real(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = tmp_path / "secret.jpg"
    path.write_bytes(jpeg_bytes())
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match=r"^permission denied$"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_decompression_bomb_refused_from_the_header(tmp_path, monkeypatch):
    # 100 000 × 100 000 pixels claimed by a header, with almost no data behind it.
    (tmp_path / "bomb.png").write_bytes(png_bytes(100_000, 100_000, 8, 0, b""))
    forbid_decoding(monkeypatch)
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "bomb.png")
    message = str(info.value)
    assert message.startswith("refused before decoding: 10,000,000,000 pixels exceeds")
    assert "--max-pixels 89,478,485" in message and "decompression bomb" in message


def test_max_pixels_refuses_a_normal_image_before_decoding(tmp_path, monkeypatch):
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes((64, 48)))
    forbid_decoding(monkeypatch)
    with pytest.raises(ImageError, match=r"3,072 pixels exceeds the limit \(--max-pixels 3,000\)"):
        load_image(tmp_path / "photo.jpg", max_pixels=3000)


def test_max_pixels_above_pillows_own_limit(tmp_path, monkeypatch):
    """--max-pixels decides, not Pillow's global limit, and Pillow's warning never escapes."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes((64, 48)))  # 3 072 > 2 × Pillow's limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "photo.jpg", max_pixels=5000).size == (64, 48)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # now Pillow would only warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="3,072 pixels exceeds the limit"):
            load_image(tmp_path / "photo.jpg", max_pixels=1500)


# --- odd images that must work ----------------------------------------------------------------


def test_rgb_jpeg_is_returned_as_is(tmp_path):
    (tmp_path / "p.jpg").write_bytes(jpeg_bytes((30, 20)))
    photo = load_image(tmp_path / "p.jpg")
    assert photo.size == (30, 20)
    assert np.array_equal(rgb(photo), np.asarray(Image.open(tmp_path / "p.jpg")))


def test_grayscale(tmp_path):
    values = np.array([[0, 1, 127], [128, 254, 255]], dtype=np.uint8)
    Image.fromarray(values, mode="L").save(tmp_path / "g.png")
    out = rgb(load_image(tmp_path / "g.png"))
    assert out.shape == (2, 3, 3)
    for channel in range(3):
        assert np.array_equal(out[..., channel], values)


def test_palette(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert rgb(load_image(tmp_path / "p.png")).tolist() == [[[10, 20, 30], [200, 100, 0]]]


def test_palette_with_transparency_on_white(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 0] + [0] * 759)
    image.putdata([0, 1, 2])
    image.save(tmp_path / "t.png", transparency=2)  # index 2 (black) is transparent
    image.save(tmp_path / "t.gif", transparency=2)
    for name in ("t.png", "t.gif"):
        assert rgb(load_image(tmp_path / name)).tolist() == [
            [[10, 20, 30], [200, 100, 0], list(BACKGROUND)]
        ], name


def test_rgba_composited_on_white(tmp_path):
    assert BACKGROUND == (255, 255, 255)
    pixels = np.array(
        [[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128], [200, 100, 50, 51]]], dtype=np.uint8
    )
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "a.png")
    out = rgb(load_image(tmp_path / "a.png"))
    # colour · α + white · (1 − α), α = A / 255
    expected = [[255, 255, 255], [0, 0, 255], [127, 127, 127], [244, 224, 214]]
    assert np.abs(out[0] - np.array(expected)).max() <= 1, out[0]


def test_la_composited_on_white(tmp_path):
    pixels = np.array([[[0, 0], [0, 255], [100, 128], [255, 255]]], dtype=np.uint8)
    Image.fromarray(pixels, mode="LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    out = rgb(load_image(tmp_path / "la.png"))
    expected = [255, 0, 177, 255]  # 100·128/255 + 255·127/255 = 177.2
    assert np.abs(out[0] - np.array(expected)[:, None]).max() <= 1, out[0]


def test_cmyk_jpeg(tmp_path):
    colours = [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255), (0, 0, 0, 0)]
    for i, cmyk in enumerate(colours):
        Image.new("CMYK", (16, 16), cmyk).save(tmp_path / f"c{i}.jpg", quality=95)
        assert Image.open(tmp_path / f"c{i}.jpg").mode == "CMYK"
        photo = load_image(tmp_path / f"c{i}.jpg")
        expected = Image.new("CMYK", (1, 1), cmyk).convert("RGB").getpixel((0, 0))
        assert np.abs(rgb(photo)[8, 8] - np.array(expected)).max() <= 3, (cmyk, expected)


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = rgb(load_image(tmp_path / "g16.png"))
    assert out[0, :, 0].tolist() == [0, 1, 4, 128, 255]  # v / 65535 · 255, rounded
    assert np.array_equal(out[..., 0], out[..., 2])


def test_16_bit_grayscale_png_that_is_dark_stays_dark(tmp_path):
    """A 16-bit image whose values all sit below 256 is dark, not an 8-bit image."""
    values = np.array([[0, 100, 255]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "dark.png")
    assert rgb(load_image(tmp_path / "dark.png"))[0, :, 0].tolist() == [0, 0, 1]


def test_16_bit_rgb_png(tmp_path):
    rows = b"\x00" + np.array([[65535, 0, 32768], [0, 32767, 65535]], dtype=">u2").tobytes()
    (tmp_path / "rgb16.png").write_bytes(png_bytes(2, 1, 16, 2, rows))
    out = rgb(load_image(tmp_path / "rgb16.png"))
    assert out.tolist() == [[[255, 0, 128], [0, 127, 255]]]


def test_exif_orientation_is_honoured(tmp_path):
    # Stored 40 wide × 20 high: red left half, blue right half. Orientation 6 says "rotate
    # 90° clockwise to display": shown 20 wide × 40 high with red on top, blue below.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=95)
    photo = load_image(tmp_path / "r.jpg")
    assert photo.size == (20, 40)
    out = rgb(photo)
    assert np.abs(out[5, 10] - [255, 0, 0]).max() <= 3
    assert np.abs(out[34, 10] - [0, 0, 255]).max() <= 3
    # without the tag the same pixels stay as stored
    Image.fromarray(pixels).save(tmp_path / "plain.jpg", quality=95)
    assert load_image(tmp_path / "plain.jpg").size == (40, 20)


def test_animated_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), colour) for colour in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(tmp_path / "a.gif").n_frames == 2
    out = rgb(load_image(tmp_path / "a.gif"))
    assert out.shape == (6, 8, 3)
    assert (out == [255, 0, 0]).all()


def test_animated_png_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), colour) for colour in [(0, 0, 255), (0, 255, 0)]]
    frames[0].save(tmp_path / "a.png", save_all=True, append_images=frames[1:])
    assert getattr(Image.open(tmp_path / "a.png"), "n_frames", 1) == 2
    assert (rgb(load_image(tmp_path / "a.png")) == [0, 0, 255]).all()


def test_tiny_image(tmp_path):
    Image.new("RGB", (10, 7), (1, 2, 3)).save(tmp_path / "tiny.png")
    photo = load_image(tmp_path / "tiny.png")
    assert photo.size == (10, 7)
    assert (rgb(photo) == [1, 2, 3]).all()


def test_bilevel_and_float_images(tmp_path):
    Image.new("1", (4, 3), 1).save(tmp_path / "bw.png")
    assert (rgb(load_image(tmp_path / "bw.png")) == 255).all()
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(
        tmp_path / "f.tiff"
    )
    assert rgb(load_image(tmp_path / "f.tiff"))[0, :, 0].tolist() == [0, 127, 255]
