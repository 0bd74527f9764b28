"""``smoothgrad check`` against hostile specs: goldens written only where they belong, JUnit
reports that stay XML, specs that are not TOML, weights beside the spec, one-line errors."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import textwrap
import xml.dom.minidom
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms._presets import ImageClassification
from typer.testing import CliRunner

from smoothgrad_cli import check
from smoothgrad_cli.check import CheckResult, CheckRun, SpecError, check_main, junit_xml
from smoothgrad_cli.cli import app
from smoothgrad_cli.models import EMBEDDED, LoadedModel, embedded_weights_file, load_model

ROOT = Path(__file__).resolve().parents[1]
COFFEE = ROOT / "sample_images" / "coffee.png"
CHELSEA = ROOT / "sample_images" / "chelsea.png"


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture()
def tiny():
    """A loader of a three-class model on 32×32 inputs: maps cost next to nothing."""

    def load(name, weights):
        torch.manual_seed(0)
        transform = ImageClassification(crop_size=32, resize_size=36)
        return LoadedModel("tiny", "random", _Tiny().eval(), transform, ["a", "b", "c"])

    return load


def _write(folder: Path, text: str, name: str = "spec.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _golden_spec(folder: Path, golden: str) -> Path:
    return _write(
        folder,
        f"""
        [defaults]
        samples = 1
        batch_size = 1
        [[case]]
        name = "g"
        image = "{COFFEE}"
        golden = "{golden}"
        """,
    )


def _tree(top: Path) -> dict[str, tuple]:
    """Every entry under ``top`` (links not followed): its kind, content digest and mtime."""
    entries = {}
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            if path.is_symlink():
                entries[str(path)] = ("link", os.readlink(path), info.st_mtime_ns)
            elif path.is_dir():
                entries[str(path)] = ("dir", None, info.st_mtime_ns)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[str(path)] = ("file", digest, info.st_mtime_ns)
    return entries


@pytest.fixture()
def layout(tmp_path):
    """``specs/`` (where the spec goes) beside ``outside/``, which holds files that are not
    the spec's to touch, and a symlink ``specs/link`` pointing there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("precious, not a golden")
    np.save(outside / "marker.npy", np.ones((2, 2), dtype=np.float32))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "link").symlink_to(outside, target_is_directory=True)
    (specs / "loop").symlink_to("loop")
    (specs / "notes.txt").write_text("my notes")
    np.save(specs / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return tmp_path


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, lines
    assert "\x1b" not in text
    return lines[0]


# ---------------------------------------------------------------------------------------------
# 1. --update-golden writes only golden maps, only inside the spec's folder


@pytest.mark.parametrize(
    ("golden", "reason"),
    [
        ("../outside/victim.txt", "is outside the spec's folder"),
        ("../outside/marker.npy", "is outside the spec's folder"),  # even over a .npy
        ("../outside/new.npy", "is outside the spec's folder"),
        ("../made/up/x.npy", "is outside the spec's folder"),  # no folder is created either
        ("ABSOLUTE", "is outside the spec's folder"),
        ("link/escaped.npy", "is outside the spec's folder"),  # symlink to outside/
        ("link/victim.txt", "is outside the spec's folder"),
        ("notes.txt", "exists and is not a .npy golden map: not overwriting it"),
        ("pickled.npy", "exists and is not a .npy golden map"),  # needs pickle to load
        ("loop/x.npy", "cannot resolve loop/x.npy (Symlink loop"),
    ],
)
def test_update_golden_never_writes_outside_or_over_other_files(
    layout, tiny, capsys, golden, reason
):
    if golden == "ABSOLUTE":
        golden = str(layout / "outside" / "absolute.npy")
    spec = _golden_spec(layout / "specs", golden)
    before = _tree(layout)
    code = check_main(spec, update_golden=True, device="cpu", loader=tiny)
    captured = capsys.readouterr()
    assert _tree(layout) == before  # nothing created, replaced or touched, anywhere
    assert code == 2
    line = _one_line(captured.err)
    assert line.startswith(f'smoothgrad: error: {spec}: case "g": golden: ')
    assert reason in line
    assert captured.out == ""  # refused before any map was computed


def test_outside_goldens_need_the_flag_and_an_existing_folder(layout, tiny, capsys):
    outside = layout / "outside"
    spec = _golden_spec(layout / "specs", "../outside/new.npy")
    allowed = {"update_golden": True, "allow_outside_spec_folder": True, "device": "cpu"}
    assert check_main(spec, **allowed, loader=tiny) == 0
    assert np.load(outside / "new.npy", allow_pickle=False).shape == (3, 32, 32)
    assert (outside / "victim.txt").read_text() == "precious, not a golden"
    capsys.readouterr()

    for golden, reason in (
        ("../outside/victim.txt", "exists and is not a .npy golden map"),
        ("../made/up/x.npy", "does not exist"),
    ):
        spec = _golden_spec(layout / "specs", golden)
        before = _tree(layout)
        code = check_main(spec, **allowed, loader=tiny)
        assert code == 2 and _tree(layout) == before
        assert reason in _one_line(capsys.readouterr().err)
    assert not (layout / "made").exists()


def test_update_golden_inside_the_spec_folder_still_works(layout, tiny, capsys):
    specs = layout / "specs"
    spec = _golden_spec(specs, "new/deeper/g.npy")  # missing sub-folders inside are made
    outside = _tree(layout / "outside")
    assert check_main(spec, update_golden=True, device="cpu", loader=tiny) == 0
    first = np.load(specs / "new" / "deeper" / "g.npy", allow_pickle=False)
    # an existing golden is refreshed, and checking against it passes
    assert check_main(spec, update_golden=True, device="cpu", loader=tiny) == 0
    assert check_main(spec, device="cpu", loader=tiny) == 0
    np.testing.assert_array_equal(np.load(specs / "new" / "deeper" / "g.npy"), first)
    assert _tree(layout / "outside") == outside
    # a plain check may read a golden outside the folder: only writing is confined
    np.save(layout / "outside" / "read.npy", first)
    assert check_main(_golden_spec(specs, "../outside/read.npy"), device="cpu", loader=tiny) == 0
    capsys.readouterr()


def test_cli_refuses_outside_goldens_before_loading_any_model(layout):
    spec = _golden_spec(layout / "specs", "../outside/victim.txt")
    before = _tree(layout / "outside")
    result = CliRunner().invoke(app, ["check", str(spec), "--update-golden"])
    assert result.exit_code == 2, result.output
    assert "--allow-outside-spec-folder" in _one_line(result.stderr)
    spec = _golden_spec(layout / "specs", "../made/x.npy")
    result = CliRunner().invoke(
        app, ["check", str(spec), "--update-golden", "--allow-outside-spec-folder"]
    )
    assert result.exit_code == 2
    assert f"folder {layout / 'made'} does not exist" in _one_line(result.stderr)
    assert _tree(layout / "outside") == before and not (layout / "made").exists()
    shown = CliRunner().invoke(app, ["check", "--help"]).stdout
    assert "--allow-outside-spec-folder" in shown
    assert "[defaults] and [[case]]" in shown  # not eaten as rich markup


# ---------------------------------------------------------------------------------------------
# 2. JUnit XML stays well-formed whatever the names hold

HOSTILE = {
    "nul\x00byte": "nul\\x00byte",
    "esc\x1b[31mred": "esc\\x1b[31mred",
    "bell\x07": "bell\\x07",
    "not\ufffea-char": "not\\ufffea-char",
    "ffff\uffff": "ffff\\uffff",
    "lone\udcffbyte": "lone\\udcffbyte",  # a file-name byte that is not UTF-8
    "lone\ud800high": "lone\\ud800high",
    "fine: é 🐈 tab\tok": "fine: é 🐈 tab\tok",
}


def test_junit_xml_parses_with_control_characters_and_surrogates():
    results = []
    for name in HOSTILE:
        results.append(
            CheckResult(name, "pointing", False, "x", "y", message=f"m {name}", image=f"/i/{name}")
        )
        results.append(CheckResult(name, "sanity", True, f"rho {name}", "< 0.5", image=name))
    data = junit_xml(CheckRun(results=results, seconds=1.0, device="cpu\x1b"))
    xml.dom.minidom.parseString(data)  # a second, stricter parser
    root = ET.fromstring(data)
    cases = root.findall("testsuite/testcase")
    assert [c.get("classname") for c in cases] == [v for v in HOSTILE.values() for _ in (1, 2)]
    for case, shown in zip(cases[::2], HOSTILE.values(), strict=True):
        failure = case.find("failure")
        assert failure.get("message") == f"m {shown}"
        assert failure.text.splitlines()[0] == f"/i/{shown}"
    assert root.find("testsuite/properties/property").get("value") == "cpu\\x1b"


def _one_case_spec(folder: Path, name: str) -> Path:
    """A spec of one cheap case on the tiny model, named ``name`` (TOML basic-string text)."""
    return _write(
        folder,
        f"""
        [defaults]
        samples = 1
        batch_size = 1
        [[case]]
        name = "{name}"
        image = "{COFFEE}"
        expect_class = "a"
        top_k = 3
        """,
    )


def test_junit_report_of_a_spec_with_escapes_in_its_names(tmp_path, tiny, capsys):
    spec = _one_case_spec(tmp_path, "esc\\u001b[31m \\u0000 name")
    report = tmp_path / "junit.xml"
    assert check_main(spec, junit=report, device="cpu", loader=tiny) == 0
    case = ET.parse(report).getroot().find("testsuite/testcase")
    assert case.get("classname") == "esc\\x1b[31m \\x00 name"
    assert "\x1b" not in capsys.readouterr().err


def test_junit_is_written_even_when_stdout_has_gone(tmp_path, tiny, monkeypatch):
    """``check --json --junit F | head -1``: the reader leaves after one line, the next write
    fails, the command ends there; the JUnit report CI asked for is already on disk."""
    from smoothgrad_cli import report as report_module

    class GoneReader(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    real = report_module.stdout_console

    def gone():
        console = real()
        console.file = GoneReader()
        return console

    monkeypatch.setattr(report_module, "stdout_console", gone)
    spec = _one_case_spec(tmp_path, "one")
    junit = tmp_path / "junit.xml"
    with pytest.raises(BrokenPipeError):
        check_main(spec, junit=junit, json_lines=True, device="cpu", loader=tiny)
    assert ET.parse(junit).getroot().find("testsuite/testcase").get("classname") == "one"


# ---------------------------------------------------------------------------------------------
# 3. files that are not TOML specs


def _not_specs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(b"\xff\xfe[[case]]\nname = 'caf\xe9'\n")
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    deep_tables = tmp_path / "deep-tables.toml"
    deep_tables.write_text("a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n")
    return {
        "latin1": (latin, "not a TOML spec: not UTF-8 text (byte 0xff at offset 0)"),
        "image": (CHELSEA, "not a TOML spec: not UTF-8 text (byte 0x89 at offset 0)"),
        "deep": (deep, "not a TOML spec: arrays or tables nested too deeply"),
        "deep-tables": (deep_tables, "not a TOML spec: arrays or tables nested too deeply"),
    }


@pytest.mark.parametrize("kind", ["latin1", "image", "deep", "deep-tables"])
def test_files_that_are_not_toml_specs_exit_2_with_one_line(tmp_path, kind):
    path, message = _not_specs(tmp_path)[kind]
    with pytest.raises(SpecError) as info:
        check.parse_spec(path)
    assert str(info.value) == f"{path}: {message}"
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.exception
    assert _one_line(result.stderr) == f"smoothgrad: error: {path}: {message}"


@pytest.mark.parametrize("kind", ["image", "deep"])
def test_not_a_spec_in_a_real_process(tmp_path, kind):
    path, message = _not_specs(tmp_path)[kind]
    done = subprocess.run(
        [sys.executable, "-m", "smoothgrad_cli", "check", str(path)],
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr.decode(errors="replace")
    assert done.stderr.decode() == f"smoothgrad: error: {path}: {message}\n"
    assert done.stdout == b""


# ---------------------------------------------------------------------------------------------
# 4. weights files are relative to the spec, as images are


def _weights_spec(folder: Path, weights: str, model: str = EMBEDDED) -> Path:
    return _write(
        folder,
        f"""
        [defaults]
        model = "{model}"
        weights = "{weights}"
        [[case]]
        name = "w"
        image = "{COFFEE}"
        expect_class = "espresso"
        """,
    )


def test_weights_file_is_found_beside_the_spec(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "project" / "checks"
    spec = _weights_spec(folder, "w.pt")
    shutil.copyfile(embedded_weights_file(), folder / "w.pt")  # the embedded model, re-saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    asked = []

    def loader(name, weights):
        asked.append(weights)
        return load_model(name, weights)

    code = check_main(spec, device="cpu", loader=loader)
    assert code == 0, capsys.readouterr().err
    assert asked == [str(folder / "w.pt")]


def test_weights_names_stay_names_and_paths_follow_the_spec(tmp_path):
    folder = tmp_path / "checks"
    for weights in ("DEFAULT", "IMAGENET1K_V1"):
        spec = _weights_spec(folder, weights, model="resnet18")
        assert check.parse_spec(spec).cases[0].settings.weights == weights
    for weights, expected in (
        ("w.pt", folder / "w.pt"),
        ("models/w", folder / "models" / "w"),
        ("../shared/w.pth", folder / ".." / "shared" / "w.pth"),
        (str(tmp_path / "abs.pt"), tmp_path / "abs.pt"),
    ):
        spec = _weights_spec(folder, weights)
        assert check.parse_spec(spec).cases[0].settings.weights == str(expected)
    (folder / "plain").write_bytes(b"")  # no suffix, no separator: a file because it exists
    assert check.parse_spec(_weights_spec(folder, "plain")).cases[0].settings.weights == str(
        folder / "plain"
    )


# ---------------------------------------------------------------------------------------------
# 5. spec errors are one line whatever the names hold


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            f'name = "two\\nlines\\u001b[2J"\nimage = "{COFFEE}"\nsanity = true\n[[case]]\n'
            f'name = "two\\nlines\\u001b[2J"\nimage = "{COFFEE}"\nsanity = true',
            "case 'two\\nlines\\x1b[2J': name: used by an earlier case",
        ),
        (
            'name = "cup"\nimage = "no\\nsuch\\u001b[31m.png"\nsanity = true',
            'case "cup": image: file not found: ',
        ),
        (
            f'name = "cup"\nimage = "{COFFEE}"\nmask = "m\\n\\u001b.png"\npointing = true',
            'case "cup": mask: file not found: ',
        ),
        (
            f'name = "a\\u001b]0;title\\u0007"\nimage = "{COFFEE}"\nexpect_class = 1\ntop_k = 0',
            "case 'a\\x1b]0;title\\x07': top_k: must be >= 1",
        ),
    ],
)
def test_spec_errors_stay_on_one_line(tmp_path, case, expected):
    spec = _write(tmp_path, f"[[case]]\n{case}\n")
    with pytest.raises(SpecError) as info:
        check.parse_spec(spec)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert expected in str(info.value)
    result = CliRunner().invoke(app, ["check", str(spec)])
    assert result.exit_code == 2
    assert expected in _one_line(result.stderr)


def test_spec_file_name_with_a_newline_stays_on_one_line(tmp_path):
    spec = _write(tmp_path, "[[case]\nname = ", name="bad\nname\x1b[1m.toml")
    result = CliRunner().invoke(app, ["check", str(spec)])
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert "bad\\nname\\x1b[1m.toml" in line and "not valid TOML" in line
