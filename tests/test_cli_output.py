"""What the commands print, as a user or a log reads it: ``--help`` (no type after a flag, the
usage line), tables that never fold a path outside a terminal, the model's rank and top-1
beside a ``--target``, the progress bar's last line in a log, a quiet end when stdout's
reader goes away (``| head -1``), and ``models`` with a pattern that matches nothing."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from smoothgrad_cli import report
from smoothgrad_cli.check.reports import CheckResult, CheckRun, results_table
from smoothgrad_cli.cli import app
from smoothgrad_cli.cli.app import ProgressBar
from smoothgrad_cli.explainer import Explanation
from smoothgrad_cli.report import ImageResult, MapResult, Prediction, Report

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # in case CI forces colour (FORCE_COLOR, GITHUB_ACTIONS)
CHEAP = ["-n", "1", "--smoothing", "none", "--batch-size", "1", "-q", "--device", "cpu"]


def run(*args, **env):
    """``smoothgrad ARGS`` through Typer's runner (stdout is not a terminal)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def help_of(*command: str) -> str:
    result = run(*command, "--help", COLUMNS="100")
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.stdout)


def options_of(name: str) -> list[str]:
    command = typer.main.get_command(app).commands[name]
    return [opt for p in command.params if p.param_type_name == "option" for opt in p.opts]


@pytest.fixture(scope="module")
def long_photo(sample_images, tmp_path_factory) -> Path:
    """coffee.png at a path of more than 80 characters, in a folder of its own."""
    folder = tmp_path_factory.mktemp("long")
    for part in ("a_folder_whose_name_alone_is_longer_than_forty_chars", "and_a_second_one_too"):
        folder = folder / part
    folder.mkdir(parents=True)
    photo = folder / "coffee.png"
    shutil.copy(sample_images / "coffee.png", photo)
    assert len(str(photo)) > 80
    return photo


# --- 1. help as a user reads it ---------------------------------------------------------------


def test_explain_help_shows_no_type_after_flags_and_names_every_option():
    text = help_of("explain")
    assert "<bool>" not in text
    assert "<list[str]>" not in text  # the argument's name says what it takes
    assert "Usage: smoothgrad explain [OPTIONS] [INPUTS...]" in text
    assert "{inputs}" not in text
    for option in options_of("explain"):
        assert re.search(rf"(^|\W){re.escape(option)}(\W|$)", text), option
    # a flag's row: its name, then straight to its help
    overlay = next(line for line in text.splitlines() if "--overlay" in line)
    assert re.search(r"--overlay\s+Also write", overlay), overlay
    # enums keep Typer's list of their values
    assert "<fp32|fp32-strict|bf16|fp16|auto>" in text


@pytest.mark.parametrize(
    "command", ["explain", "predict", "compare", "sweep", "report", "check", "models", "manifest"]
)
def test_a_commands_description_flows_to_a_narrow_terminal(command):
    """Docstrings are wrapped at 92 columns; at 60 the help must rewrap them, not break a
    sentence where the docstring's line ended (Typer keeps those breaks)."""
    result = run(command, "--help", COLUMNS="60")
    lines = ANSI.sub("", result.stdout).splitlines()
    description = lines[lines.index(next(x for x in lines if "Usage:" in x)) + 1 :]
    description = [x.strip() for x in description[: description.index(next(
        x for x in description if x.lstrip().startswith("╭")))]]  # fmt: skip
    paragraphs = "\n".join(description).strip().split("\n\n")
    for paragraph in paragraphs:
        for line in paragraph.splitlines()[:-1]:  # every line but a paragraph's last is full
            assert len(line) >= 45, (command, line)


def test_other_commands_usage_lines_and_checks_table_names():
    assert "Usage: smoothgrad predict [OPTIONS] INPUTS..." in help_of("predict")
    assert "Usage: smoothgrad models [OPTIONS] [PATTERN]" in help_of("models")
    check = help_of("check")
    assert "Usage: smoothgrad check [OPTIONS] SPEC" in check
    assert "[defaults]" in check and "[[case]]" in check
    assert "<bool>" not in check
    top = help_of()
    assert "<bool>" not in top and "--version" in top


# --- 2. tables outside a terminal: never folded -------------------------------------------------


def lines_holding(text: str, path: str) -> list[str]:
    return [line for line in text.splitlines() if path in line]


def test_explain_table_keeps_long_paths_whole_on_one_line(long_photo, tmp_path):
    out = tmp_path / "maps_in_a_folder_with_a_long_name_as_well"
    result = run("explain", long_photo, "-o", out, *CHEAP)
    assert result.exit_code == 0, result.stderr
    map_file = str(out / "coffee.png.map.png")
    assert len(lines_holding(result.stdout, str(long_photo))) == 1
    assert len(lines_holding(result.stdout, map_file)) == 1
    assert all(line == line.rstrip() for line in result.stdout.splitlines())


def test_check_table_keeps_long_notes_whole():
    long = "/a/golden/map/in/" + "a_deep_folder/" * 8 + "coffee.npy"
    run_ = CheckRun(
        results=[
            CheckResult("coffee-espresso", "golden", False, "0.12", ">= 0.9", message=long),
            CheckResult("coffee-espresso", "pointing", True, "yes", "in region"),
        ]
    )
    buffer = io.StringIO()
    console = report.stdout_console()
    console.file = buffer  # not a terminal, as a CI log
    report.print_table(console, results_table(run_))
    assert len(lines_holding(buffer.getvalue(), long)) == 1


# --- 3. --target: the model's own rank, and its top-1 beside it ---------------------------------


def explanation(classes: list[int]) -> Explanation:
    probabilities = np.array([0.05, 0.6, 0.3, 0.05], dtype=np.float32)
    maps = np.zeros((len(classes), 3, 2, 2), dtype=np.float32)
    return Explanation(maps, classes, probabilities, ["tench", "espresso", "cup", "plate"])


def test_map_results_rank_classes_as_the_model_does():
    (target,) = report.map_results(explanation([2]))  # --target cup: the model's #2
    assert (target.rank, target.class_index, target.class_name) == (2, 2, "cup")
    assert target.top1 == Prediction(1, "espresso", pytest.approx(0.6))
    top_k = report.map_results(explanation([1, 2, 0]))  # --top-k 3 (0 and 3 tie for third)
    assert [m.rank for m in top_k] == [1, 2, 3]
    assert all(m.top1.class_index == 1 for m in top_k)


def test_json_and_table_show_the_top_1_beside_a_target(capsys):
    results = report.map_results(explanation([2]))
    results[0].outputs = {"map": "maps/photo.png.map.png"}
    record = ImageResult("photo.png", results).to_json()
    assert record["maps"][0]["rank"] == 2
    assert record["maps"][0]["top1"] == {
        "class_index": 1, "class_name": "espresso", "probability": pytest.approx(0.6)
    }  # fmt: skip
    buffer = io.StringIO()
    rep = Report(Console(file=buffer, width=200), Console(file=io.StringIO()))
    rep.done(ImageResult("photo.png", results))
    rep.finish()
    header, _, row = buffer.getvalue().splitlines()
    assert "rank" in header and "top-1" in header
    assert "cup (2)" in row and "espresso (1) 0.600" in row and " 2 " in row


def test_top_k_table_needs_no_top_1_column():
    buffer = io.StringIO()
    rep = Report(Console(file=buffer, width=200), Console(file=io.StringIO()))
    rep.done(ImageResult("photo.png", report.map_results(explanation([1, 2]))))
    rep.finish()
    header, _, first, second = buffer.getvalue().splitlines()
    assert "top-1" not in header and "rank" not in header
    assert first.startswith("photo.png") and not second.startswith("photo.png")


def test_predictions_json_keeps_its_fields():
    record = ImageResult("p.png", [MapResult(1, 1, "espresso", 0.6, {})]).to_json(outputs=False)
    assert record["predictions"] == [
        {"rank": 1, "class_index": 1, "class_name": "espresso", "probability": 0.6}
    ]


def test_explain_target_reports_the_models_rank_and_top_1(sample_images, tmp_path):
    result = run("explain", sample_images / "coffee.png", "-o", tmp_path, *CHEAP,
                 "--target", "cup", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (target,) = json.loads(result.stdout)["maps"]
    assert target["class_name"] == "cup" and target["rank"] > 1
    assert target["top1"]["class_name"] == "espresso"
    manifest = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[-1])
    assert manifest["maps"][0]["rank"] == target["rank"]
    assert manifest["maps"][0]["top1"] == target["top1"]


# --- 4. the progress bar's last line in a log --------------------------------------------------


def last_bar(total: int, steps: list[float], interrupt: bool = False) -> str:
    buffer = io.StringIO()
    try:
        with ProgressBar(Console(file=buffer, width=120), total) as bar:
            for step in steps:
                bar.advance(step)
            if interrupt:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    return buffer.getvalue().strip().splitlines()[-1]


def test_progress_ends_at_n_of_n_in_a_log():
    # images in tenths (chunks of noisy copies): the float sum is 9.99…, rich's columns
    # wrote "9/10 100%"
    assert " 10/10 100% " in last_bar(10, [0.1] * 100)
    assert " 16/16 100% " in last_bar(16, [1 / 3] * 48)
    # an image that failed half-way is dealt with: done, for the bar
    assert " 1/1 100% " in last_bar(1, [0.5])


def test_progress_of_a_stopped_run_is_rounded_down_consistently():
    assert " 2/4  62% " in last_bar(4, [1, 1, 0.5], interrupt=True)
    assert " 3/4  99% " in last_bar(4, [1, 1, 1, 0.999], interrupt=True)


# --- 5. a reader that goes away: quiet, exit 141 -----------------------------------------------


def test_report_stops_at_a_closed_stdout_and_says_nothing():
    class ClosedPipe(io.StringIO):
        def flush(self):
            raise BrokenPipeError

    err = io.StringIO()
    rep = Report(Console(file=ClosedPipe()), Console(file=err), json_lines=True)
    result = ImageResult("a.png", [MapResult(1, 1, "espresso", 0.6, {})])
    with pytest.raises(KeyboardInterrupt):  # stops the run as Ctrl-C does
        rep.done(result)
    rep.done(result)  # the writes in flight after the stop: no second error
    rep.interrupted = True
    assert rep.finish() == report.EXIT_BROKEN_PIPE == 141
    assert err.getvalue() == ""


def photos(sample_images: Path, folder: Path, count: int) -> list[Path]:
    with Image.open(sample_images / "coffee.png") as photo:
        small = photo.convert("RGB").resize((64, 48))
    paths = [folder / f"photo{i:02d}.png" for i in range(count)]
    for path in paths:
        small.save(path)
    return paths


def test_predict_json_into_head_1_ends_quietly(sample_images, tmp_path):
    """``smoothgrad predict … --json | head -1``: 40 photos are two batches of 32 and 8; the
    reader goes after the first line, and the next line hits the closed pipe."""
    command = [sys.executable, "-m", "smoothgrad_cli", "predict", "--json", "--device", "cpu"]
    child = subprocess.Popen(
        [*command, *map(str, photos(sample_images, tmp_path, 40))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    first = child.stdout.readline()
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=300) == 141
    assert json.loads(first)["status"] == "ok"
    assert stderr == ""  # no traceback, no "Exception ignored", no summary


def test_models_into_a_closed_pipe_ends_quietly():
    child = subprocess.Popen(
        [sys.executable, "-m", "smoothgrad_cli", "models", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    child.stdout.close()  # before the first line: torch is still importing
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=300) == 141
    assert stderr == ""


@pytest.mark.parametrize("command", [["--help"], ["explain", "--help"]])
def test_help_into_a_closed_pipe_ends_quietly_with_141(command):
    """Typer's help console would end with exit 1 ("some inputs failed"); a reader that has
    gone ends the command as it ends any other, with 141 and nothing on stderr."""
    child = subprocess.Popen(
        [sys.executable, "-m", "smoothgrad_cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    child.stdout.close()  # before the help is written: Python is still starting
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141
    assert stderr == ""


# --- 6. models: a pattern that matches nothing ----------------------------------------------


def test_models_without_a_match_says_so_and_exits_1():
    result = run("models", "resnt")
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("no model matches 'resnt'") and "resnet18" in line
