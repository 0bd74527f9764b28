"""SmoothGrad and its base methods, in pure torch (no files, no terminal).

Everything here works on model-input tensors ``(N, C, H, W)`` and a model that maps them to
class scores ``(N, classes)``. The score S_c is the model's output before any softmax, as in
the paper and in Captum.

    from smoothgrad_cli.engine import Gradient, SmoothGrad
    maps = SmoothGrad(Gradient(), noise_level=0.15, samples=50).attribute(model, x, target)
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

SMOOTHINGS = ("smoothgrad", "smoothgrad-sq", "vargrad", "none")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Activations guided backprop knows how to modify: their backward is a 0/1 mask, so clamping
# the incoming gradient at zero is exactly "guided" (Springenberg et al. 2015).
_GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` takes CUDA, then Apple's MPS, then the CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError("device 'mps' asked for, but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto`` into a concrete precision for ``device``.

    bf16 only where the hardware has fast bf16 and the maps stay faithful (see README): CUDA
    devices that support it. On CPUs fp32 stays the default: bf16 maps are faithful (Spearman
    0.99 with fp32's, pooled 14×14, n = 50, measured by ``make bench``) but CPUs without
    native bf16 (AVX2 only, like the benchmark's) emulate it and ran 30× slower than fp32, and
    how much CPUs with AVX-512 BF16 or AMX gain varies by model; ``--precision bf16`` opts in.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("precision 'fp16' is not supported on the CPU; use bf16 or fp32")
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def prepare_model(
    model: nn.Module,
    device: torch.device | str = "cpu",
    channels_last: bool | None = None,
    *,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Put ``model`` in eval mode on ``device`` with its parameters frozen.

    Only the gradient with respect to the input is needed, so no parameter gradient is ever
    computed or stored: less memory, and the backward pass skips the weight-gradient GEMMs.

    In-place ``nn.ReLU6`` layers become ``InplaceReLU6`` (same values, no hidden copy).
    With ``input_shape`` (one input's ``(C, H, W)``), BatchNorm layers that directly follow a
    convolution are folded into it (see ``fold_batchnorm``): the same function, one pass over
    the activations fewer in the forward and in the backward. The model is changed in place.
    """
    device = torch.device(device)
    model = model.eval().to(device)
    model.requires_grad_(False)
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda") and _has_conv(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    _swap_inplace_relu6(model)
    if input_shape is not None and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        fold_batchnorm(model, input_shape)
    return model


class InplaceReLU6(nn.ReLU6):
    """``nn.ReLU6(inplace=True)`` whose backward reads the output instead of a saved copy.

    For an in-place clamp, autograd first copies the input (its backward formula wants the
    input), which costs a full pass over every activation: on CPUs about a tenth of a
    mobile net's forward+backward. Here the backward reads the clamped output, which gives
    exactly the same mask (0 < y < 6 exactly where 0 < x < 6), so the copy is skipped. Same
    values, same memory as ``inplace=True``; guided backprop sees an ``nn.ReLU6``.
    """

    def __init__(self) -> None:
        super().__init__(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad and not x.is_leaf and not x._is_view():
            return _ReLU6InPlace.apply(x)
        return nn.functional.relu6(x, inplace=self.inplace)


class _ReLU6InPlace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x.clamp_(0.0, 6.0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)


def _swap_inplace_relu6(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU6 and child.inplace:
                setattr(parent, name, InplaceReLU6())


def fold_batchnorm(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Fold eval-mode BatchNorm layers into the convolution that feeds them; return how many.

    In eval mode BatchNorm is y = (x − μ)·γ/√(σ² + ε) + β per channel, an affine map that the
    convolution before it can absorb: w' = w·s, b' = (b − μ)·s + β with s = γ/√(σ² + ε). The
    model computes the same function (to float rounding) with one elementwise pass fewer per
    layer in the forward and in the backward, which on CPUs is a large share of a mobile
    net's time.

    Which BatchNorm follows which convolution is read from one real forward pass on an
    ``input_shape`` example, not guessed from module names: a pair is folded only when the
    BatchNorm's input *is* the convolution's output, nothing else uses that output, and each
    module runs once per forward. Other layers are left alone. Plain ``nn.BatchNorm2d``
    becomes ``nn.Identity``; timm's ``BatchNormAct2d`` keeps its dropout and activation.
    """
    model.eval()
    calls: list[tuple[nn.Module, Tensor, Tensor]] = []
    counts: dict[nn.Module, int] = {}

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        counts[module] = counts.get(module, 0) + 1
        if inputs and isinstance(inputs[0], Tensor) and isinstance(output, Tensor):
            calls.append((module, inputs[0], output))

    handles = [
        m.register_forward_hook(record)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) or _foldable_norm(m)
    ]
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((1, *input_shape), generator=generator).to(device, dtype)
    example = example.contiguous(memory_format=input_format(model)).requires_grad_(True)
    try:
        with torch.enable_grad():
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, Tensor) or output.grad_fn is None:
        return 0
    # How many graph edges lead to each autograd node: 1 means a single consumer.
    uses: dict[object, int] = {}
    seen: set[object] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for following, _ in node.next_functions:
            if following is not None:
                uses[following] = uses.get(following, 0) + 1
                stack.append(following)
    conv_of = {
        out.grad_fn: m
        for m, _, out in calls
        if isinstance(m, nn.Conv2d) and out.grad_fn is not None and counts[m] == 1
    }
    pairs = [
        (conv_of[inp.grad_fn], m)
        for m, inp, _ in calls
        if _foldable_norm(m)
        and counts[m] == 1
        and inp.grad_fn in conv_of
        and uses.get(inp.grad_fn) == 1
    ]
    parents = {
        child: (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
    }
    folded = 0
    for conv, norm in pairs:
        if norm not in parents or conv.out_channels != norm.num_features:
            continue
        _fold_into(conv, norm)
        parent, name = parents[norm]
        setattr(parent, name, _norm_tail(norm))
        folded += 1
    return folded


def _foldable_norm(module: nn.Module) -> bool:
    """Eval-mode BatchNorm2d with running statistics whose forward we know exactly."""
    if not isinstance(module, nn.BatchNorm2d) or module.training:
        return False
    if module.running_mean is None or module.running_var is None:
        return False
    kind = type(module)
    return kind is nn.BatchNorm2d or (
        kind.__name__ == "BatchNormAct2d" and kind.__module__.startswith("timm.layers")
    )


def _norm_tail(norm: nn.Module) -> nn.Module:
    """What is left of a folded norm layer: nothing, or timm's dropout and activation."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(norm.drop, norm.act)


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    weight = conv.weight
    mean = norm.running_mean.double()
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    memory_format = _format_of(weight)
    new_weight = (weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype)
    conv.weight = nn.Parameter(
        new_weight.contiguous(memory_format=memory_format), requires_grad=False
    )
    conv.bias = nn.Parameter((bias * scale + shift).to(weight.dtype), requires_grad=False)


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def input_format(model: nn.Module) -> torch.memory_format:
    """The memory layout the model's 4-D weights are in: inputs built in it skip a copy."""
    for p in model.parameters():
        if p.dim() == 4:
            if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
                return torch.channels_last
            break
    return torch.contiguous_format


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (else its buffers) are; the CPU for an empty model."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _check_inputs(x: Tensor, target: Tensor | Sequence[int] | int) -> tuple[Tensor, Tensor]:
    if x.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"inputs must be a floating-point tensor, got {x.dtype}")
    target = torch.as_tensor(target, dtype=torch.long, device=x.device)
    if target.dim() == 0:
        target = target.expand(x.shape[0])
    if target.shape != (x.shape[0],):
        raise ValueError(
            f"need one target per input: {x.shape[0]} inputs, {target.numel()} targets"
        )
    return x, target


def input_gradient(
    model: nn.Module, x: Tensor, target: Tensor, precision: str = "fp32"
) -> tuple[Tensor, Tensor]:
    """dS_c/dx for each row of ``x``, and the scores S_c themselves.

    The scores of a batch are summed before the backward pass: in eval mode rows do not
    interact, so d(sum)/dx_i is each row's own gradient and one backward pass does them all.
    """
    x = x.detach().requires_grad_(True)
    with autocast(x.device, precision):
        scores = model(x)
    if scores.dim() != 2:
        raise ValueError(f"model must return (N, classes) scores, got shape {tuple(scores.shape)}")
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


class IntegratedGradients(BaseMethod):
    """(x − x') ⊙ ∫₀¹ dS_c/dx (x' + α(x − x')) dα (Sundararajan et al. 2017).

    The integral uses Gauss–Legendre quadrature, Captum's default rule, which is exact for
    polynomials of degree 2·steps − 1 along the path.
    """

    name = "integrated-gradients"

    def __init__(self, steps: int = 32, baseline: Tensor | float | None = None) -> None:
        if steps < 1:
            raise ValueError(f"integrated gradients needs steps >= 1, got {steps}")
        self.steps = steps
        self.passes_per_input = steps
        self.baseline = baseline
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        self._alphas = [float(a) for a in 0.5 * (nodes + 1.0)]
        self._weights = [float(w) for w in 0.5 * weights]

    def attribute(self, model, x, target, precision="fp32"):
        baseline = torch.zeros((), device=x.device) if self.baseline is None else self.baseline
        baseline = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        delta = x - baseline
        total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        # One pass per quadrature node keeps memory at one chunk, whatever the number of steps.
        for alpha, weight in zip(self._alphas, self._weights, strict=True):
            path_point = (baseline + alpha * delta).contiguous(memory_format=_format_of(x))
            total += weight * input_gradient(model, path_point, target, precision)[0]
        return delta.float() * total

    def __repr__(self) -> str:
        return f"IntegratedGradients(steps={self.steps})"


def _format_of(x: Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 4 and channels_last and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


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
    return kind.__module__.startswith("timm.layers.activations")


BASE_METHODS: dict[str, type[BaseMethod]] = {
    cls.name: cls for cls in (Gradient, InputXGradient, IntegratedGradients, GuidedBackprop)
}


def sample_seed(seed: int, sample: int) -> int:
    """The generator seed for noisy copy number ``sample``.

    Noise depends on (seed, sample index) only, never on which image or chunk it lands in, so an
    image's map is the same whatever else is in the run and however the work is chunked.
    """
    return int(np.random.SeedSequence([seed, sample]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class _Moments:
    """Per-image running count, mean and sum of squared deviations (Chan et al.'s merge).

    Float32 sums stay accurate for the variance because deviations, not raw squares, are summed.
    """

    count: Tensor
    mean: Tensor
    m2: Tensor

    @classmethod
    def zeros(cls, shape: torch.Size, device: torch.device) -> _Moments:
        n = shape[0]
        return cls(
            torch.zeros(n, device=device),
            torch.zeros(shape, dtype=torch.float32, device=device),
            torch.zeros(shape, dtype=torch.float32, device=device),
        )

    def add(self, index: int, maps: Tensor) -> None:
        m = maps.shape[0]
        batch_mean = maps.mean(0)
        batch_m2 = (maps - batch_mean).square().sum(0)
        n_old = self.count[index]
        n_new = n_old + m
        delta = batch_mean - self.mean[index]
        self.mean[index] += delta * (m / n_new)
        self.m2[index] += batch_m2 + delta.square() * (n_old * m / n_new)
        self.count[index] = n_new


def aggregate(moments_mean: Tensor, moments_m2: Tensor, count: int, smoothing: str) -> Tensor:
    """The smoothed map from running moments: mean, mean of squares or variance."""
    if smoothing == "smoothgrad":
        return moments_mean
    if smoothing == "smoothgrad-sq":
        return moments_m2 / count + moments_mean.square()
    if smoothing == "vargrad":
        return moments_m2 / count
    raise ValueError(f"unknown smoothing {smoothing!r}: use one of {', '.join(SMOOTHINGS)}")


class SmoothGrad:
    """M̂_c(x) = (1/n) Σ M_c(x + N(0, σ²)), with σ = noise_level · (max(x) − min(x)) per image.

    ``smoothing`` picks what is taken over the n noisy maps: their mean (SmoothGrad), the mean
    of their squares (SmoothGrad²), their variance (VarGrad), or ``none`` for the base method
    on the clean input. Noisy copies of all images are packed into chunks of ``batch_size``
    rows (images × samples), so n copies of an image are never held at once.
    """

    def __init__(
        self,
        base: BaseMethod,
        *,
        smoothing: str = "smoothgrad",
        noise_level: float = 0.15,
        samples: int = 50,
        seed: int = 0,
        batch_size: int | None = None,
        precision: str = "fp32",
    ) -> None:
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"unknown smoothing {smoothing!r}: use one of {', '.join(SMOOTHINGS)}")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if not (noise_level >= 0 and math.isfinite(noise_level)):
            raise ValueError(f"noise level must be a finite number >= 0, got {noise_level}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.base = base
        self.smoothing = smoothing
        self.noise_level = noise_level
        self.samples = samples
        self.seed = seed
        self.batch_size = batch_size
        self.precision = precision
        self._noise_bank: tuple[tuple, Tensor] | None = None

    @property
    def rows_per_input(self) -> int:
        return 1 if self.smoothing == "none" else self.samples

    def attribute(
        self,
        model: nn.Module,
        x: Tensor,
        target: Tensor | Sequence[int] | int,
        *,
        progress: Callable[[int], None] | None = None,
        on_oom: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Smoothed maps ``(N, C, H, W)`` in float32 for inputs ``x`` and one target each.

        ``x`` is not modified. ``progress`` is told how many rows (noisy copies) each chunk
        finished; ``on_oom`` is told the new chunk size when CUDA ran out of memory and the
        chunk was halved.
        """
        x, target = _check_inputs(x, target)
        device = model_device(model)
        precision = resolve_precision(self.precision, device)
        memory_format = input_format(model)
        x = x.detach().to(device, torch.float32)
        target = target.to(device)
        n_inputs = x.shape[0]
        rows = self.rows_per_input
        chunk = self.batch_size or default_batch_size(device)

        flat = x.reshape(n_inputs, -1)
        sigmas = (self.noise_level * (flat.max(1).values - flat.min(1).values)).tolist()
        # The mean needs only a running sum; the variance-based smoothings keep moments.
        sums = (
            torch.zeros(x.shape, dtype=torch.float32, device=device).contiguous(
                memory_format=memory_format
            )
            if self.smoothing in ("smoothgrad", "none")
            else None
        )
        x_in = x.contiguous(memory_format=memory_format)  # rows are built in the model's layout
        moments = None if sums is not None else _Moments.zeros(x.shape, device)
        buffers = _ChunkBuffers(self.seed, x.shape[1:], device, memory_format)
        if self.smoothing != "none":
            buffers.bank = self._bank(x.shape[1:], device, rows, memory_format)
        total_rows = n_inputs * rows

        with self.base.hooks(model):
            start = 0
            while start < total_rows:
                stop = min(start + chunk, total_rows)
                # Rows are image-major, so each image's rows in the chunk are one slice.
                spans = [
                    (image, max(start, image * rows) - start, min(stop, (image + 1) * rows) - start)
                    for image in range(start // rows, (stop - 1) // rows + 1)
                ]
                try:
                    if self.smoothing == "none":
                        batch = buffers.clean(x_in, spans, stop - start)
                    else:
                        batch = buffers.noisy(x_in, sigmas, spans, start, stop, rows)
                    images = torch.tensor(
                        [image for image, lo, hi in spans for _ in range(hi - lo)], device=device
                    )
                    maps = self.base.attribute(model, batch, target[images], precision)
                except torch.cuda.OutOfMemoryError:
                    if chunk == 1:
                        raise
                    chunk = max(1, chunk // 2)
                    buffers.release()
                    torch.cuda.empty_cache()
                    if on_oom is not None:
                        on_oom(chunk)
                    continue
                for image, lo, hi in spans:
                    if sums is not None:
                        sums[image] += maps[lo:hi].sum(0)
                    else:
                        moments.add(image, maps[lo:hi])
                if progress is not None:
                    progress(stop - start)
                start = stop

        if sums is not None:
            return sums.div_(rows).contiguous()
        return aggregate(moments.mean, moments.m2, rows, self.smoothing)

    def _bank(
        self,
        shape: torch.Size,
        device: torch.device,
        samples: int,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> Tensor | None:
        """The noise of samples 0..n−1, drawn once and kept for later images and calls.

        Every image's sample j gets the same N(0, 1) draw, so a run over a folder draws each
        sample once instead of once per image. Kept in the model's input layout, so a chunk is
        one elementwise x + σ·noise. Not kept when it would exceed ``_NOISE_BANK_BYTES`` (many
        samples of large inputs): then each chunk draws its own.
        """
        key = (self.seed, tuple(shape), str(device), samples, memory_format)
        if self._noise_bank is not None and self._noise_bank[0] == key:
            return self._noise_bank[1]
        self._noise_bank = None
        if samples * math.prod(shape) * 4 > _NOISE_BANK_BYTES:
            return None
        bank = torch.empty((samples, *shape), dtype=torch.float32, device=device)
        generator = torch.Generator(device=device)
        for sample in range(samples):
            generator.manual_seed(sample_seed(self.seed, sample))
            bank[sample].normal_(generator=generator)  # the values randn would draw
        if len(shape) == 3:
            bank = bank.contiguous(memory_format=memory_format)
        self._noise_bank = (key, bank)
        return bank


#: the largest noise bank SmoothGrad keeps (50 samples of 3×224×224 take 30 MB)
_NOISE_BANK_BYTES = 192 * 2**20


class _ChunkBuffers:
    """The chunk's noise and input batch, allocated once and refilled for every chunk.

    Refilling in place avoids a fresh multi-megabyte allocation per chunk (on Linux each one
    is page-faulted in again, which costs more than drawing the noise) and the index copies of
    ``x[images]``. Noise is N(0, 1) per sample index, drawn on the device from that index's
    own seed (``sample_seed``), so it does not depend on where the sample lands.
    """

    def __init__(
        self,
        seed: int,
        shape: torch.Size,
        device: torch.device,
        memory_format: torch.memory_format,
    ) -> None:
        self.seed = seed
        self.shape = tuple(shape)
        self.device = device
        self.memory_format = memory_format
        self.generator = torch.Generator(device=device)
        self.bank: Tensor | None = None  # all samples' noise, when SmoothGrad keeps it
        self._noise: Tensor | None = None
        self._batch: Tensor | None = None

    def _buffers(self, rows: int) -> tuple[Tensor, Tensor]:
        if self._batch is None or self._batch.shape[0] < rows:
            self.release()
            size = (rows, *self.shape)
            self._noise = torch.empty(size, device=self.device, dtype=torch.float32)
            self._batch = torch.empty(size, device=self.device, dtype=torch.float32).contiguous(
                memory_format=self.memory_format
            )
        return self._noise[:rows], self._batch[:rows]

    def release(self) -> None:
        self._noise = self._batch = None

    def noisy(
        self,
        x: Tensor,
        sigmas: list[float],
        spans: list[tuple[int, int, int]],
        start: int,
        stop: int,
        rows_per_input: int,
    ) -> Tensor:
        noise, batch = self._buffers(stop - start)
        if self.bank is not None:
            for image, lo, hi in spans:
                first = start + lo - image * rows_per_input  # sample index of row lo
                torch.add(
                    x[image],
                    self.bank[first : first + hi - lo],
                    alpha=sigmas[image],
                    out=batch[lo:hi],
                )
            return batch
        first_row: dict[int, int] = {}  # sample index -> row of this chunk that holds it
        for row in range(stop - start):
            sample = (start + row) % rows_per_input
            if sample in first_row:
                noise[row].copy_(noise[first_row[sample]])
            else:
                first_row[sample] = row
                self.generator.manual_seed(sample_seed(self.seed, sample))
                noise[row].normal_(generator=self.generator)  # the values randn would draw
        for image, lo, hi in spans:
            torch.add(x[image], noise[lo:hi], alpha=sigmas[image], out=batch[lo:hi])
        return batch

    def clean(self, x: Tensor, spans: list[tuple[int, int, int]], n_rows: int) -> Tensor:
        _, batch = self._buffers(n_rows)
        for image, lo, hi in spans:
            batch[lo:hi].copy_(x[image].expand(hi - lo, *self.shape))
        return batch


def default_batch_size(device: torch.device) -> int:
    """A chunk size that works without a probe: small on CPUs, where caches favour small
    chunks, larger on accelerators."""
    return 8 if device.type == "cpu" else 64


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 32, precision: str = "fp32") -> Tensor:
    """Class probabilities (softmax of the scores), ``(N, classes)``, in float32."""
    device = model_device(model)
    precision = resolve_precision(precision, device)
    memory_format = input_format(model)
    out = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size].to(device, torch.float32)
        with autocast(device, precision):
            scores = model(batch.contiguous(memory_format=memory_format))
        out.append(scores.float().softmax(-1))
    return torch.cat(out)


__all__ = [
    "BASE_METHODS", "PRECISIONS", "SMOOTHINGS", "BaseMethod", "Gradient", "GuidedBackprop",
    "InplaceReLU6", "InputXGradient", "IntegratedGradients", "SmoothGrad", "aggregate",
    "autocast", "default_batch_size", "fold_batchnorm", "input_format", "input_gradient",
    "model_device", "predict", "prepare_model", "resolve_device", "resolve_precision",
    "sample_seed",
]  # fmt: skip
