"""Before/after of `smoothgrad explain --overlay`, beside the overlays Grad-CAM users know.

    python docs/overlay_comparison.py      # writes docs/figures/overlay_before_after.png

Runs `smoothgrad explain --overlay --save-raw --samples 20` on two sample photos, once with
the defaults and once with `--overlay-blur 0`, and lays out, per photo:

  photo | the old overlay | new, --overlay-blur 0 | new, the default blur (2 % of the view) |
  pytorch-grad-cam's show_cam_on_image | torchcam's overlay_mask

The old overlay (inferno, opacity 0.7 × a smoothstep from 0.3 to 0.9 of the map, no blur)
and the two Grad-CAM libraries' blends are re-implemented here on the same map (the saved
raw attribution, displayed as the paper does: `render.magnitude_map`), with matplotlib's jet
for OpenCV's COLORMAP_JET:

* pytorch-grad-cam `show_cam_on_image(img, mask, image_weight=0.5)`: 0.5 · jet(mask) +
  0.5 · photo, divided by its maximum; the mask at the photo's size (bilinear).
* torchcam `overlay_mask(img, mask, alpha=0.7)`: 0.7 · photo + 0.3 · jet(mask²), the mask
  resized bicubic.

Both are given the map on the part of the photo the model saw (zero elsewhere), as
`smoothgrad` lays it. Also prints how many separate specks the overlay's strong part makes,
unblurred and blurred, and how much of the map's strongest 2 % it still tints: the evidence
for the default blur.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from smoothgrad_cli import render  # noqa: E402
from smoothgrad_cli.models import crop_box  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
FIGURE = ROOT / "docs" / "figures" / "overlay_before_after.png"
PHOTOS = ["coffee.png", "chelsea.png"]
RESIZE, CROP = 256, 224  # the embedded EfficientNet-Lite0's preprocessing


def explain(out: Path, *extra: str) -> dict[str, dict]:
    command = [
        sys.executable, "-m", "smoothgrad_cli", "explain", *(str(SAMPLES / p) for p in PHOTOS),
        "-o", str(out), "--json", "-q", "--samples", "20", "--overlay", "--save-raw", *extra,
    ]  # fmt: skip
    print("$", " ".join(["smoothgrad", *command[3:]]), file=sys.stderr)
    run = subprocess.run(command, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return {Path(r["input"]).name: r["maps"][0] for r in records}


def on_photo(map01: np.ndarray, size: tuple[int, int], box, resample) -> np.ndarray:
    """The map resized onto ``box`` of a photo of ``size``, zero elsewhere, in [0, 1]."""
    left, top, right, bottom = (round(v) for v in box)
    frame = np.zeros((size[1], size[0]), dtype=np.float32)
    resized = Image.fromarray(map01.astype(np.float32), mode="F").resize(
        (right - left, bottom - top), resample=resample
    )
    frame[top:bottom, left:right] = np.clip(np.asarray(resized), 0.0, 1.0)
    return frame


def old_overlay(photo: Image.Image, map01: np.ndarray, box) -> np.ndarray:
    """The overlay as it was before: inferno, α = 0.7 · smoothstep(0.3 → 0.9), no blur."""
    weights = on_photo(map01, photo.size, box, Image.Resampling.BILINEAR)
    t = np.clip((weights - 0.3) / (0.9 - 0.3), 0.0, 1.0)
    alpha = (0.7 * t * t * (3.0 - 2.0 * t))[..., None]
    heat = matplotlib.colormaps["inferno"](weights)[..., :3]
    return np.asarray(photo, dtype=np.float64) / 255 * (1 - alpha) + heat * alpha


def grad_cam_style(photo: Image.Image, map01: np.ndarray, box) -> np.ndarray:
    """pytorch-grad-cam's ``show_cam_on_image(img, mask, use_rgb=True, image_weight=0.5)``."""
    mask = on_photo(map01, photo.size, box, Image.Resampling.BILINEAR)
    cam = 0.5 * matplotlib.colormaps["jet"](mask)[..., :3] + 0.5 * np.asarray(photo) / 255
    return cam / cam.max()


def torchcam_style(photo: Image.Image, map01: np.ndarray, box) -> np.ndarray:
    """torchcam's ``overlay_mask(img, mask, colormap="jet", alpha=0.7)``."""
    mask = on_photo(map01, photo.size, box, Image.Resampling.BICUBIC)
    heat = matplotlib.colormaps["jet"](mask**2)[..., :3]
    return 0.7 * np.asarray(photo) / 255 + 0.3 * heat


# --- the evidence for the default blur ----------------------------------------------------------


def count_regions(mask: np.ndarray) -> int:
    """Connected regions (4-neighbours) of a boolean image."""
    seen = np.zeros_like(mask)
    regions = 0
    height, width = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        regions += 1
        seen[start] = True
        todo = deque([start])
        while todo:
            y, x = todo.popleft()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    todo.append((ny, nx))
    return regions


def blur_evidence(name: str, map01: np.ndarray) -> str:
    """Per blur (σ as % of the view's side): specks of the visibly tinted part (α > 0.15),
    and the share of the map's strongest 2 % of pixels that is still visibly tinted."""
    view = (0.0, 0.0, float(map01.shape[1]), float(map01.shape[0]))
    strongest = map01 >= np.percentile(map01, 98)
    cells = []
    for percent in (0, 1, 2, 3):
        shown = render.display_map(map01, view, percent / 100 * map01.shape[0])
        tinted = 0.7 * render.overlay_alpha(shown) > 0.15
        cover = (strongest & tinted).sum() / strongest.sum()
        cells.append(f"{percent} %: {count_regions(tinted):4d} specks, {cover:.0%} of top 2 %")
    return f"{name:12s} " + " | ".join(cells)


def main() -> None:
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        new = explain(tmp / "default")
        sharp = explain(tmp / "sharp", "--overlay-blur", "0")

        columns = [
            "photo",
            "before: inferno, α from 0.3",
            "new, --overlay-blur 0",
            "new, the default (blur 2 % of view)",
            "pytorch-grad-cam: jet, 0.5 blend",
            "torchcam: jet, 0.3 blend",
        ]
        fig, axes = plt.subplots(
            len(PHOTOS), len(columns), figsize=(3.6 * len(columns), 2.75 * len(PHOTOS))
        )
        print("blur of the overlay's map (σ, % of the view side):", file=sys.stderr)
        for row, name in enumerate(PHOTOS):
            photo = Image.open(SAMPLES / name).convert("RGB")
            box = crop_box(*photo.size, RESIZE, CROP)
            map01 = render.magnitude_map(np.load(new[name]["outputs"]["raw"]))
            print(blur_evidence(name, map01), file=sys.stderr)
            panels = [
                np.asarray(photo),
                old_overlay(photo, map01, box),
                np.asarray(Image.open(sharp[name]["outputs"]["overlay"])),
                np.asarray(Image.open(new[name]["outputs"]["overlay"])),
                grad_cam_style(photo, map01, box),
                torchcam_style(photo, map01, box),
            ]
            for col, picture in enumerate(panels):
                ax = axes[row, col]
                ax.imshow(picture, interpolation="lanczos")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(columns[col], fontsize=11)
            label = f"{name}\n{new[name]['class_name']} ({new[name]['probability']:.2f})"
            axes[row, 0].set_ylabel(label, fontsize=11)
        fig.suptitle(
            "The same SmoothGrad map (embedded EfficientNet-Lite0, 20 samples, 15 % noise, "
            "|map| capped at the 99th percentile) laid on the photo six ways",
            fontsize=12,
        )
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=75)  # under 1 MB
        plt.close(fig)
        Image.open(buffer).convert("RGB").save(FIGURE, optimize=True)
    print(f"wrote {FIGURE}", file=sys.stderr)


if __name__ == "__main__":
    main()
