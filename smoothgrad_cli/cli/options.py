"""Options more than one command takes, written once: each is a type to annotate a Typer
parameter with. Choices are enums, so ``--help`` lists their values and a typo gets Typer's
own message."""

from __future__ import annotations

from typing import Annotated

import typer

from ..settings import Method, Precision, Smoothing
from .app import METHOD, MODEL, OUTPUT, RUN

ModelName = Annotated[
    str,
    typer.Option(
        "--model",
        metavar="NAME",
        help="Classifier: the embedded efficientnet_lite0, a torchvision classifier (resnet50), "
        "timm:NAME[.TAG], or hf:FOLDER or hf:ORG/NAME.",
        rich_help_panel=MODEL,
    ),
]
Weights = Annotated[
    str | None,
    typer.Option(
        "--weights",
        metavar="NAME|FILE",
        help="Weights: an enum name (DEFAULT, IMAGENET1K_V2, …), a timm pretrained tag, or a "
        "local file (.pt/.pth state dict or .safetensors).",
        rich_help_panel=MODEL,
    ),
]
Labels = Annotated[
    str | None,
    typer.Option(
        "--labels",
        metavar="FILE",
        help="Class names for the model's own head: one per line, or JSON (a list, or "
        "{index: name}) (default: ImageNet's for 1,000 classes, else class 0 … K−1).",
        rich_help_panel=MODEL,
    ),
]
MethodChoice = Annotated[
    Method, typer.Option("--method", help="Base method M_c(x).", rich_help_panel=METHOD)
]
SmoothingChoice = Annotated[
    Smoothing,
    typer.Option(
        "--smoothing",
        help="smoothgrad (mean), smoothgrad-sq (mean of squares), vargrad (variance), none.",
        rich_help_panel=METHOD,
    ),
]
Noise = Annotated[
    float,
    typer.Option(
        "--noise",
        metavar="PCT",
        help="Noise level σ in percent of (max − min) of each image's model-input tensor.",
        rich_help_panel=METHOD,
    ),
]
Samples = Annotated[
    int,
    typer.Option(
        "--samples", "-n", metavar="N", help="Noisy copies per image.", rich_help_panel=METHOD
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        metavar="N",
        help="Seed of the noise: same seed, same map.",
        rich_help_panel=METHOD,
    ),
]
IgSteps = Annotated[
    int,
    typer.Option(
        "--ig-steps",
        metavar="N",
        help="Integrated gradients: the most quadrature nodes a map may take (refining "
        "16, 32, 64, … up to N until --ig-tolerance is met), or the nodes with "
        "--ig-tolerance 0.",
        rich_help_panel=METHOD,
    ),
]
IgTolerance = Annotated[
    float,
    typer.Option(
        "--ig-tolerance",
        metavar="T",
        help="Integrated gradients: refine each map until its attributions sum to the score "
        "change within this fraction (0.05: 5 %); 0 for exactly --ig-steps nodes.",
        rich_help_panel=METHOD,
    ),
]
IgBaseline = Annotated[
    str,
    typer.Option(
        "--baseline",
        metavar="NAME|FILE",
        help="Integrated gradients' starting image: black, white, blur (each input blurred), "
        "uniform (seeded noise) or an image file.",
        rich_help_panel=METHOD,
    ),
]
Target = Annotated[
    str | None,
    typer.Option(
        "--target",
        metavar="CLASS",
        help="Class to explain: an index or a class name (default: the top-1 prediction).",
        rich_help_panel=METHOD,
    ),
]
TopK = Annotated[
    int,
    typer.Option(
        "--top-k",
        metavar="K",
        help="One map for each of the K best classes.",
        rich_help_panel=METHOD,
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        metavar="N",
        help="Noisy copies per forward/backward chunk (default: timed once per model, device, "
        "input size and precision, then cached, for runs large enough to pay for the timing; "
        "see SMOOTHGRAD_CACHE_DIR; SMOOTHGRAD_RETUNE=1 times it again).",
        rich_help_panel=RUN,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=RUN
    ),
]
PrecisionChoice = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="fp32 (TF32 tensor cores on CUDA), fp32-strict (no TF32), bf16, fp16 (CUDA), or "
        "auto: bf16 on CUDA and on CPUs with native bf16 where it is faster for the model "
        "(timed once, cached), fp32 elsewhere.",
        rich_help_panel=RUN,
    ),
]
JsonLines = Annotated[
    bool,
    typer.Option("--json", help="One JSON object per image on stdout.", rich_help_panel=OUTPUT),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Tracebacks for failures.", rich_help_panel=RUN)
]

__all__ = [
    "BatchSize", "Device", "IgBaseline", "IgSteps", "IgTolerance", "JsonLines", "Labels",
    "MethodChoice", "ModelName", "Noise", "PrecisionChoice", "Samples", "Seed", "SmoothingChoice",
    "Target", "TopK", "Verbose", "Weights",
]  # fmt: skip
