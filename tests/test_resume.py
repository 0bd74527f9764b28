"""``--skip-existing`` after a setting changed: the maps made with other settings are done
again, and that is said; the same settings skip as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from smoothgrad_cli.cli import app

FAST = ["-n", "2", "--batch-size", "4", "--device", "cpu", "-q", "--json"]


def explain(*args: str):
    return CliRunner().invoke(app, ["explain", *args], catch_exceptions=False)


def statuses(result) -> dict[str, str]:
    return {Path(x["input"]).name: x["status"] for x in map(json.loads, result.stdout.splitlines())}


def test_skip_existing_redoes_maps_made_with_other_settings_and_says_so(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        array = np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(array).save(src / f"{i}.png")
    assert explain(str(src), "-o", str(out), *FAST).exit_code == 0
    before = (out / "0.png.map.png").read_bytes()

    changed = explain(
        str(src), "-o", str(out), *FAST, "--skip-existing", "--method", "input-x-gradient"
    )
    assert changed.exit_code == 0, changed.output
    assert statuses(changed) == {"0.png": "ok", "1.png": "ok"}
    warnings = [x for x in changed.stderr.splitlines() if x.startswith("warning:")]
    assert warnings == [
        f"warning: --skip-existing: 2 image(s) in {out} were explained with other settings "
        "(method: gradient → input-x-gradient); they are explained again"
    ]
    assert (out / "0.png.map.png").read_bytes() != before  # the new method's map

    again = explain(
        str(src), "-o", str(out), *FAST, "--skip-existing", "--method", "input-x-gradient"
    )
    assert statuses(again) == {"0.png": "skipped", "1.png": "skipped"}
    assert "warning" not in again.stderr

    # back to the first settings, and another noise level: both differences are named
    back = explain(str(src), "-o", str(out), *FAST, "--skip-existing", "--noise", "20")
    assert statuses(back) == {"0.png": "ok", "1.png": "ok"}
    assert "(method: input-x-gradient → gradient, noise: 15.0 → 20.0)" in back.stderr
