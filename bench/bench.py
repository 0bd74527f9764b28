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

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from common import FULL, QUICK, Deadline, Row, fmt, machine, say
from cpu_table import lite0_section
from gpu import GPU_MODELS, gpu_model_child, gpu_section
from pipeline_row import pipeline_rows

from smoothgrad_cli import engine, tuning

# ------------------------------------------------------------------------------------------
# the tables, and the entry point


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
