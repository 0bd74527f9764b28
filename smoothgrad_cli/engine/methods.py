"""The base methods: a sensitivity map M_c(x) for one batch of inputs, no smoothing."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .model import autocast, float32_math, memory_format_of

# Activations guided backprop knows how to modify: their backward is a 0/1 mask, so clamping
# the incoming gradient at zero is exactly "guided" (Springenberg et al. 2015).
_GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def input_gradient(
    model: nn.Module, x: Tensor, target: Tensor, precision: str = "fp32"
) -> tuple[Tensor, Tensor]:
    """dS_c/dx for each row of ``x``, and the scores S_c themselves.

    The scores of a batch are summed before the backward pass: in eval mode rows do not
    interact, so d(sum)/dx_i is each row's own gradient and one backward pass does them all.
    """
    x = x.detach().requires_grad_(True)
    with float32_math(x.device, precision):  # TF32 or not, for the backward pass as well
        with autocast(x.device, precision):
            scores = model(x)
        if scores.dim() != 2:
            raise ValueError(
                f"model must return (N, classes) scores, got shape {tuple(scores.shape)}"
            )
        selected = scores.gather(1, target[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad.float(), selected.detach().float()


class BaseMethod(ABC):
    """A sensitivity map M_c(x) for one batch of inputs; smoothing is built on top."""

    name: ClassVar[str]
    #: forward+backward passes per input row, to size chunks of work
    passes_per_input: int = 1

    @abstractmethod
    def attribute(
        self, model: nn.Module, x: Tensor, target: Tensor, precision: str = "fp32"
    ) -> Tensor:
        """Maps of the same shape as ``x``, in float32."""

    def hooks(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Changes to the model that must be in place while attributing (none by default)."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Gradient(BaseMethod):
    """The vanilla gradient dS_c/dx (Simonyan et al. 2014), signed."""

    name = "gradient"

    def attribute(self, model, x, target, precision="fp32"):
        return input_gradient(model, x, target, precision)[0]


class InputXGradient(BaseMethod):
    """x ⊙ dS_c/dx (Shrikumar et al. 2016). Under smoothing, x is the noisy copy, as in Captum."""

    name = "input-x-gradient"

    def attribute(self, model, x, target, precision="fp32"):
        return x.float() * input_gradient(model, x, target, precision)[0]


@dataclass(frozen=True)
class Completeness:
    """The two sides of integrated gradients' completeness identity, Σ IG(x) = S_c(x) − S_c(x′),
    for each row of one ``attribute`` call. Left on the device, as computed: a copy to the host
    per chunk would wait for the device each time (and MPS has no float64 to sum in)."""

    sums: Tensor  # (rows,) Σ of each row's attribution over channels and pixels
    scores: Tensor  # (rows,) S_c(x), from a forward pass
    baseline_scores: Tensor  # (rows,) S_c(x′)


class IntegratedGradients(BaseMethod):
    """(x − x') ⊙ ∫₀¹ dS_c/dx (x' + α(x − x')) dα (Sundararajan et al. 2017).

    The integral uses Gauss–Legendre quadrature, Captum's default rule, which is exact for
    polynomials of degree 2·steps − 1 along the path. Its nodes are not nested: a rule of
    2·steps nodes shares none with the rule of ``steps``, so refining recomputes every node.
    """

    name = "integrated-gradients"

    def __init__(
        self, steps: int = 32, baseline: Tensor | float | Callable[[Tensor], Tensor] | None = None
    ) -> None:
        """``baseline`` x′: a tensor broadcast against the inputs (a constant image), a number,
        ``None`` for zeros, or a function of the inputs (a blurred copy of each)."""
        if steps < 1:
            raise ValueError(f"integrated gradients needs steps >= 1, got {steps}")
        self.steps = steps
        self.passes_per_input = steps
        self.baseline = baseline
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        self._alphas = [float(a) for a in 0.5 * (nodes + 1.0)]
        self._weights = [float(w) for w in 0.5 * weights]
        self._records: list[Completeness] | None = None

    def with_steps(self, steps: int) -> IntegratedGradients:
        """The same method (the same baseline) with another number of nodes."""
        return IntegratedGradients(steps, baseline=self.baseline)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[Completeness]]:
        """While open, every ``attribute`` call appends its rows' ``Completeness``, in call
        order, to the list yielded.

        A side channel rather than a second return value, so that SmoothGrad's chunk loop
        runs the method as any other: it calls ``attribute`` once per chunk, rows in order,
        and a chunk that runs out of memory raises before it appends, so the list holds each
        row once. Costs two forward passes per chunk (one when the baseline is one image for
        all rows), against ``steps`` forward and backward passes.
        """
        self._records = records = []
        try:
            yield records
        finally:
            self._records = None

    def attribute(self, model, x, target, precision="fp32"):
        baseline = self._baseline(x)
        delta = x - baseline
        total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        # One pass per quadrature node keeps memory at one chunk, whatever the number of steps.
        for alpha, weight in zip(self._alphas, self._weights, strict=True):
            path_point = (baseline + alpha * delta).contiguous(memory_format=memory_format_of(x))
            total += weight * input_gradient(model, path_point, target, precision)[0]
        maps = delta.float() * total
        if self._records is not None:
            self._records.append(
                Completeness(
                    maps.flatten(1).sum(1),
                    _scores(model, x, target, precision),
                    self._baseline_scores(model, x, baseline, target, precision),
                )
            )
        return maps

    def _baseline(self, x: Tensor) -> Tensor:
        if self.baseline is None:
            baseline = torch.zeros((), device=x.device)
        elif callable(self.baseline):
            baseline = self.baseline(x)
        else:
            baseline = self.baseline
        return torch.as_tensor(baseline, dtype=x.dtype, device=x.device)

    @staticmethod
    def _baseline_scores(model, x, baseline, target, precision) -> Tensor:
        if baseline.dim() == x.dim() and baseline.shape[0] != 1:
            return _scores(model, baseline.expand_as(x), target, precision)
        # One image for every row (black, white, a file): one forward pass, every row's class.
        return _forward(model, baseline.expand_as(x[:1]), precision)[0, target]

    def __repr__(self) -> str:
        return f"IntegratedGradients(steps={self.steps})"


def _forward(model: nn.Module, x: Tensor, precision: str) -> Tensor:
    """The scores of rows ``x``, from a forward pass alone, in the arithmetic of the gradients'
    (``input_gradient``), so that both sides of completeness are computed alike."""
    with torch.no_grad(), float32_math(x.device, precision), autocast(x.device, precision):
        return model(x.contiguous(memory_format=memory_format_of(x)))


def _scores(model: nn.Module, x: Tensor, target: Tensor, precision: str) -> Tensor:
    """S_c of each row, from a forward pass alone."""
    return _forward(model, x, precision).gather(1, target[:, None]).squeeze(1)


class GuidedBackprop(BaseMethod):
    """Gradient with every ReLU's backward pass clamped at zero (Springenberg et al. 2015).

    Only ``nn.ReLU`` and ``nn.ReLU6`` modules are modified (as Captum does for ``nn.ReLU``);
    a ReLU applied as a function inside ``forward`` cannot be seen and is left as it is.
    """

    name = "guided-backprop"

    def attribute(self, model, x, target, precision="fp32"):
        return input_gradient(model, x, target, precision)[0]

    @contextlib.contextmanager
    def hooks(self, model: nn.Module) -> Iterator[None]:
        others = sorted(
            {
                type(m).__name__
                for m in model.modules()
                if _is_activation(m) and not isinstance(m, _GUIDED_ACTIVATIONS)
            }
        )
        if others:
            raise ValueError(
                "guided-backprop needs a model whose activations are all ReLU or ReLU6; "
                f"this model also uses {', '.join(others)}"
            )
        handles = [
            m.register_forward_hook(_clamp_gradient_hook)
            for m in model.modules()
            if isinstance(m, _GUIDED_ACTIVATIONS)
        ]
        if not handles:
            raise ValueError("guided-backprop needs a model with nn.ReLU or nn.ReLU6 modules")
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _clamp_gradient_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    # A tensor hook rather than a custom autograd.Function: it survives in-place ReLUs and
    # later in-place additions (ResNet's `out += identity`) that a Function's view would not.
    if output.requires_grad:
        output.register_hook(lambda grad: grad.clamp(min=0))


def _is_activation(module: nn.Module) -> bool:
    kind = type(module)
    if kind.__module__ == "torch.nn.modules.activation":
        return kind.__name__ not in ("MultiheadAttention", "Softmax", "LogSoftmax", "Softmin")
    # timm's and transformers' own activation modules (GELUActivation, QuickGELUActivation, …)
    return kind.__module__.startswith(("timm.layers.activations", "transformers.activations"))


BASE_METHODS: dict[str, type[BaseMethod]] = {
    cls.name: cls for cls in (Gradient, InputXGradient, IntegratedGradients, GuidedBackprop)
}
