"""Folder runs against what an adversarial trial threw at them: file names that are not UTF-8
or hold control characters, names too long for their outputs, a disk that fills while the
manifest is written, a resume after ``kill -9``, models that give NaN, library warnings,
signals during start-up and twice in a row, and an output folder that holds the inputs.

In-process runs use Typer's runner with the embedded model and 2 samples; the signal tests
start real processes (together, to share their start-up time)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms._presets import ImageClassification
from typer.testing import CliRunner

from smoothgrad_cli import explainer, files, images, names, outputs
from smoothgrad_cli.cli import app
from smoothgrad_cli.explain import pipeline
from smoothgrad_cli.models import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
FAST = ["-n", "2", "--batch-size", "4", "--device", "cpu", "-q"]


def noise_png(path: Path | str, seed: int, size: int = 24) -> None:
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path, format="PNG")


def explain(*args: str):
    return CliRunner().invoke(app, ["explain", *args], catch_exceptions=False)


def manifest_lines(out: Path) -> list[dict]:
    data = (out / "manifest.jsonl").read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the manifest ends in a cut line"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]  # strict UTF-8


# --- 3, 12: names that are bytes, not text ----------------------------------------------------


def test_a_name_that_is_not_utf8_is_recorded_losslessly_and_the_run_goes_on(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    raw = b"caf\xe9-latin1.png"  # Latin-1 é: not UTF-8
    bad_name = os.fsdecode(raw)
    noise_png(os.path.join(os.fsencode(src), raw), 1)
    noise_png(src / "z-later.png", 2)  # sorted after it: must still be done

    result = explain(str(src), "-o", str(out), *FAST, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [os.fsencode(Path(x["input"]).name) for x in lines] == [raw, b"z-later.png"]
    entries = manifest_lines(out)
    assert [os.fsencode(Path(e["input"]).name) for e in entries] == [raw, b"z-later.png"]
    # the outputs carry the same bytes, and the manifest names them exactly
    map_file = os.path.join(os.fsencode(out), raw + b".map.png")
    assert os.path.isfile(map_file)
    assert [os.fsencode(p) for p in entries[0]["outputs"]] == [map_file]
    # a table run shows the name escaped, on one line
    table = CliRunner().invoke(
        app, ["explain", str(src), "-o", str(tmp_path / "out2"), *FAST], env={"COLUMNS": "400"}
    )
    assert table.exit_code == 0, table.output
    assert "caf\\udce9-latin1.png" in table.stdout and bad_name not in table.stdout


def test_names_with_newlines_and_escapes_give_one_error_line(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    evil = "bad\nname\x1b[31m.jpg"
    (src / evil).write_bytes(b"")
    noise_png(src / "good.png", 3)
    result = explain(str(src), "-o", str(out), *FAST)
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {names.shown(src / evil)}: empty file (0 bytes)"]
    assert "\\n" in errors[0] and "\\x1b" in errors[0]
    assert len(result.stderr.strip().splitlines()) == 2  # the error and the summary


def test_library_warnings_are_one_line_each_through_the_report(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        noise_png(src / f"{i}.png", i)
    real_load = images.load_image

    def load_with_a_warning(path, *args, **kwargs):
        warnings.warn("a decoder complains\nover two lines", UserWarning, stacklevel=1)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "load_image", load_with_a_warning)
    result = explain(str(src), "-o", str(out), *FAST)
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    # once, though three images (in decode threads) raised it; no source line after it
    assert lines == ["warning: UserWarning: a decoder complains over two lines", lines[-1]]
    assert lines[-1] == "3 images explained"


# --- 4: names too long for their outputs ------------------------------------------------------


def test_over_long_names_get_short_collision_free_outputs_and_resume(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shared = "é" * 115  # 230 bytes of UTF-8, the same start for both
    long_names = [shared + "-first.png", shared + "-second.png", "x" * 251 + ".png"]
    for i, name in enumerate(long_names):
        noise_png(src / name, 10 + i)
    result = explain(str(src), "-o", str(out), *FAST, "--overlay", "--save-raw", "--json")
    assert result.exit_code == 0, result.output
    made = sorted(p.name for p in out.iterdir() if p.name != "manifest.jsonl")
    assert len(made) == 9 and all(len(os.fsencode(n)) <= 255 for n in made)
    for name in long_names:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        stem = outputs.output_stem(name)
        assert stem.endswith("~" + digest) and name.startswith(stem[: -len(digest) - 1])
        assert {f"{stem}.map.png", f"{stem}.overlay.png", f"{stem}.raw.npy"} <= set(made)
    # the manifest says where each went
    for entry in manifest_lines(out):
        stem = outputs.output_stem(Path(entry["input"]).name)
        assert [Path(p).name for p in entry["outputs"]] == [
            f"{stem}.map.png",
            f"{stem}.overlay.png",
            f"{stem}.raw.npy",
        ]
    again = explain(str(src), "-o", str(out), *FAST, "--overlay", "--save-raw", "--json")
    resumed = explain(
        str(src), "-o", str(out), *FAST, "--overlay", "--save-raw", "--json", "--skip-existing"
    )
    assert again.exit_code == 0 and resumed.exit_code == 0, resumed.output
    assert [json.loads(x)["status"] for x in resumed.stdout.splitlines()] == ["skipped"] * 3


def test_short_names_keep_their_outputs_names():
    assert outputs.output_stem("cat.jpg") == "cat.jpg"
    fits = "a" * (outputs.NAME_MAX - outputs.SUFFIX_ROOM)
    assert outputs.output_stem(fits) == fits
    assert outputs.output_stem(fits + "b") != fits + "b"


def test_temporaries_fit_beside_outputs_of_any_length(tmp_path):
    """An output name of 242–255 bytes is written whole, though its temporary name would have
    been 14 bytes longer; a killed run's temporary of it is still found and removed."""
    for length in (241, 242, 250, 255):
        path = tmp_path / ("m" * (length - 8) + ".map.png")
        files.atomic_write(path, b"data")
        assert path.read_bytes() == b"data"
    long = tmp_path / ("n" * 247 + ".map.png")
    stale = tmp_path / f".{files.temporary_stem(long.name)}.abcd1234.tmp"
    stale.write_bytes(b"half")
    other = tmp_path / ".someone-else.png.abcd1234.tmp"
    other.write_bytes(b"not ours")
    assert outputs.remove_stale_temporaries([long]) == 1
    assert not stale.exists() and other.exists()


# --- 6: a disk that fills while the manifest is written ---------------------------------------


@contextlib.contextmanager
def tiny_filesystem(folder: Path, size: str):
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_disk_full_while_writing_the_manifest_leaves_whole_lines_and_no_traceback(tmp_path):
    """The manifest on a file system of one page (4 KiB), the maps elsewhere (through a
    link): the disk fills part-way through a manifest line."""
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    for i in range(12):
        noise_png(src / "a" / f"{i:02d}.png", i)
    maps = tmp_path / "maps"
    maps.mkdir()
    with tiny_filesystem(tmp_path / "out", "4k") as out:
        (out / "a").symlink_to(maps)
        result = CliRunner().invoke(app, ["explain", str(src), "-o", str(out), *FAST])
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: {out / 'manifest.jsonl'}: cannot write the manifest "
            "(No space left on device); stopping the run"
        ]
        entries = manifest_lines(out)  # whole lines only
        assert 1 <= len(entries) < 12
        assert all(e["status"] == "ok" for e in entries)


def test_a_line_cut_by_an_older_crash_is_dropped_when_the_manifest_reopens(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    noise_png(src / "a.png", 1)
    noise_png(src / "b.png", 2)
    assert explain(str(src / "a.png"), "-o", str(out), *FAST).exit_code == 0
    with open(out / "manifest.jsonl", "ab") as handle:
        handle.write(b'{"input": "half a li')
    assert explain(str(src / "b.png"), "-o", str(out), *FAST).exit_code == 0
    assert [Path(e["input"]).name for e in manifest_lines(out)] == ["a.png", "b.png"]


# --- 8: outputs on disk, no manifest line ------------------------------------------------------


def test_resume_gives_a_manifest_line_to_outputs_the_manifest_does_not_know(tmp_path):
    """What a ``kill -9`` between the last write and the manifest line leaves: complete
    outputs without their line. The resume does that image again (the same map) and records
    it; the images recorded are skipped untouched."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        noise_png(src / f"{i}.png", i)
    assert explain(str(src), "-o", str(out), *FAST).exit_code == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text(lines[0] + "\n" + lines[2] + "\n")  # 1.png lost
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.png")}
    result = explain(str(src), "-o", str(out), *FAST, "--skip-existing", "--json")
    assert result.exit_code == 0, result.output
    statuses = {
        Path(json.loads(x)["input"]).name: json.loads(x)["status"]
        for x in result.stdout.splitlines()
    }
    assert statuses == {"0.png": "skipped", "1.png": "ok", "2.png": "skipped"}
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert {n: v[0] for n, v in after.items()} == {n: v[0] for n, v in before.items()}
    assert after["0.png.map.png"] == before["0.png.map.png"]  # not rewritten
    assert sorted(Path(e["input"]).name for e in manifest_lines(out)) == ["0.png", "1.png", "2.png"]
    # and from another folder, spelt another way: recorded by place, not by spelling
    elsewhere = explain(
        os.path.relpath(src, ROOT), "-o", str(out), *FAST, "--skip-existing", "--json"
    )
    assert [json.loads(x)["status"] for x in elsewhere.stdout.splitlines()] == ["skipped"] * 3


# --- 9: a model that gives NaN ----------------------------------------------------------------


class _NaNForBright(torch.nn.Module):
    """Logits log(0.5 − mean): NaN for images brighter than mid-grey, a gradient otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.linspace(1.0, 2.0, 4))

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3), keepdim=False)
        return torch.log(0.5 - mean)[:, None] * self.scale


def test_non_finite_scores_or_maps_fail_that_image_with_a_reason(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.new("RGB", (16, 16), (250, 250, 250)).save(src / "bright.png")
    Image.new("RGB", (16, 16), (10, 10, 10)).save(src / "dark.png")
    transform = ImageClassification(crop_size=16, resize_size=16, mean=(0, 0, 0), std=(1, 1, 1))

    def load_model(name, weights):
        categories = [f"class {i}" for i in range(4)]
        return LoadedModel("nan-model", "random", _NaNForBright().eval(), transform, categories)

    monkeypatch.setattr(explainer, "load_model", load_model)
    result = explain(str(src), "-o", str(out), *FAST, "--json")
    assert result.exit_code == 1, result.output
    assert "NaN" not in result.stdout.replace("NaN or inf", "")  # strict JSON on stdout
    by_name = {Path(json.loads(x)["input"]).name: json.loads(x) for x in result.stdout.splitlines()}
    assert by_name["bright.png"]["status"] == "error"
    assert by_name["bright.png"]["error"] == "the model's scores are not finite (NaN or inf)"
    assert by_name["dark.png"]["status"] == "ok"
    assert not (out / "bright.png.map.png").exists()
    for line in (out / "manifest.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the manifest"))


# --- 14: the output folder holds the inputs ---------------------------------------------------


@pytest.mark.parametrize("where", ["same", "parent"])
def test_an_input_inside_the_output_folder_is_a_usage_error_that_says_why(tmp_path, where):
    src = tmp_path / "photos"
    src.mkdir()
    noise_png(src / "a.png", 1)
    out = src if where == "same" else tmp_path
    result = CliRunner().invoke(app, ["explain", str(src), "-o", str(out), *FAST])
    assert result.exit_code == 2
    verb = "is" if where == "same" else "is inside"
    assert result.stderr.strip() == (
        f"smoothgrad: error: {src} {verb} the output folder {out}, which is never searched "
        "for images: give another --output"
    )


# --- 13: signals during start-up and twice in a row --------------------------------------------


def _handles_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (Linux: SigCgt in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(
        (line.split()[1] for line in status.splitlines() if line.startswith("SigCgt")), "0"
    )
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


@pytest.fixture(scope="module")
def signalled_runs(tmp_path_factory):
    """Two real runs started together: one gets SIGTERM during start-up (torch still
    loading), the other two SIGTERMs 20 ms apart once its first map is on disk."""
    root = tmp_path_factory.mktemp("signals")
    src = root / "in"
    src.mkdir()
    for i in range(8):
        noise_png(src / f"img{i}.png", 100 + i, size=32)
    command = [sys.executable, "-m", "smoothgrad_cli", "explain", str(src), "-n", "4", "-q"]
    command += ["--device", "cpu", "--batch-size", "4"]
    runs = {}
    for name in ("start-up", "twice"):
        out = root / name
        process = subprocess.Popen(
            [*command, "-o", str(out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs[name] = (process, out)
    # Once the process handles SIGTERM (its entry point's first step), torch still has
    # seconds to load: wait for that, however slow the machine, rather than a fixed time.
    starting = runs["start-up"][0]
    give_up = time.monotonic() + 60
    while not _handles_sigterm(starting.pid) and time.monotonic() < give_up:
        time.sleep(0.01)
    starting.send_signal(signal.SIGTERM)
    process, out = runs["twice"]
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if list(out.glob("*.map.png")):
            process.send_signal(signal.SIGTERM)
            time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    results = {}
    for name, (process, out) in runs.items():
        try:
            _, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        results[name] = (process.returncode, stderr, out)
    return results


def test_sigterm_during_start_up_exits_130_with_the_summary(signalled_runs):
    code, stderr, out = signalled_runs["start-up"]
    assert code == 130, stderr
    assert "Traceback" not in stderr
    # stopped while the command line loads ("interrupted") or torch does (with the summary)
    assert stderr.strip().splitlines()[-1] in ("interrupted", "interrupted: 0 images explained")


def test_a_second_sigterm_does_not_cut_the_clean_up_short(signalled_runs):
    code, stderr, out = signalled_runs["twice"]
    assert code == 130, stderr
    assert "Traceback" not in stderr
    done = sorted(out.glob("*.map.png"))
    assert 1 <= len(done) < 8
    assert stderr.strip().splitlines()[-1].startswith("interrupted: ")
    assert len(manifest_lines(out)) == len(done)
    assert not list(out.rglob("*.tmp"))


_STOPPED_INSIDE_C = """
import ctypes, sys
import smoothgrad_cli.cli
from smoothgrad_cli import __main__ as entry


def main():
    # What torch does while it loads: Python code run from C by PyRun_String. A SIGTERM
    # landing there leaves CPython's sticky "unhandled KeyboardInterrupt" flag set.
    run = ctypes.pythonapi.PyRun_String
    run.restype = ctypes.py_object
    run.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
    code = b"import os, signal\\nos.kill(os.getpid(), signal.SIGTERM)\\nwhile True: pass\\n"
    try:
        run(code, 257, {}, {})  # 257: Py_file_input
    except KeyboardInterrupt:
        print("interrupted: 0 images explained", file=sys.stderr)
        sys.exit(130)


smoothgrad_cli.cli.main = main
entry.run()
"""


def test_a_stop_inside_code_that_c_runs_still_exits_130_under_python_m(tmp_path):
    """CPython kills a ``python -m`` process with SIGINT at its very end once a
    KeyboardInterrupt has passed through ``PyRun_String``, whatever ``sys.exit`` said; the
    entry point must keep its 130 (torchrun starts every rank with ``-m``)."""
    package = tmp_path / "stopped_inside_c"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(_STOPPED_INSIDE_C)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    done = subprocess.run(
        [sys.executable, "-m", "stopped_inside_c"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted: 0 images explained\n"
