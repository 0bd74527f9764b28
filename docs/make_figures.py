"""Remake the README pictures with the tool itself (`make demo`).

Runs `smoothgrad explain` on sample_images/ twice — plain gradient (`--smoothing none`) and
SmoothGrad (the defaults) — then lays photo | gradient | SmoothGrad side by side, with the
class each map explains. Also writes an overlay example.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from smoothgrad_cli.models import crop_box  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
FIGURES = ROOT / "docs" / "figures"
PHOTOS = ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"]


def explain(out: Path, *extra: str) -> dict[str, dict]:
    command = [
        sys.executable, "-m", "smoothgrad_cli", "explain",
        *(str(SAMPLES / p) for p in PHOTOS), "-o", str(out), "--json", "-q", *extra,
    ]  # fmt: skip
    print("$", " ".join(["smoothgrad", *command[3:]]), file=sys.stderr)
    run = subprocess.run(command, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return {Path(r["input"]).name: r for r in records}


def main() -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
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
        fig.savefig(FIGURES / "gradient_vs_smoothgrad.png", dpi=80)
        plt.close(fig)

        overlay = Image.open(smooth["coffee.png"]["maps"][0]["outputs"]["overlay"])
        overlay.save(FIGURES / "coffee_overlay.png", optimize=True)
    print(f"wrote {FIGURES / 'gradient_vs_smoothgrad.png'} and {FIGURES / 'coffee_overlay.png'}")


if __name__ == "__main__":
    main()
