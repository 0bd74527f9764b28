"""SmoothGrad and its base methods, in pure torch (no files, no terminal).

Everything here works on model-input tensors ``(N, C, H, W)`` and a model that maps them to
class scores ``(N, classes)``. The score S_c is the model's output before any softmax, as in
the paper and in Captum.

    from smoothgrad_cli.engine import Gradient, SmoothGrad
    maps = SmoothGrad(Gradient(), noise_level=0.15, samples=50).attribute(model, x, target)
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
    fold_batchnorm,
    input_format,
    model_device,
    prepare_model,
    resolve_device,
    resolve_precision,
)
from .smoothgrad import SMOOTHINGS, SmoothGrad, aggregate, default_batch_size, predict, sample_seed

__all__ = [
    "BASE_METHODS", "PRECISIONS", "SMOOTHINGS", "BaseMethod", "Gradient", "GuidedBackprop",
    "InplaceReLU6", "InputXGradient", "IntegratedGradients", "SmoothGrad", "aggregate",
    "autocast", "default_batch_size", "fold_batchnorm", "input_format", "input_gradient",
    "model_device", "predict", "prepare_model", "resolve_device", "resolve_precision",
    "sample_seed",
]  # fmt: skip
