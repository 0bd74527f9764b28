"""A check that passes any map is marked: ``min_mass`` at or below its region's area."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from smoothgrad_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
COFFEE = ROOT / "sample_images" / "coffee.png"  # 600×400; the model sees x 125–475, y 25–375
EXAMPLE = ROOT / "examples" / "sample_checks.toml"


def run_check(tmp_path: Path, region: str, min_mass: float, *args: str):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [defaults]
            samples = 2
            device = "cpu"
            [[case]]
            name = "coffee"
            image = "{COFFEE}"
            region = {region}
            min_mass = {min_mass}
            """
        )
    )
    return CliRunner().invoke(app, ["check", str(spec), *args], env={"COLUMNS": "200"})


def test_min_mass_at_or_below_the_area_passes_with_a_warning(tmp_path):
    # the left half of the model's view: area 0.5, so min_mass 0.4 passes an even map
    result = run_check(tmp_path, "[125, 25, 300, 375]", 0.4, "--json")
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["passed"] is True and abs(line["area_share"] - 0.5) < 1e-6
    assert line["warning"] == (
        "min_mass 0.4 is not above the region's area 0.50: an even map would pass; "
        "raise it or use a smaller region"
    )
    assert "1 passed without telling maps apart (coffee/min_mass: see the note)" in result.stderr
    table = run_check(tmp_path, "[125, 25, 300, 375]", 0.4)
    row = next(x for x in table.stdout.splitlines() if "min_mass" in x)
    assert "pass?" in row and "an even map would pass" in row


def test_min_mass_above_the_area_has_no_warning(tmp_path):
    result = run_check(tmp_path, "[125, 25, 300, 375]", 0.51, "--json")
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["warning"] == ""
    assert "without telling" not in result.stderr


def test_the_shipped_example_has_no_check_that_passes_any_map():
    result = CliRunner().invoke(app, ["check", str(EXAMPLE), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert lines and all(x["warning"] == "" for x in lines)
    for x in lines:
        if x["check"] == "min_mass":
            assert x["value"] > x["threshold"] > x["area_share"] + 0.05
