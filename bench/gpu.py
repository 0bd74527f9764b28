"""The GPU table (only with CUDA): one child process per model (``bench.py --gpu-model``),
killed at its time budget. In each: Captum, this tool's engine eager in fp32 without and
with TF32 and in bf16, the floor, the CLI on folders of JPEGs (steady state and start-up),
``torch.compile`` and the compiled floor, with peak memory against Captum's."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from common import (
    QUICK,
    ROOT,
    SAMPLES,
    Deadline,
    Plan,
    Row,
    device_sync,
    fmt,
    importable,
    jpeg_folder,
    load_photos,
    say,
    skipped,
    timed_rounds,
)
from contenders import as_given, captum_smoothgrad, floor_passes, sigmas_of, smoother

from smoothgrad_cli import engine, tuning

#: the entry point, which a GPU model's child process runs again
BENCH = Path(__file__).with_name("bench.py")

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
            command = [sys.executable, str(BENCH), "--gpu-model", name, "--device", str(device)]
            # the child stops starting rows 15 s before its hard limit
            soft = f"{max(budget - 15, 1):.0f}"
            command += ["--gpu-json", str(out), "--gpu-seconds", soft, "--work", str(work)]
            command += ["--quick"] if plan is QUICK else []
            if budget < 30:
                rows.append(skipped(f"GPU: {name}", name, "out of time"))
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
                rows.append(skipped(f"GPU: {name}", name, note or "no rows"))
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
    sync = device_sync(device)
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
            rows.append(skipped(section, what, setting=setting))
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
            row = skipped(section, what, f"failed: {type(exc).__name__}: {first}", setting)
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
            rows.append(skipped(section, "CLI on a folder"))
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
        rows.append(skipped(section, "CLI on a folder", f"failed: {exc}"))
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
