"""The CPU table's last rows, while they fit its time: this tool's engine against n and
input size, and bf16 against fp32 (speed, and agreement of the maps)."""

from __future__ import annotations

import torch
from common import SAMPLES, SEED, Plan, Row, device_sync, load_photos, median_time, skipped
from contenders import engine_run, pooled_magnitude, smoother

from smoothgrad_cli import engine, tuning
from smoothgrad_cli.check.metrics import spearman


def sweep_rows(plan: Plan, device, name, ours, x_all, targets_all, chunk, precision, rows) -> None:
    """Cost against n (at the tuner's chunk) and against input size (224² and 384²)."""
    sync = device_sync(device)
    sx, st = x_all[: plan.sweep_images], targets_all[: plan.sweep_images]
    for n in plan.sweep_n:
        engine_run(ours, sx[:1], st[:1], chunk, precision, n=min(n, chunk))
        seconds = median_time(lambda n=n: engine_run(ours, sx, st, chunk, precision, n=n), 1, sync)
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
            ours, device, (3, size, size), precision, model_name=name
        ).batch_size
        engine_run(ours, xs[:1], ts[:1], c, precision, n=c)
        seconds = median_time(
            lambda xs=xs, ts=ts, c=c: engine_run(ours, xs, ts, c, precision), 1, sync
        )
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


def precision_rows(
    plan: Plan, device, name, ours, x_all, targets_all, per_map, rows, facts, deadline
) -> None:
    """bf16 against fp32 on the same images with the same seed, when they fit (a map costs
    about ``per_map`` seconds in fp32)."""
    sync = device_sync(device)
    shape = tuple(x_all.shape[1:])
    # --- precision: bf16 against fp32, speed and fidelity (same images, same seed); bf16
    # is emulated on CPUs without native bf16, 20–100× slower than fp32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return
    slowest = 1.0 if engine.native_bf16() else 100.0
    if not deadline.fits(per_map * plan.bf16_images * (2 + slowest)):
        rows.append(skipped("precision", "ours, bf16"))
        return
    bx, bt = x_all[: plan.bf16_images], targets_all[: plan.bf16_images]
    timed = {}
    maps = {}
    for p in ("fp32", "bf16"):
        c = tuning.choose_batch_size(ours, device, shape, p, model_name=name).batch_size
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
