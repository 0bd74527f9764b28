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


def test_skip_existing_redoes_images_whose_display_changed(tmp_path):
    """The map's colormap and sign and the overlay's blur and legend change the files an
    image gets: a resume with another one does those images again and names it."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    array = np.random.default_rng(0).integers(0, 256, (320, 400, 3), dtype=np.uint8)
    Image.fromarray(array).save(src / "0.png")
    assert explain(str(src), "-o", str(out), *FAST, "--overlay").exit_code == 0
    overlay = (out / "0.png.overlay.png").read_bytes()

    blur, legend = ["--overlay", "--overlay-blur", "0"], ["--no-overlay-legend"]
    magma, positive = ["--cmap", "magma"], ["--sign", "positive"]
    for option, change in [
        (blur, "overlay_blur: None → 0.0"),
        (blur + legend, "overlay_legend: True → False"),
        (blur + legend + magma, "cmap: None → magma"),
        (blur + legend + magma + positive, "sign: absolute → positive"),
    ]:
        result = explain(str(src), "-o", str(out), *FAST, "--skip-existing", *option)
        assert statuses(result) == {"0.png": "ok"}, (option, result.stderr)
        assert f"({change})" in result.stderr
        assert (out / "0.png.overlay.png").read_bytes() != overlay, option
        overlay = (out / "0.png.overlay.png").read_bytes()
        again = explain(str(src), "-o", str(out), *FAST, "--skip-existing", *option)
        assert statuses(again) == {"0.png": "skipped"}, option

    # without --overlay the overlays' own settings do not matter: nothing to do again
    plain = ["--cmap", "magma", "--sign", "positive"]
    assert statuses(explain(str(src), "-o", str(out), *FAST, "--skip-existing", *plain)) == {
        "0.png": "skipped"
    }


def test_a_manifest_from_before_display_parameters_were_recorded_still_resumes(tmp_path):
    """Entries without ``sign``/``cmap`` (and overlay) keys were made with their defaults."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    array = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(array).save(src / "0.png")
    assert explain(str(src), "-o", str(out), *FAST, "--overlay").exit_code == 0
    manifest = out / "manifest.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    for line in lines:
        for key in ("sign", "cmap", "overlay_blur", "overlay_legend"):
            line["parameters"].pop(key)
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    resumed = explain(str(src), "-o", str(out), *FAST, "--overlay", "--skip-existing")
    assert statuses(resumed) == {"0.png": "skipped"}, resumed.stderr
    assert "warning" not in resumed.stderr
