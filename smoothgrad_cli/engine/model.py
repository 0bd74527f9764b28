"""Devices, precision and model preparation: where and how the engine runs a model.

``prepare_model`` freezes a model and rewrites it for speed without changing its function
(in-place ReLU6 without a hidden copy, BatchNorm folded into the convolution before it).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

#: fp32 lets CUDA use TF32 tensor cores for matmuls and convolutions (cuDNN already does for
#: convolutions by default); fp32-strict does not. On other devices the two are the same.
PRECISIONS = ("fp32", "fp32-strict", "bf16", "fp16", "auto")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: /proc/cpuinfo flags of CPUs that compute in bf16 natively (AVX-512 BF16, AMX)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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


def resolve_precision(
    precision: str,
    device: torch.device,
    *,
    faster: Callable[[str], bool] | None = None,
) -> str:
    """Turn ``auto`` into a concrete precision for ``device``.

    bf16 only where the hardware has fast bf16 and the maps stay faithful (see README): CUDA
    devices that support it, and CPUs with native bf16 (``native_bf16``) where ``faster``
    (``faster("bf16")``: a timed probe of the model, ``tuning_probe.precision_is_faster``)
    finds it faster than fp32. bf16 maps are faithful on CPUs too (Spearman 0.99 with fp32's,
    pooled 14×14, n = 50, ``make bench``), but speed varies: CPUs without native bf16 (AVX2,
    like the benchmark's) emulate it and ran 20–100× slower than fp32, and with AVX-512 BF16
    the embedded Lite0 ran far slower while resnet18 ran 1.9× faster. Without ``faster`` a
    CPU gets fp32. ``fp32-strict`` is plain fp32 off CUDA.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("precision 'fp16' is not supported on the CPU; use bf16 or fp32")
        if precision == "fp32-strict" and device.type != "cuda":
            return "fp32"
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if device.type == "cpu" and faster is not None and native_bf16() and faster("bf16"):
        return "bf16"
    return "fp32"


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively: a flag of ``NATIVE_BF16_FLAGS`` in the
    ``flags`` lines of ``cpuinfo`` (the text of /proc/cpuinfo; read from there if None).
    False where there is no /proc/cpuinfo (not Linux)."""
    if cpuinfo is None:
        return _this_cpu_native_bf16()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and set(value.split()) & set(NATIVE_BF16_FLAGS):
            return True
    return False


@functools.cache
def _this_cpu_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return native_bf16(f.read())
    except OSError:
        return False


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision not in _AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def float32_math(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """For an engine call on CUDA in fp32: TF32 tensor cores for matmuls and convolutions
    (``fp32``) or none (``fp32-strict``), set for the call and restored after it, so the
    caller's own settings are left as they were. Nothing changes on other devices or in the
    half precisions.

    TF32 keeps fp32's range with a 10-bit mantissa in the products (sums stay fp32): for a
    saliency map, far below the noise SmoothGrad adds, and several times faster on tensor
    cores. The flags are process-wide and read when a kernel is launched, so the context
    must cover the backward pass too.
    """
    if device.type != "cuda" or precision not in ("fp32", "fp32-strict"):
        return contextlib.nullcontext()
    return _tf32(precision == "fp32")


@contextlib.contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
    except RuntimeError:
        # The caller set TF32 with the newer fp32_precision API; reading the older flags
        # then raises, and mixing the two is refused, so use the newer one as well.
        saved_new = (matmul.fp32_precision, cudnn.conv.fp32_precision)
        matmul.fp32_precision = cudnn.conv.fp32_precision = "tf32" if allowed else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved_new
        return
    matmul.allow_tf32 = cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


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
    memory_format = memory_format_of(weight)
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


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The memory layout ``x`` is in: channels-last only for a 4-D tensor that is not also
    plainly contiguous."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 4 and channels_last and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
