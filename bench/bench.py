"""SmoothGrad speed: this tool against Captum, PAIR's saliency and the hardware floor.

    python bench/bench.py                      # the full CPU run (about 10 minutes on 2 cores)
    python bench/bench.py --quick              # a smoke run: fewer images and repeats
    python bench/bench.py --quick --device cuda   # the GPU table (about 6 minutes)
    python bench/bench.py --only pipeline      # the pipeline row alone (a minute or two)
    python bench/bench.py --out bench/results-cpu.md --out results.json

On a CPU: one process, one model (the embedded EfficientNet-Lite0, frozen parameters), the
same sample photos resized by the model's transform, n = 50 noisy copies at a noise level of
15 % of each image's (max − min). Every row reports maps (images) per second and how many
times faster this tool's engine is ("ours ÷ row"). The peers get the model as a careful user
would hand it over (eval mode, frozen parameters, channels-last); the engine runs it after
``prepare_model``'s exact graph changes (BatchNorm folded into the convolutions, in-place
ReLU6 without its hidden copy), and the table shows the floor for both graphs.

On a GPU the CPU table's rows are skipped (PAIR's loop over samples and the cost sweeps say
nothing there, and took minutes per row). efficientnet_lite0, resnet50 and vit_b_16 (random
weights, nothing downloaded) each run in a child process with a hard time limit: Captum at
``nt_samples_batch_size=50`` with TF32, the engine eager in fp32 without and with TF32 and in
bf16, the floor, the CLI on folders of JPEGs (steady state and start-up), ``torch.compile``
and the compiled floor, with peak memory against Captum's.

Every run ends with the pipeline row: decode → resize → render → write with the engine
stubbed, in images per second and per CPU second, on this host's CPU. Each section has its
share of the time; rows that would not fit are skipped and say so.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smoothgrad_cli import engine, tuning  # noqa: E402
from smoothgrad_cli.check.metrics import spearman  # noqa: E402
from smoothgrad_cli.models import load_model  # noqa: E402

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


# ------------------------------------------------------------------------------------------
# maps and their agreement


def pooled_magnitude(attribution: torch.Tensor, cells: int = 14) -> np.ndarray:
    """The displayed quantity (|map| summed over channels), averaged over cells × cells."""
    magnitude = attribution.detach().float().abs().sum(0)[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(magnitude, cells).flatten().cpu().numpy()


# ------------------------------------------------------------------------------------------
# the peers


def captum_smoothgrad(model, x, target, sigma, batch):
    from captum.attr import NoiseTunnel, Saliency

    tunnel = NoiseTunnel(Saliency(model))
    return tunnel.attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=SAMPLES,
        nt_samples_batch_size=batch,
        stdevs=sigma,
        target=target,
        abs=False,
    )


def pair_call_model_function(model, device):
    """PAIR's glue for a PyTorch model, as its examples write it: NHWC numpy in and out."""
    import saliency.core as saliency

    def call_model_function(images, call_model_args=None, expected_keys=None):
        x = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        x = x.to(device).requires_grad_(True)
        target = call_model_args["target"]
        scores = model(x)[:, target]
        (grads,) = torch.autograd.grad(scores, x, grad_outputs=torch.ones_like(scores))
        return {saliency.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).cpu().numpy()}

    return call_model_function


def pair_smoothgrad(model, device, x_hwc: np.ndarray, target: int) -> np.ndarray:
    import saliency.core as saliency

    return saliency.GradientSaliency().GetSmoothedMask(
        x_hwc,
        pair_call_model_function(model, device),
        call_model_args={"target": target},
        stdev_spread=NOISE,
        nsamples=SAMPLES,
        magnitude=False,
    )


def importable(name: str) -> str | None:
    try:
        __import__(name)
    except Exception as exc:  # not installed, or broken
        return f"{name} not importable ({type(exc).__name__}): row skipped"
    return None


# ------------------------------------------------------------------------------------------
# the main section: embedded Lite0


def sigmas_of(x: torch.Tensor) -> list[float]:
    flat = x.reshape(x.shape[0], -1)
    return (NOISE * (flat.max(1).values - flat.min(1).values)).tolist()


def load_photos(transform, count: int) -> torch.Tensor:
    files = sorted(p for p in (ROOT / "sample_images").iterdir() if p.suffix in (".png", ".jpg"))
    tensors = []
    for i in range(count):
        with Image.open(files[i % len(files)]) as image:
            tensors.append(transform(image.convert("RGB")))
    return torch.stack(tensors)


def as_given(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model as a careful user hands it to any library: eval mode, frozen parameters,
    channels-last, but none of the engine's graph changes (BatchNorm folding, ReLU6 swap)."""
    model = model.eval().to(device).requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def floor_passes(model, x, t, chunk, precision):
    """Plain chunked forward+backward over len(x) × n noisy rows made beforehand: no noise
    drawing, no sums, nothing but the model's own work."""
    memory_format = engine.input_format(model)
    generator = torch.Generator().manual_seed(1)
    total = x.shape[0] * SAMPLES
    batches = []
    for start in range(0, total, chunk):
        index = (torch.arange(start, min(start + chunk, total)) // SAMPLES).to(x.device)
        noise = torch.randn((len(index), *x.shape[1:]), generator=generator).to(x.device)
        noisy = (x[index] + 0.3 * noise).contiguous(memory_format=memory_format)
        batches.append((noisy, t[index]))

    def passes():
        for noisy, target in batches:
            engine.input_gradient(model, noisy, target, precision)

    return passes


def smoother(chunk: int, precision: str = "fp32", n: int = SAMPLES, seed: int = SEED):
    """The engine as every row of the bench runs it: the gradient, n copies, 15 % noise."""
    return engine.SmoothGrad(
        engine.Gradient(), samples=n, noise_level=NOISE, seed=seed, batch_size=chunk,
        precision=precision,
    )  # fmt: skip


def warm_up(contenders, ours, plain, px, pt, chunk, plain_chunk, sigmas, device, precision):
    """One chunk of every contender's shape, so no first-call costs land in a timing."""
    for key in contenders:
        if key.startswith("floor-"):
            model = ours if key.startswith("floor-folded") else plain
            c = int(key.rsplit("-", 1)[1])
            engine.input_gradient(
                model,
                px[:1].expand(c, -1, -1, -1).contiguous(memory_format=engine.input_format(model)),
                pt[:1].expand(c),
                precision,
            )
        elif key.startswith("captum-"):
            b = int(key.rsplit("-", 1)[1])
            from captum.attr import NoiseTunnel, Saliency

            NoiseTunnel(Saliency(plain)).attribute(
                px[:1],
                nt_type="smoothgrad",
                nt_samples=b,
                nt_samples_batch_size=b,
                stdevs=sigmas[0],
                target=int(pt[0]),
                abs=False,
            )
        elif key == "pair":
            import saliency.core as saliency

            saliency.GradientSaliency().GetMask(
                px[0].permute(1, 2, 0).cpu().numpy(),
                pair_call_model_function(plain, device),
                call_model_args={"target": int(pt[0])},
            )
        else:
            model, c = (ours, chunk) if key == "ours" else (plain, plain_chunk)
            smoother(c, precision, n=c).attribute(model, px[:1], pt[:1])


def lite0_section(plan: Plan, device: torch.device, rows: list[Row], facts: dict, deadline) -> None:
    """The CPU table: every contender in interleaved rounds (fewer rounds when time runs
    short), the CLI, then the cost sweeps and bf16 while they fit the section's time."""
    section = f"{device.type}: efficientnet_lite0, 224×224, n = {SAMPLES}"
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    loaded = load_model()
    shape = (3, 224, 224)
    plain = as_given(copy.deepcopy(loaded.model), device)
    ours = engine.prepare_model(copy.deepcopy(loaded.model), device, input_shape=shape)
    facts["batchnorm_folded"] = sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()
    ) - sum(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
    n_all = max(plan.images, plan.peer_images, plan.bf16_images, plan.sweep_images)
    x_all = load_photos(loaded.transform, n_all).to(device)
    targets_all = engine.predict(ours, x_all).argmax(1)
    precision = engine.resolve_precision("auto", device)

    # --- the chunk size our tuner picks (a fresh probe: the bench uses its own cache)
    choice = tuning.choose_batch_size(ours, device, shape, precision, model_name=loaded.name)
    chunk = choice.batch_size
    facts["probe"] = {
        "chunk": chunk,
        "rows_per_s": {str(k): round(v, 2) for k, v in choice.rates.items()},
        "seconds": round(choice.seconds, 1),
    }
    say(f"tuner: chunk {chunk} ({facts['probe']})")

    def engine_run(model, x, t, batch, n=SAMPLES, precision=precision):
        return smoother(batch, precision, n).attribute(model, x, t)

    # --- the head-to-head rows run in interleaved rounds (ours, the floors, Captum, PAIR, …;
    # again; again), and each reports its median: load that drifts hits them all alike.
    x, t = x_all[: plan.images], targets_all[: plan.images]
    px, pt = x_all[: plan.peer_images], targets_all[: plan.peer_images]
    peer_sigmas = sigmas_of(px)
    plain_chunk = tuning.choose_batch_size(
        plain, device, shape, precision, model_name=f"{loaded.name} (not folded)"
    ).batch_size
    contenders: dict[str, tuple[Callable[[], object], int]] = {
        "ours": (lambda: engine_run(ours, x, t, chunk), plan.images),
        "unfolded": (lambda: engine_run(plain, x, t, plain_chunk), plan.images),
    }
    for c in sorted(set(plan.floor_chunks) | {chunk}):
        contenders[f"floor-folded-{c}"] = (floor_passes(ours, px, pt, c, precision), len(px))
    for c in sorted(set(plan.floor_chunks) | {plain_chunk}):
        contenders[f"floor-plain-{c}"] = (floor_passes(plain, px, pt, c, precision), len(px))
    notes = {}
    notes["captum"] = importable("captum")
    if notes["captum"] is None:
        for b in plan.captum_batches:

            def run_captum(b=b):
                for i in range(len(px)):
                    captum_smoothgrad(plain, px[i : i + 1], int(pt[i]), peer_sigmas[i], b)

            contenders[f"captum-{b}"] = (run_captum, len(px))
    notes["pair"] = importable("saliency.core")
    if notes["pair"] is None:
        hwc = [px[i].permute(1, 2, 0).cpu().numpy() for i in range(len(px))]

        def run_pair():
            np.random.seed(SEED)
            for i in range(len(px)):
                pair_smoothgrad(plain, device, hwc[i], int(pt[i]))

        contenders["pair"] = (run_pair, len(px))

    say(f"warming up {len(contenders)} contenders")
    warm_up(contenders, ours, plain, px, pt, chunk, plain_chunk, peer_sigmas, device, precision)
    times: dict[str, list[float]] = {key: [] for key in contenders}
    for round_ in range(plan.repeats):
        if round_ and not deadline.fits(sum(v[-1] for v in times.values())):
            say(f"out of time after {round_} round(s)")
            break
        for key, (fn, _) in contenders.items():
            times[key].append(median_time(fn, 1, sync))
        say(
            f"round {round_ + 1}/{plan.repeats}: "
            + ", ".join(f"{k} {contenders[k][1] / v[-1]:.3f}" for k, v in times.items())
        )
    rate = {k: contenders[k][1] / statistics.median(v) for k, v in times.items()}
    seconds = {k: statistics.median(v) for k, v in times.items()}
    ours_rate = rate["ours"]
    facts["rates"] = {k: round(v, 4) for k, v in rate.items()}
    # Each contender's fastest round: the least disturbed estimate on a shared machine.
    best_rate = {k: contenders[k][1] / min(v) for k, v in times.items()}
    facts["best_round_rates"] = {k: round(v, 4) for k, v in best_rate.items()}
    if f"captum-{SAMPLES}" in best_rate:
        facts["ours_over_captum_n_best_rounds"] = best_rate["ours"] / best_rate[f"captum-{SAMPLES}"]
    if "pair" in best_rate:
        facts["ours_over_pair_best_rounds"] = best_rate["ours"] / best_rate["pair"]

    def add(key, what, setting, target="", note="", extra=None):
        rows.append(
            Row(
                section,
                what,
                setting,
                contenders[key][1],
                seconds[key],
                rate[key],
                ours_rate / rate[key],
                target,
                note,
                extra or {},
            )
        )

    add(
        "ours",
        "smoothgrad engine (ours)",
        f"auto chunk = {chunk}, {precision}",
        note=f"probe picked {chunk} in {choice.seconds:.0f} s",
    )
    add(
        "unfolded",
        "engine on the model as given",
        f"auto chunk = {plain_chunk}",
        note="without prepare_model's graph changes: what they are worth",
    )
    for kind, label, note in (
        (
            "folded",
            "floor: forward+backward only, our prepared model",
            "no noise, no sums: the floor for the graph the engine runs",
        ),
        (
            "plain",
            "floor: forward+backward only, model as given",
            "the floor for the graph the peers run",
        ),
    ):
        keys = [k for k in rate if k.startswith(f"floor-{kind}-")]
        best = max(keys, key=rate.get)
        by_chunk = {k.rsplit("-", 1)[1]: round(rate[k], 3) for k in keys}
        add(
            best,
            label,
            f"best chunk = {best.rsplit('-', 1)[1]}",
            target="ours ≥ 0.9 × floor" if kind == "folded" else "",
            note=f"{note}; maps/s by chunk {by_chunk}",
            extra={"by_chunk": by_chunk},
        )
        facts[f"floor_{kind}"] = rate[best]
        if kind == "folded":
            same = rate[f"floor-folded-{chunk}"]
            facts["ours_over_floor"] = ours_rate / rate[best]
            facts["ours_over_floor_same_chunk"] = ours_rate / same
            rows[-1].note += f"; ours ÷ floor at ours' chunk {chunk}: {ours_rate / same:.2f}"
    if notes["captum"] is None:
        add(
            f"captum-{SAMPLES}",
            "Captum NoiseTunnel(Saliency)",
            f"nt_samples_batch_size = {SAMPLES}",
            target="≥ 2.5×",
        )
        facts["ours_over_captum_n"] = ours_rate / rate[f"captum-{SAMPLES}"]
        keys = [f"captum-{b}" for b in plan.captum_batches]
        best = max(keys, key=rate.get)
        add(
            best,
            "Captum NoiseTunnel(Saliency), best setting",
            f"nt_samples_batch_size = {best.rsplit('-', 1)[1]}",
            note="tried " + ", ".join(str(b) for b in plan.captum_batches),
            extra={"by_batch": {k: round(rate[k], 3) for k in keys}},
        )
    else:
        rows.append(
            Row(section, "Captum NoiseTunnel(Saliency)", "", 0, None, None, note=notes["captum"])
        )
    if notes["pair"] is None:
        add(
            "pair",
            "PAIR saliency GradientSaliency.GetSmoothedMask",
            "its loop: one sample per call, numpy noise",
            target="≥ 1.4×",
        )
        facts["ours_over_pair"] = ours_rate / rate["pair"]
    else:
        rows.append(
            Row(section, "PAIR saliency GetSmoothedMask", "", 0, None, None, note=notes["pair"])
        )
    say(f"ours: {ours_rate:.3f} maps/s")

    # --- the whole CLI on a folder, against the engine on the same images (twice each)
    per_map = 1.0 / ours_rate
    if deadline.fits(per_map * plan.folder * 2 * plan.cli_rounds * 1.2):
        cli_rows(plan, device, precision, chunk, rows, section, facts)
    else:
        rows.append(Row(section, "whole CLI on a folder", "", 0, None, None,
                        note="skipped: out of time"))  # fmt: skip

    # --- cost against n and input size, while they fit (a map costs about 1 / ours_rate)
    if not deadline.fits(per_map * plan.sweep_images * (sum(plan.sweep_n) / SAMPLES + 5)):
        rows.append(
            Row("cost", "ours against n and size", "", 0, None, None, note="skipped: out of time")
        )
        return
    sx, st = x_all[: plan.sweep_images], targets_all[: plan.sweep_images]
    for n in plan.sweep_n:
        engine_run(ours, sx[:1], st[:1], chunk, n=min(n, chunk))
        seconds = median_time(lambda n=n: engine_run(ours, sx, st, chunk, n=n), 1, sync)
        rate = plan.sweep_images / seconds
        rows.append(
            Row(
                "cost",
                f"ours, n = {n}",
                f"224×224, chunk {chunk}",
                plan.sweep_images,
                seconds,
                rate,
                note=f"{rate * n:.1f} noisy copies/s",
            )
        )
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    for size in (224, 384):
        transform = ImageClassification(
            crop_size=size,
            resize_size=round(size * 256 / 224),
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
            interpolation=InterpolationMode.BICUBIC,
        )
        xs = load_photos(transform, plan.sweep_images).to(device)
        ts = engine.predict(ours, xs).argmax(1)
        c = tuning.choose_batch_size(
            ours, device, (3, size, size), precision, model_name=loaded.name
        ).batch_size
        engine_run(ours, xs[:1], ts[:1], c, n=c)
        seconds = median_time(lambda xs=xs, ts=ts, c=c: engine_run(ours, xs, ts, c), 1, sync)
        rate = plan.sweep_images / seconds
        rows.append(
            Row(
                "cost",
                f"ours, {size}×{size}",
                f"n = {SAMPLES}, auto chunk = {c}",
                plan.sweep_images,
                seconds,
                rate,
                note=f"{rate * SAMPLES * (size / 224) ** 2:.1f} noisy copies/s in 224² pixel terms",
            )
        )

    # --- precision: bf16 against fp32, speed and fidelity (same images, same seed); bf16
    # is emulated on CPUs without native bf16, 20–100× slower than fp32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return
    slowest = 1.0 if engine.native_bf16() else 100.0
    if not deadline.fits(per_map * plan.bf16_images * (2 + slowest)):
        rows.append(Row("precision", "ours, bf16", "", 0, None, None, note="skipped: out of time"))
        return
    bx, bt = x_all[: plan.bf16_images], targets_all[: plan.bf16_images]
    timed = {}
    maps = {}
    for p in ("fp32", "bf16"):
        c = tuning.choose_batch_size(ours, device, shape, p, model_name=loaded.name).batch_size
        engine_run(ours, bx[:1], bt[:1], c, n=c, precision=p)

        def run(p=p, c=c):
            maps[p] = engine_run(ours, bx, bt, c, precision=p)

        timed[p] = (median_time(run, 1, sync), c)
    rhos = [
        spearman(pooled_magnitude(maps["bf16"][i]), pooled_magnitude(maps["fp32"][i]))
        for i in range(plan.bf16_images)
    ]
    # For scale: two fp32 runs that differ only in the noise seed.
    reseeded = smoother(timed["fp32"][1], "fp32", seed=SEED + 1).attribute(ours, bx, bt)
    seed_rhos = [
        spearman(pooled_magnitude(reseeded[i]), pooled_magnitude(maps["fp32"][i]))
        for i in range(plan.bf16_images)
    ]
    facts["bf16_spearman_14x14"] = [round(r, 4) for r in rhos]
    facts["fp32_other_seed_spearman_14x14"] = [round(r, 4) for r in seed_rhos]
    facts["bf16_speed_over_fp32"] = timed["fp32"][0] / timed["bf16"][0]
    for p in ("fp32", "bf16"):
        seconds, c = timed[p]
        note = ""
        if p == "bf16":
            note = (
                f"{facts['bf16_speed_over_fp32']:.2f}× fp32's speed; Spearman with the fp32 maps "
                f"(|map| pooled 14×14): min {min(rhos):.4f} (target ≥ 0.98); for scale, fp32 "
                f"with another seed: min {min(seed_rhos):.4f}"
            )
        rows.append(
            Row(
                "precision",
                f"ours, {p}",
                f"auto chunk = {c}",
                plan.bf16_images,
                seconds,
                plan.bf16_images / seconds,
                note=note,
                extra={"spearman": rhos, "spearman_other_seed": seed_rhos} if note else {},
            )
        )


def cli_rows(plan, device, precision, chunk, rows, section, facts) -> None:
    from smoothgrad_cli.explain import ExplainOptions, run_explain
    from smoothgrad_cli.report import Report
    from smoothgrad_cli.settings import MapSettings

    files = sorted(p for p in (ROOT / "sample_images").iterdir() if p.suffix in (".png", ".jpg"))
    work = Path(tempfile.mkdtemp(prefix="smoothgrad-bench-"))
    try:
        folder = work / "in"
        folder.mkdir()
        for i in range(plan.folder):
            source = files[i % len(files)]
            shutil.copy(source, folder / f"{i:02d}-{source.name}")
        options = ExplainOptions(
            inputs=[str(folder)],
            settings=MapSettings(
                samples=SAMPLES, noise=NOISE * 100, seed=SEED, precision=precision
            ),
            output=work / "out",
            device=str(device),
        )
        from io import StringIO

        from rich.console import Console

        def cli_once() -> float:
            shutil.rmtree(work / "out", ignore_errors=True)
            quiet = Console(file=StringIO())
            report = Report(out=quiet, err=quiet)
            start = time.perf_counter()
            code = run_explain(options, report, None)
            seconds = time.perf_counter() - start
            if code != 0:
                raise RuntimeError(f"the CLI run failed: {report.failures[:3]}")
            return seconds

        # The engine alone on the same images, decoded beforehand.
        loaded = load_model()
        model = engine.prepare_model(loaded.model, device, input_shape=(3, 224, 224))
        tensors = []
        for path in sorted(folder.iterdir()):
            with Image.open(path) as image:
                tensors.append(loaded.transform(image.convert("RGB")))
        x = torch.stack(tensors).to(device)
        t = engine.predict(model, x).argmax(1)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

        def engine_once() -> float:
            sync()
            start = time.perf_counter()
            smoother(chunk, precision).attribute(model, x, t)
            sync()
            return time.perf_counter() - start

        # CLI, engine, CLI, engine: each side's faster run, so that a burst of load from
        # another process does not decide the ratio.
        cli_times, engine_times = [], []
        for _ in range(plan.cli_rounds):
            cli_times.append(cli_once())
            engine_times.append(engine_once())
        written = len(list((work / "out").glob("*.map.png")))
        cli_seconds, engine_seconds = min(cli_times), min(engine_times)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = cli_seconds / engine_seconds
    facts["cli_over_engine"] = ratio
    rows.append(
        Row(
            section,
            f"whole CLI on a folder of {plan.folder} (decode → engine → write)",
            "smoothgrad explain, in-process, cached chunk size",
            plan.folder,
            cli_seconds,
            plan.folder / cli_seconds,
            note=f"CLI ÷ engine on the same {plan.folder} images = {ratio:.3f} "
            f"(target ≤ 1.15); {written} maps written",
            extra={"engine_seconds": engine_times, "cli_seconds": cli_times},
        )
    )


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
# the pipeline without the model: decode → resize → render → write


#: the pipeline row's photos: JPEGs of mixed sizes, from VGA to 3 MP
MIXED_SIZES = ((640, 480), (1024, 768), (1600, 1200), (2048, 1536), (800, 800), (1200, 1600))


def jpeg_folder(folder: Path, count: int) -> Path:
    """``count`` JPEGs (quality 90) cut from the sample photos at ``MIXED_SIZES``."""
    from PIL import ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in (ROOT / "sample_images").iterdir() if p.suffix in (".png", ".jpg"))
    photos = []
    for path in files:
        with Image.open(path) as image:
            photos.append(image.convert("RGB"))
    for i in range(count):
        size = MIXED_SIZES[i % len(MIXED_SIZES)]
        photo = ImageOps.fit(photos[i % len(photos)], size)
        photo.save(folder / f"{i:04d}.jpg", quality=90)
    return folder


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
    from io import StringIO
    from unittest import mock

    from rich.console import Console

    from smoothgrad_cli import explain as explain_command
    from smoothgrad_cli.explainer import Explainer
    from smoothgrad_cli.report import Report
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
                rows.append(Row(section, "pipeline", f"--workers {workers}", 0, None, None,
                                note="skipped: out of time"))  # fmt: skip
                continue
            torch.set_num_threads(torch_threads)
            options = explain_command.ExplainOptions(
                inputs=[str(folder)],
                settings=settings,
                output=work / f"out{workers}-{torch_threads}",
                device="cpu",
                workers=workers,
            )
            quiet = Console(file=StringIO())
            report = Report(out=quiet, err=quiet)
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


# ------------------------------------------------------------------------------------------
# GPU section (only with CUDA): one child process per model, killed at its time budget

GPU_MODELS = ("efficientnet_lite0", "resnet50", "vit_b_16")


def gpu_section(plan: Plan, device: torch.device, rows: list[Row], facts: dict, deadline) -> None:
    """Each model in a child process with a hard time limit: a single call can take minutes
    where a kernel is slow (the first GPU run spent 50–94 s per round on single rows), and
    only a process can be stopped in the middle of one."""
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="smoothgrad-bench-gpu-"))
    try:
        for name in GPU_MODELS:
            budget = min(plan.gpu_model_s, deadline.left())
            out = work / f"{name}.json"
            command = [sys.executable, __file__, "--gpu-model", name, "--device", str(device)]
            # the child stops starting rows 15 s before its hard limit
            soft = f"{max(budget - 15, 1):.0f}"
            command += ["--gpu-json", str(out), "--gpu-seconds", soft, "--work", str(work)]
            command += ["--quick"] if plan is QUICK else []
            if budget < 30:
                rows.append(Row(f"GPU: {name}", name, "", 0, None, None, note="out of time"))
                continue
            say(f"GPU: {name}, {budget:.0f} s at most")
            # its own process group: the CLI runs it starts are stopped with it
            child = subprocess.Popen(command, start_new_session=True)
            try:
                child.wait(timeout=budget)
                note = ""
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                note = f"stopped at its {budget:.0f} s budget"
            done = json.loads(out.read_text()) if out.exists() else {"rows": [], "facts": {}}
            rows.extend(Row(**row) for row in done["rows"])
            facts.update(done["facts"])
            if note or not done["rows"]:
                rows.append(Row(f"GPU: {name}", name, "", 0, None, None, note=note or "no rows"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def random_weights(name: str, work: Path) -> str:
    """A file of random weights for a torchvision model (nothing is downloaded), as
    ``--weights FILE`` takes it."""
    import torchvision

    path = work / f"{name}-random.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)
    return str(path)


def gpu_model_child(name: str, plan: Plan, device: torch.device, out: Path, args) -> None:
    """The GPU table's rows for one model, written to ``out`` after each row (a child
    stopped at its budget keeps what it measured)."""
    from smoothgrad_cli.models import load_model

    deadline = Deadline(args.gpu_seconds)
    sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    weights = None if name == "efficientnet_lite0" else random_weights(name, Path(args.work))
    loaded = load_model(name, weights) if weights else load_model()
    shape = (3, loaded.crop_size, loaded.crop_size)
    gpu = torch.cuda.get_device_name(device)
    section = f"GPU {gpu}: {name}{' (random weights)' if weights else ''}, "
    section += f"{plan.gpu_images} images × n = {SAMPLES}"
    given = as_given(copy.deepcopy(loaded.model), device)
    ours = engine.prepare_model(loaded.model, device, input_shape=shape)
    x = load_photos(loaded.transform, plan.gpu_images).to(device)
    t = engine.predict(ours, x).argmax(1)
    rows: list[Row] = []
    facts: dict = {"gpu": gpu}

    def save() -> None:  # whole or not at all: the parent may stop this process any time
        partial = out.with_suffix(".partial")
        partial.write_text(
            json.dumps({"rows": [asdict(r) for r in rows], "facts": facts}, default=str)
        )
        partial.replace(out)

    def measure(what, setting, fn, note=""):
        if not deadline.fits(5.0):
            rows.append(Row(section, what, setting, 0, None, None, note="skipped: out of time"))
            return save()
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            seconds, timed = timed_rounds(fn, plan.gpu_repeats, sync, deadline)
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            note = f"{note} peak {peak:.1f} GiB; {timed} timed".strip()
            row = Row(section, what, setting, len(x), seconds, len(x) / seconds, note=note)
            row.extra["peak_gib"] = peak
        except Exception as exc:  # OOM, a compile failure: say so, go on
            torch.cuda.empty_cache()
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            row = Row(
                section, what, setting, 0, None, None, note=f"failed: {type(exc).__name__}: {first}"
            )
        rows.append(row)
        say(f"  {what}, {setting}: {fmt(row.maps_per_s)} maps/s")
        return save()

    # the chunk the CLI will find in the cache (the bench's own cache folder, shared with it)
    chunk = 256 if plan is QUICK else None
    if chunk is None:
        chunk = tuning.choose_batch_size(ours, device, shape, "bf16", model_name=loaded.name)
        chunk = chunk.batch_size
    facts[f"{name}_chunk"] = chunk

    def smoothgrad(model, precision):
        sg = smoother(chunk, precision)
        return lambda: sg.attribute(model, x, t)

    if importable("captum") is None:
        sigma = float(np.mean(sigmas_of(x)))

        def captum():
            with engine.float32_math(device, "fp32"):  # TF32 allowed, as for ours
                captum_smoothgrad(given, x, t, sigma, SAMPLES)

        measure("Captum NoiseTunnel(Saliency)", "nt_samples_batch_size = 50, TF32", captum)
    for precision, label in (
        ("fp32-strict", "fp32, no TF32"),
        ("fp32", "fp32 (TF32)"),
        ("bf16", "bf16"),
    ):
        measure("ours, eager", f"{label}, chunk {chunk}", smoothgrad(ours, precision))
    measure(
        "floor: forward+backward only",
        f"bf16, chunk {chunk}",
        floor_passes(ours, x, t, chunk, "bf16"),
    )
    # the CLI before compiling, which can take most of what is left
    cli_gpu_rows(name, weights, chunk, plan, device, rows, section, facts, deadline)
    save()
    if deadline.fits(60.0):
        started = time.perf_counter()
        compiled = tuning.compile_model(
            ours, device, shape, "bf16", chunk, model_name=name, say=say
        )
        facts[f"{name}_compile_s"] = time.perf_counter() - started
        if compiled is not ours:
            note = f"compiling took {facts[f'{name}_compile_s']:.0f} s;"
            measure(
                "ours, torch.compile", f"bf16, chunk {chunk}", smoothgrad(compiled, "bf16"), note
            )
            measure(
                "floor, compiled",
                f"bf16, chunk {chunk}",
                floor_passes(compiled, x, t, chunk, "bf16"),
            )
    save()
    gpu_verdicts(name, rows, section, facts)
    save()


def cli_gpu_rows(name, weights, chunk, plan, device, rows, section, facts, deadline) -> None:
    """The CLI on a folder of JPEGs in child processes: steady state = (large − small)
    images ÷ (wall time of the large run − of the small one), so start-up cancels; start-up =
    from the process's start to its first map, on a warm machine (after a first run). The
    engine rows' chunk, so that CLI ÷ engine compares like with like."""
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="smoothgrad-bench-cli-"))
    model = ["--model", name, "--weights", weights] if weights else []

    def run(count: int) -> tuple[float, float]:
        folder = work / f"in{count}"
        if not folder.exists():
            jpeg_folder(folder, count)
        command = [sys.executable, "-m", "smoothgrad_cli", "explain", str(folder), "-o",
                   str(work / f"out{count}"), "--device", str(device), "--json", "-q",
                   "-n", str(SAMPLES), "--batch-size", str(chunk), *model]  # fmt: skip
        shutil.rmtree(work / f"out{count}", ignore_errors=True)
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        first = None
        for line in child.stdout:
            if first is None and '"ok"' in line:
                first = time.perf_counter() - started
        if child.wait() != 0:
            raise RuntimeError(f"the CLI exited {child.returncode} on {count} images")
        return first or math.nan, time.perf_counter() - started

    try:
        if not deadline.fits(60.0):
            rows.append(
                Row(section, "CLI on a folder", "", 0, None, None, note="skipped: out of time")
            )
            return
        run(4)  # first-call costs: files cached, kernels loaded
        small_first, small = run(plan.cli_small)
        large_first, large = run(plan.cli_large)
        steady = (plan.cli_large - plan.cli_small) / (large - small)
        facts[f"{name}_cli_steady"] = steady
        facts[f"{name}_cli_startup_s"] = min(small_first, large_first)
        rows.append(
            Row(
                section,
                f"CLI on a folder of JPEGs, steady state ({plan.cli_large} − {plan.cli_small})",
                f"smoothgrad explain --json, precision auto, --batch-size {chunk}",
                plan.cli_large - plan.cli_small,
                large - small,
                steady,
                note=f"wall {small:.1f} s for {plan.cli_small}, {large:.1f} s for {plan.cli_large}",
            )
        )
        rows.append(
            Row(
                section,
                "CLI start-up to the first map (warm cache)",
                "process start → first JSON line",
                1,
                min(small_first, large_first),
                None,
                target="≤ 5 s",
            )
        )
    except Exception as exc:
        rows.append(Row(section, "CLI on a folder", "", 0, None, None, note=f"failed: {exc}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def gpu_verdicts(name, rows, section, facts) -> None:
    """Each row against Captum (speed and peak memory) and the CLI against its engine."""
    mine = [r for r in rows if r.section == section]
    captum = next((r for r in mine if r.what.startswith("Captum") and r.maps_per_s), None)
    goal = {"resnet50": 2.5, "vit_b_16": 6.0}.get(name)
    engine_bf16 = next((r for r in mine if r.what == "ours, eager" and "bf16" in r.setting), None)
    for row in mine:
        if row is captum or not row.maps_per_s:
            continue
        if captum is not None:
            row.ratio = row.maps_per_s / captum.maps_per_s
            ours, theirs = row.extra.get("peak_gib"), captum.extra.get("peak_gib")
            if ours and theirs:
                row.note += f" = {ours / theirs:.2f} of Captum's"
        if row.what.startswith("ours") and goal is not None:
            row.target = f"≥ {goal}× Captum, peak ≤ ½ Captum's"
        if row.what.startswith("CLI") and engine_bf16 is not None and engine_bf16.maps_per_s:
            ratio = row.maps_per_s / engine_bf16.maps_per_s
            facts[f"{name}_cli_over_engine"] = ratio
            row.target = "≥ 0.9 of the engine (bf16 eager)"
            row.note += f"; {ratio:.2f} of the engine"
        facts[f"{name}: {row.what}, {row.setting}"] = row.maps_per_s


# ------------------------------------------------------------------------------------------
# output


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


def ratio_label(section: str) -> str:
    return "this ÷ Captum" if section.startswith("GPU") else "ours ÷ this"


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores "
        f"({meta['machine']['torch_threads']} torch threads, {meta['machine']['cpu_capability']})"
        + (f", GPU {meta['machine']['gpu']}" if meta["machine"]["gpu"] else "")
        + f"; torch {meta['machine']['torch']}, Python {meta['machine']['python']}.",
        f"Command: `{meta['command']}`; load average before {meta['load_before']}, after "
        f"{meta['load_after']}; {meta['minutes']:.1f} minutes.",
        "",
    ]
    facts = meta.get("facts", {})
    checks = [
        ("ours ÷ Captum (nt_samples_batch_size = n)", "ours_over_captum_n", "≥ 2.5", 2.5, 1),
        ("ours ÷ PAIR's loop", "ours_over_pair", "≥ 1.4", 1.4, 1),
        (
            "ours ÷ Captum (n), fastest round of each",
            "ours_over_captum_n_best_rounds",
            "(≥ 2.5)",
            2.5,
            1,
        ),
        ("ours ÷ PAIR, fastest round of each", "ours_over_pair_best_rounds", "(≥ 1.4)", 1.4, 1),
        ("ours ÷ floor (best chunk)", "ours_over_floor", "≥ 0.9", 0.9, 1),
        ("ours ÷ floor (at ours' chunk)", "ours_over_floor_same_chunk", "≥ 0.9", 0.9, 1),
        ("whole CLI ÷ engine, same images", "cli_over_engine", "≤ 1.15", 1.15, -1),
    ]
    for model in GPU_MODELS:
        checks += [
            (f"{model}: CLI ÷ engine (bf16), steady state", f"{model}_cli_over_engine", "≥ 0.9",
             0.9, 1),
            (f"{model}: CLI start-up to the first map, s", f"{model}_cli_startup_s", "≤ 5", 5, -1),
        ]  # fmt: skip
    checks.append(
        ("pipeline: 16 cores at its rate per core, images/s", "pipeline_16_cores", "≥ 400", 400, 1)
    )
    if facts.get("bf16_spearman_14x14"):
        facts["bf16_spearman_min"] = min(facts["bf16_spearman_14x14"])
        checks.append(
            ("bf16 vs fp32 Spearman (14×14), worst image", "bf16_spearman_min", "≥ 0.98", 0.98, 1)
        )
    summary = [
        (label, facts[key], goal, value * sign >= bound * sign)
        for label, key, goal, bound, sign in checks
        for value in [facts.get(key)]
        if value is not None
    ]
    if summary:
        lines += [
            "**Targets** (medians of the interleaved rounds; the fastest-round lines are a "
            "second, less load-sensitive estimate)",
            "",
            "| measure | measured | target | met |",
            "| --- | ---: | --- | --- |",
        ]
        lines += [
            f"| {label} | {value:.3f} | {goal} | {'yes' if ok else 'no'} |"
            for label, value, goal, ok in summary
        ]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines += [
                "",
                f"**{section}**",
                "",
                "| what | setting | images | s | maps/s | "
                f"{ratio_label(section)} | target | notes |",
                "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
            ]
        lines.append(
            f"| {row.what} | {row.setting} | {row.images} | {fmt(row.seconds, 2)} | "
            f"{fmt(row.maps_per_s)} | {fmt(row.ratio, 2)} | {row.target} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--only", choices=("all", "pipeline"), default="all", help="pipeline: that row alone"
    )
    parser.add_argument(
        "--out", action="append", default=[], help="write results (.json or .md); repeatable"
    )
    parser.add_argument(
        "--keep-cache",
        action="store_true",
        help="use the user's chunk-size cache instead of probing afresh in a temporary one",
    )
    # a GPU model's child process (see gpu_section)
    parser.add_argument("--gpu-model", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-json", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-seconds", type=float, default=120.0, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    device = engine.resolve_device(args.device)
    if args.gpu_model:
        gpu_model_child(args.gpu_model, plan, device, Path(args.gpu_json), args)
        return 0
    if not args.keep_cache:
        os.environ["SMOOTHGRAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="smoothgrad-bench-cache-")
    if device.type == "cpu":
        tuning.keep_freed_memory()  # as the CLI does; for every row of this process alike
    started = time.perf_counter()
    deadline = Deadline(plan.minutes * 60)
    meta = {
        "command": " ".join(["python", "bench/bench.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "plan": asdict(plan),
        "device": str(device),
    }
    rows: list[Row] = []
    facts: dict = {}
    torch.manual_seed(0)
    if args.only == "all" and device.type == "cuda":
        # The CPU table's peers (PAIR's loop, the unfolded model, sweeps) say nothing here.
        with deadline.section(deadline.left() - plan.pipeline_s):
            gpu_section(plan, device, rows, facts, deadline)
    elif args.only == "all":
        with deadline.section(plan.cpu_section_s):
            lite0_section(plan, device, rows, facts, deadline)
    # its own time even when a section before overran (a call cannot be cut short here)
    pipeline_rows(plan, rows, facts, Deadline(plan.pipeline_s))
    meta["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    meta["minutes"] = (time.perf_counter() - started) / 60
    meta["facts"] = facts
    text = markdown(rows, meta)
    print(text)
    for out in args.out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text(
                json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1, default=str)
                + "\n"
            )
        else:
            path.write_text(text)
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
