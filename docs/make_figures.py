"""Remake the README pictures with the tool itself (`make demo`).

    python docs/make_figures.py              # all of them (about 9 minutes on 2 CPU cores)
    python docs/make_figures.py compare sweep  # only those parts

Every picture comes from the public CLI (`python -m smoothgrad_cli ...`) run on sample_images/:

* ``gradient``: `smoothgrad explain` twice — plain gradient (`--smoothing none`) and SmoothGrad
  (the defaults, with `--overlay`) — laid out as photo | gradient | SmoothGrad, with the class
  each map explains (gradient_vs_smoothgrad.png), and the coffee overlay (coffee_overlay.png).
* ``overlay``: docs/overlay_comparison.py (overlay_before_after.png).
* ``compare``: `smoothgrad compare` on coffee.png and chelsea.png, all eight methods
  (compare.png); the figure's caption states its settings.
* ``sweep``: `smoothgrad sweep` on coffee.png, noise 0–50 % × 1–100 samples (sweep.png), and
  its `--json` (sweep.json: the split-half ρ per sample count, where the map stops changing).
* ``report``: `smoothgrad explain --report` on a copy of sample_images/ with one broken file,
  and a 1280×900 screenshot of its index.html in headless Chromium (report.png).

The figures are re-saved losslessly (no alpha; grayscale as one channel; optimize=True) to keep
them small.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from smoothgrad_cli.models import crop_box  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
FIGURES = ROOT / "docs" / "figures"
PHOTOS = ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"]

#: `smoothgrad compare`'s settings: the default 50 samples (fewer leave SmoothGrad speckled, see
#: the sweep), about ten minutes on 2 CPU cores. Smoothed integrated gradients cost samples ×
#: nodes passes per image, so integrated gradients get a fixed, small number of nodes (the
#: caption says so) instead of refining up to 256 until complete within 5 %.
COMPARE = ["--samples", "50", "--ig-steps", "8", "--ig-tolerance", "0", "--dpi", "120"]
#: `smoothgrad sweep`'s grid: the paper's noise levels and sample counts.
SWEEP = ["--noise", "0,10,20,30,50", "--samples", "1,10,50,100", "--dpi", "150"]
#: The report's screenshot: the browser window's size in CSS pixels.
VIEWPORT = {"width": 1280, "height": 900}
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def smoothgrad(*args: str, cwd: Path = ROOT, ok: tuple[int, ...] = (0,)) -> str:
    """Run the CLI, say what ran, return its stdout; fail loudly on an unexpected exit."""
    command = [sys.executable, "-m", "smoothgrad_cli", *args]
    print("$ smoothgrad", " ".join(args), file=sys.stderr)
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if run.returncode not in ok:
        sys.stderr.write(run.stderr)
        raise SystemExit(f"smoothgrad {args[0]} exited {run.returncode}")
    return run.stdout


def shrink(path: Path) -> None:
    """Re-save a PNG losslessly and smaller: opaque RGBA as RGB, gray RGB as L, optimized."""
    picture = Image.open(path)
    picture.load()
    if picture.mode == "RGBA" and picture.getextrema()[3][0] == 255:
        picture = picture.convert("RGB")
    if picture.mode == "RGB":
        pixels = np.asarray(picture)
        if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
            picture = picture.convert("L")
    picture.save(path, optimize=True)


def say_written(path: Path) -> None:
    size = Image.open(path).size
    print(f"wrote {path.relative_to(ROOT)}: {size[0]}×{size[1]} px, "
          f"{path.stat().st_size / 1e3:.0f} kB", file=sys.stderr)  # fmt: skip


# --- photo | gradient | SmoothGrad, and an overlay ------------------------------------------


def explain(out: Path, *extra: str) -> dict[str, dict]:
    inputs = [str(SAMPLES / p) for p in PHOTOS]
    stdout = smoothgrad("explain", *inputs, "-o", str(out), "--json", "-q", *extra)
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return {Path(r["input"]).name: r for r in records}


def gradient_vs_smoothgrad() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain = explain(tmp / "gradient", "--smoothing", "none")
        smooth = explain(tmp / "smoothgrad", "--overlay")

        fig, axes = plt.subplots(len(PHOTOS), 3, figsize=(9, 3 * len(PHOTOS)))
        for row, name in enumerate(PHOTOS):
            first = smooth[name]["maps"][0]
            photo = Image.open(SAMPLES / name).convert("RGB")
            # Show the part of the photo the model saw, so that maps and photo line up.
            view = photo.crop(tuple(round(v) for v in crop_box(*photo.size, 256, 224)))
            panels = [
                (view, name),
                (Image.open(plain[name]["maps"][0]["outputs"]["map"]), "gradient"),
                (Image.open(first["outputs"]["map"]), "SmoothGrad (n=50, 15%)"),
            ]
            for col, (picture, title) in enumerate(panels):
                ax = axes[row, col]
                ax.imshow(picture, cmap="gray" if picture.mode == "L" else None, vmin=0, vmax=255)
                ax.set_title(title, fontsize=10)
                ax.axis("off")
            axes[row, 0].set_title(
                f"{name}\n→ {first['class_name']} ({first['probability']:.2f})", fontsize=10
            )
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        Image.open(buffer).save(FIGURES / "gradient_vs_smoothgrad.png")
        shrink(FIGURES / "gradient_vs_smoothgrad.png")
        say_written(FIGURES / "gradient_vs_smoothgrad.png")

        overlay = Image.open(smooth["coffee.png"]["maps"][0]["outputs"]["overlay"])
        overlay.save(FIGURES / "coffee_overlay.png", optimize=True)
        say_written(FIGURES / "coffee_overlay.png")


def overlay_before_after() -> None:
    script = ROOT / "docs" / "overlay_comparison.py"
    print(f"$ python {script.relative_to(ROOT)}", file=sys.stderr)
    subprocess.run([sys.executable, str(script)], cwd=ROOT, check=True)
    shrink(FIGURES / "overlay_before_after.png")
    say_written(FIGURES / "overlay_before_after.png")


# --- compare and sweep ----------------------------------------------------------------------


def compare() -> None:
    figure = FIGURES / "compare.png"
    inputs = [f"sample_images/{p}" for p in ("coffee.png", "chelsea.png")]
    # relative names (run in the repository), so the rows are titled sample_images/…
    output = str(figure.relative_to(ROOT))
    result = json.loads(smoothgrad("compare", *inputs, "-o", output, *COMPARE, "--json", "-q"))
    if result["failed"] or not all(c["available"] for c in result["columns"]):
        raise SystemExit(f"compare left something out: {result}")
    shrink(figure)
    say_written(figure)


def sweep() -> None:
    figure = FIGURES / "sweep.png"
    stdout = smoothgrad(
        "sweep", "sample_images/coffee.png", "-o", str(figure.relative_to(ROOT)), *SWEEP,
        "--json", "-q",
    )  # fmt: skip
    result = json.loads(stdout)
    (FIGURES / "sweep.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    shrink(figure)
    say_written(figure)
    print(f"wrote docs/figures/sweep.json: {convergence(result)}", file=sys.stderr)


def convergence(result: dict) -> str:
    """The sweep's convergence numbers in one line."""
    levels = "; ".join(
        f"{level['noise']:g} %: ρ " + ", ".join(
            f"n={n} {'—' if rho is None else f'{rho:.3f}'}"
            for n, rho in zip(result["samples"], level["split_half"], strict=True)
        )
        for level in result["levels"]
    )  # fmt: skip
    return (
        f"stable from n = {result['stable_samples']}, "
        f"stable noise = {result['stable_noise']} (split-half {levels})"
    )


# --- the report, in a browser ---------------------------------------------------------------


def find_chromium() -> str:
    given = os.environ.get("SMOOTHGRAD_CHROMIUM")
    found = given or next(filter(None, map(shutil.which, CHROMIUM)), None)
    if found is None:
        raise SystemExit("no Chromium for the report's screenshot (apt-get install chromium)")
    return found


def screenshot(page: Path, shot: Path) -> None:
    """A VIEWPORT-sized picture of ``page`` in headless Chromium, once its thumbnails loaded;
    Playwright drives the system's Chromium (no `playwright install`)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses root otherwise
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=args)
        try:
            tab = browser.new_page(viewport=VIEWPORT)
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(page.as_uri())
            tab.wait_for_selector("body[data-ready='1']", state="attached")
            tab.wait_for_function(
                "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
            )
            tab.screenshot(path=str(shot))
        finally:
            browser.close()
    if errors:
        raise SystemExit(f"the report's page reported errors: {errors}")


def report() -> None:
    shot = FIGURES / "report.png"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # a copy of the photos and one broken file, so that the page lists a failure; run in
        # tmp with relative names, so the page shows sample_images/… and no temporary folder
        inputs = tmp / "sample_images"
        shutil.copytree(SAMPLES, inputs, ignore=shutil.ignore_patterns("*.md"))
        (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
        out = "smoothgrad_out"
        run = [inputs.name, "-o", out, "--overlay", "--report", "--samples", "20", "-q"]
        smoothgrad("explain", *run, cwd=tmp, ok=(1,))  # 1: the broken file failed, as meant
        screenshot(tmp / out / "index.html", shot)
    shrink(shot)
    say_written(shot)


PARTS = {
    "gradient": gradient_vs_smoothgrad,
    "overlay": overlay_before_after,
    "compare": compare,
    "sweep": sweep,
    "report": report,
}


def main() -> None:
    chosen = sys.argv[1:] or list(PARTS)
    unknown = [name for name in chosen if name not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part {unknown}: choose from {', '.join(PARTS)}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name in chosen:
        began = time.perf_counter()
        PARTS[name]()
        print(f"[{name}: {time.perf_counter() - began:.0f} s]", file=sys.stderr)
    print(f"make demo: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
