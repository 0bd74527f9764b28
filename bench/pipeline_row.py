"""The pipeline row: the CLI's decode → resize → render → write on a folder of JPEGs with
the engine stubbed, in images per second and per CPU second, and each stage's cost."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    MIXED_SIZES,
    NOISE,
    SAMPLES,
    SEED,
    Deadline,
    Plan,
    Row,
    jpeg_folder,
    quiet_report,
    say,
    skipped,
)
from PIL import Image

from smoothgrad_cli import engine, tuning


class _MapsOnly:
    """The engine's stream, stubbed: every image gets one real map at once (a real map, so
    that the PNG encoder sees a real map's detail)."""

    def __init__(self, the_map: torch.Tensor) -> None:
        self.the_map = the_map
        self.progress = None

    def feed(self, x: torch.Tensor, target) -> torch.Tensor:
        return self.the_map.repeat(x.shape[0], 1, 1, 1)

    def finish(self) -> torch.Tensor:
        return self.the_map[:0]


class _NoModel:
    """What the pipeline asks of ``Explainer.smoother``, without the model's cost."""

    def __init__(self, real, the_map: torch.Tensor) -> None:
        self.base, self.rows_per_input, self.batch_size = real.base, real.rows_per_input, 256
        self.the_map = the_map

    def stream(self, model, *, on_oom=None, progress=None) -> _MapsOnly:
        return _MapsOnly(self.the_map)


def stage_costs(explainer, folder: Path, the_map: np.ndarray, count: int = 12) -> dict:
    """CPU milliseconds per image of each stage on one thread, and what decoding a JPEG at
    a reduced scale (PIL's ``draft``, DCT scaling to at least the resize size) would cost."""
    from smoothgrad_cli import render
    from smoothgrad_cli.images import load_image

    files = sorted(folder.iterdir())[:count]
    costs = dict.fromkeys(("decode", "transform", "render", "png", "draft decode"), 0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="smoothgrad-bench-stages-"))
    try:
        # first-call costs (imports, lazy set-up) are no stage's: one image untimed first
        explainer.transform(draft_decode(files[0], 256))
        explainer.transform(load_image(files[0]))
        picture = render.grayscale(render.sign_map(the_map, render.Sign.ABSOLUTE, 99))
        render.save_png(picture, out / "warm.png")
        for path in files:
            for stage, fn in (
                ("decode", lambda path=path: load_image(path)),
                ("draft decode", lambda path=path: draft_decode(path, 256)),
            ):
                started = time.process_time()
                photo = fn()
                costs[stage] += time.process_time() - started
            started = time.process_time()
            explainer.transform(photo)
            costs["transform"] += time.process_time() - started
            started = time.process_time()
            picture = render.grayscale(
                render.sign_map(the_map, render.Sign.ABSOLUTE, render.DEFAULT_PERCENTILE)
            )
            costs["render"] += time.process_time() - started
            started = time.process_time()
            render.save_png(picture, out / f"{path.name}.png")
            costs["png"] += time.process_time() - started
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(out, ignore_errors=True)
    return {stage: 1000 * seconds / len(files) for stage, seconds in costs.items()}


def draft_decode(path: Path, short_side: int) -> Image.Image:
    with Image.open(path) as image:
        w, h = image.size
        scale = min(w, h) / short_side
        image.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
        return image.convert("RGB")


def pipeline_rows(plan: Plan, rows: list[Row], facts: dict, deadline: Deadline) -> None:
    """The CLI's pipeline on a folder of JPEGs with the model's cost removed: what the host
    can feed a GPU. Images per second, and per core: images ÷ the process's CPU seconds
    (a figure that load from other processes disturbs less than the wall time)."""
    from unittest import mock

    from smoothgrad_cli import explain as explain_command
    from smoothgrad_cli.explainer import Explainer
    from smoothgrad_cli.settings import MapSettings

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    section = f"pipeline without the model: {tuning.cpu_name()}, {cores} cores"
    sizes = f"JPEGs of {len(MIXED_SIZES)} sizes 640×480–2048×1536"
    work = Path(tempfile.mkdtemp(prefix="smoothgrad-bench-pipeline-"))
    threads = torch.get_num_threads()
    try:
        folder = jpeg_folder(work / "in", plan.pipeline_images)
        # a fixed chunk: no probe of the model the run never uses
        settings = MapSettings(
            samples=SAMPLES, noise=NOISE * 100, seed=SEED, precision="fp32", batch_size=256
        )
        explainer = Explainer.load(settings, "cpu")
        x = explainer.transform(Image.open(folder / "0000.jpg").convert("RGB"))[None]
        the_map = engine.SmoothGrad(engine.Gradient(), samples=2).attribute(explainer.model, x, 0)
        costs = stage_costs(explainer, folder, the_map[0].numpy())
        facts["pipeline_stage_ms"] = {k: round(v, 2) for k, v in costs.items()}
        cli_stages = costs["decode"] + costs["transform"] + costs["render"] + costs["png"]
        rows.append(
            Row(
                section,
                "stages, one thread: CPU ms per image",
                sizes,
                12,
                cli_stages / 1000,
                1000 / cli_stages,
                note="; ".join(f"{k} {v:.1f}" for k, v in costs.items())
                + " (draft: JPEG decoded at the scale the resize needs; not what the CLI does)",
            )
        )
        classes = len(explainer.categories)
        explainer.smoother = _NoModel(explainer.smoother, the_map[0])
        explainer.predict = lambda x: torch.full((x.shape[0], classes), 1.0 / classes)
        last = 5.0
        for workers, torch_threads in sorted({(1, threads), (cores, threads), (cores, 1)}):
            if not deadline.fits(last):
                rows.append(skipped(section, "pipeline", setting=f"--workers {workers}"))
                continue
            torch.set_num_threads(torch_threads)
            options = explain_command.ExplainOptions(
                inputs=[str(folder)],
                settings=settings,
                output=work / f"out{workers}-{torch_threads}",
                device="cpu",
                workers=workers,
            )
            report = quiet_report()
            cpu_before, started = time.process_time(), time.perf_counter()
            with mock.patch.object(Explainer, "load", lambda *args, **kwargs: explainer):
                code = explain_command.run_explain(options, report, None)
            last = seconds = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu_before
            if code != 0:
                raise RuntimeError(f"the pipeline run failed: {report.failures[:3]}")
            n = plan.pipeline_images
            per_core = n / cpu_seconds
            facts[f"pipeline_images_per_s_{workers}w_{torch_threads}t"] = n / seconds
            facts["pipeline_16_cores"] = max(facts.get("pipeline_16_cores", 0), 16 * per_core)
            rows.append(
                Row(
                    section,
                    "decode → resize → render → write, engine stubbed",
                    f"--workers {workers}, torch threads {torch_threads}, {sizes}",
                    n,
                    seconds,
                    n / seconds,
                    target="16 cores ≥ 400 images/s",
                    note=f"{per_core:.1f} images per CPU second (per core); "
                    f"{cpu_seconds / seconds:.2f} cores busy; 16 cores at this rate: "
                    f"{16 * per_core:.0f} images/s",
                    extra={"cpu_seconds": cpu_seconds},
                )
            )
            say(f"pipeline, {workers} workers, {torch_threads} torch threads: "
                f"{n / seconds:.1f} images/s, {per_core:.1f} per CPU second")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)
