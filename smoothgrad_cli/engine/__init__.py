"""SmoothGrad and its base methods, in pure torch (no files, no terminal).

Everything here works on model-input tensors ``(N, C, H, W)`` and a model that maps them to
class scores ``(N, classes)``. The score S_c is the model's output before any softmax, as in
the paper and in Captum.

    from smoothgrad_cli.engine import Gradient, SmoothGrad
    maps = SmoothGrad(Gradient(), noise_level=0.15, samples=50).attribute(model, x, target)

A caller that gets its images a few at a time (a folder) streams them, so that every chunk
of noisy copies is full but the last: ``stream = smoother.stream(model)``, then
``stream.feed(x, target)`` as images come (each call returns the maps that finished) and
``stream.finish()`` for the rest. Noise is drawn on the CPU from (seed, sample index) alone
(``sample_noise``), so a seed gives the same noise on every device.
"""

from .methods import (
    BASE_METHODS,
    BaseMethod,
    Gradient,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    input_gradient,
)
from .model import (
    PRECISIONS,
    InplaceReLU6,
    autocast,
    float32_math,
    fold_batchnorm,
    input_format,
    model_device,
    native_bf16,
    prepare_model,
    resolve_device,
    resolve_precision,
)
from .noise import sample_noise, sample_seed
from .smoothgrad import SmoothGrad, default_batch_size, predict
from .stream import SMOOTHINGS, AttributionStream, aggregate

__all__ = [
    "BASE_METHODS", "PRECISIONS", "SMOOTHINGS", "AttributionStream", "BaseMethod", "Gradient",
    "GuidedBackprop", "InplaceReLU6", "InputXGradient", "IntegratedGradients", "SmoothGrad",
    "aggregate", "autocast", "default_batch_size", "float32_math", "fold_batchnorm",
    "input_format", "input_gradient", "model_device", "native_bf16", "predict", "prepare_model",
    "resolve_device", "resolve_precision", "sample_noise", "sample_seed",
]  # fmt: skip
