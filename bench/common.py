"""What every part of the bench shares: the settings (``Plan``), a result (``Row``), time
bounds and timing, the sample photos, the machine's facts and number formatting.

The bench's modules import each other as top-level modules: ``python bench/bench.py`` puts
``bench/`` first on ``sys.path``. This module puts the repository's root there too, so that
``smoothgrad_cli`` imports without an install; import it before ``smoothgrad_cli``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smoothgrad_cli import tuning  # noqa: E402

SAMPLES = 50
NOISE = 0.15
SEED = 0


# ------------------------------------------------------------------------------------------
# settings and results


@dataclass
class Plan:
    images: int  # images for our engine and the floor
    peer_images: int  # images for Captum and PAIR (slow: fewer)
    repeats: int
    folder: int  # images in the CLI's folder
    floor_chunks: tuple[int, ...]
    captum_batches: tuple[int, ...]
    sweep_n: tuple[int, ...]
    sweep_images: int
    bf16_images: int
    cli_rounds: int = 2
    gpu_images: int = 8
    gpu_repeats: int = 3
    minutes: float = 10.0  # the whole run's budget; each section has its share
    cpu_section_s: float = 480.0
    gpu_model_s: float = 150.0  # each GPU model's child process, hard limit
    cli_small: int = 32  # the CLI's folders on a GPU: steady state from the difference
    cli_large: int = 288
    pipeline_images: int = 96
    pipeline_s: float = 120.0


FULL = Plan(
    images=2,
    peer_images=2,
    repeats=5,
    folder=16,
    floor_chunks=(4, 8, 16),
    captum_batches=(50, 16, 8, 4),
    sweep_n=(10, 50, 100),
    sweep_images=2,
    bf16_images=2,
)
QUICK = Plan(
    images=1,
    peer_images=1,
    repeats=1,
    folder=4,
    floor_chunks=(4, 8),
    captum_batches=(50, 5),
    sweep_n=(10, 50),
    sweep_images=1,
    bf16_images=1,
    cli_rounds=1,
    gpu_repeats=1,
    minutes=6.0,
    cpu_section_s=240.0,
    gpu_model_s=105.0,
    cli_large=160,
    pipeline_images=48,
    pipeline_s=75.0,
)


@dataclass
class Row:
    section: str
    what: str
    setting: str
    images: int
    seconds: float | None  # median time for all the row's images
    maps_per_s: float | None
    ratio: float | None = None  # ours ÷ this row (speed-up of this tool over it)
    target: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def skipped(section: str, what: str, note: str = "skipped: out of time", setting: str = "") -> Row:
    """A row that measured nothing, and says why."""
    return Row(section, what, setting, 0, None, None, note=note)


def device_sync(device: torch.device) -> Callable[[], None]:
    """What a timing waits on: the GPU's queue, or nothing on a CPU."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def importable(name: str) -> str | None:
    try:
        __import__(name)
    except Exception as exc:  # not installed, or broken
        return f"{name} not importable ({type(exc).__name__}): row skipped"
    return None


# ------------------------------------------------------------------------------------------
# time bounds


class Deadline:
    """The run's time budget, and a tighter one per section: rows that would not fit are
    skipped and say so, so that one slow section cannot eat the rest of the run."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.section_end = self.end

    @contextlib.contextmanager
    def section(self, seconds: float):
        saved = self.section_end
        self.section_end = min(self.end, time.monotonic() + seconds)
        try:
            yield self
        finally:
            self.section_end = saved

    def left(self) -> float:
        return min(self.end, self.section_end) - time.monotonic()

    def fits(self, seconds: float) -> bool:
        return seconds <= self.left()


def timed_rounds(fn, repeats: int, sync, deadline: Deadline) -> tuple[float, int]:
    """Median seconds of up to ``repeats`` timed calls (after one warm-up), fewer when the
    deadline comes: (median, calls timed); 0 calls when not even the warm-up fit."""
    sync()
    started = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - started
    times = []
    while len(times) < repeats and deadline.fits(min(times or [first])):
        times.append(median_time(fn, 1, sync))
    return (statistics.median(times) if times else first), len(times)


# ------------------------------------------------------------------------------------------
# the sample photos


def sample_files() -> list[Path]:
    return sorted(p for p in (ROOT / "sample_images").iterdir() if p.suffix in (".png", ".jpg"))


def load_photos(transform, count: int) -> torch.Tensor:
    files = sample_files()
    tensors = []
    for i in range(count):
        with Image.open(files[i % len(files)]) as image:
            tensors.append(transform(image.convert("RGB")))
    return torch.stack(tensors)


#: the pipeline row's photos: JPEGs of mixed sizes, from VGA to 3 MP
MIXED_SIZES = ((640, 480), (1024, 768), (1600, 1200), (2048, 1536), (800, 800), (1200, 1600))


def jpeg_folder(folder: Path, count: int) -> Path:
    """``count`` JPEGs (quality 90) cut from the sample photos at ``MIXED_SIZES``."""
    from PIL import ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for path in sample_files():
        with Image.open(path) as image:
            photos.append(image.convert("RGB"))
    for i in range(count):
        size = MIXED_SIZES[i % len(MIXED_SIZES)]
        photo = ImageOps.fit(photos[i % len(photos)], size)
        photo.save(folder / f"{i:04d}.jpg", quality=90)
    return folder


def quiet_report():
    """A ``Report`` for an in-process CLI run that prints nothing."""
    from io import StringIO

    from rich.console import Console

    from smoothgrad_cli.report import Report

    quiet = Console(file=StringIO())
    return Report(out=quiet, err=quiet)


# ------------------------------------------------------------------------------------------
# the machine, and numbers as the tables print them


def machine() -> dict:
    return {
        "cpu": tuning.cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}" if value < 100 else f"{value:.0f}"
