"""Tests of the pure-torch engine: values against hand formulas, Captum and the definitions."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import InputXGradient as CaptumInputXGradient
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import NoiseTunnel, Saliency
from torch import nn

from smoothgrad_cli.engine import (
    SMOOTHINGS,
    Gradient,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    SmoothGrad,
    aggregate,
    predict,
    prepare_model,
    resolve_device,
    resolve_precision,
    sample_seed,
)
from smoothgrad_cli.engine.smoothgrad import _Moments

pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations"),
]

# ---------------------------------------------------------------------------------------------
# models and helpers


class AnalyticModel(nn.Module):
    """Class 0: sum over pixels of 5*x0 + x1**2 + sin(x2); class 1: sum of x0*x1."""

    def forward(self, x):
        x0, x1, x2 = x[:, 0], x[:, 1], x[:, 2]
        s0 = (5 * x0 + x1**2 + torch.sin(x2)).flatten(1).sum(1)
        s1 = (x0 * x1).flatten(1).sum(1)
        return torch.stack([s0, s1], dim=1)


class PolyModel(nn.Module):
    """Class 0: sum over pixels of 5*x0 + x1**2 (channel 2 unused)."""

    def forward(self, x):
        s0 = (5 * x[:, 0] + x[:, 1] ** 2).flatten(1).sum(1)
        return torch.stack([s0, -s0], dim=1)


class LinearScore(nn.Module):
    """S = <w_c, x>: the gradient is the constant w_c, whatever the input."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)  # (classes, C, H, W)

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x, self.w)


class SmallNet(nn.Module):
    def __init__(self, act=nn.ReLU, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = act()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.act2 = act()
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(32, 16)
        self.act3 = act()
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x):
        x = self.pool(self.act1(self.conv1(x)))
        x = self.gap(self.act2(self.conv2(x)))
        return self.fc2(self.act3(self.fc1(x.flatten(1))))


def make_net(act=nn.ReLU, dtype=torch.float32, seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet(act).to(dtype).eval()


def make_inputs(n=2, size=8, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    """Uniform in [-s_i, s_i] with a different range s_i per image (sigma is per image)."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.5 + 0.5 * torch.arange(n, dtype=dtype)
    return (torch.rand((n, 3, size, size), generator=g, dtype=dtype) * 2 - 1) * scale[
        :, None, None, None
    ]


def base_maps(method, model, x, target):
    """One base method on its own, with its hooks installed (as SmoothGrad does)."""
    target = torch.as_tensor(target, dtype=torch.long).expand(x.shape[0])
    with method.hooks(model):
        return method.attribute(model, x, target)


def assert_close(actual, expected, rtol=1e-5, atol_scale=1e-6):
    """Elementwise closeness with an absolute floor relative to the map's scale."""
    actual = torch.as_tensor(actual).detach().double()
    expected = torch.as_tensor(expected).detach().double()
    assert actual.shape == expected.shape
    atol = atol_scale * max(float(expected.abs().max()), 1e-12)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.double().flatten().numpy(), b.double().flatten().numpy())[0, 1])


class _GuidedReLU6(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * ((x > 0) & (x < 6)).to(grad.dtype)


class GuidedReLU6(nn.Module):
    def forward(self, x):
        return _GuidedReLU6.apply(x)


class ReLU6ScaledNet(SmallNet):
    """SmallNet with ReLU6 and the input scaled up, so that some units saturate at 6."""

    def forward(self, x):
        return super().forward(20 * x)


def _make_relu6_net(act):
    torch.manual_seed(0)
    return ReLU6ScaledNet(act).double().eval()


# ---------------------------------------------------------------------------------------------
# 1. analytic model, hand-worked gradients


def test_gradient_matches_hand_formula():
    x = make_inputs(2, 4, torch.float64, seed=3) * 2
    g = base_maps(Gradient(), AnalyticModel(), x, [0, 0])
    expected = torch.stack([torch.full_like(x[:, 0], 5.0), 2 * x[:, 1], torch.cos(x[:, 2])], dim=1)
    assert g.dtype == torch.float32
    assert_close(g, expected, rtol=1e-6)
    # class 1 = sum(x0 * x1): gradient (x1, x0, 0)
    g1 = base_maps(Gradient(), AnalyticModel(), x, [1, 1])
    assert_close(g1, torch.stack([x[:, 1], x[:, 0], torch.zeros_like(x[:, 0])], 1), rtol=1e-6)


def test_input_x_gradient_matches_hand_formula():
    x = make_inputs(2, 4, torch.float64, seed=4) * 2
    ixg = base_maps(InputXGradient(), AnalyticModel(), x, [0, 0])
    expected = x * torch.stack(
        [torch.full_like(x[:, 0], 5.0), 2 * x[:, 1], torch.cos(x[:, 2])], dim=1
    )
    assert_close(ixg, expected, rtol=1e-6)


def test_integrated_gradients_closed_form_and_completeness():
    x = make_inputs(2, 4, torch.float64, seed=5) * 2
    model = AnalyticModel()
    # IG of 5*x0 is 5*x0, of x1^2 is x1^2, of sin(x2) is x2 * sin(x2)/x2 = sin(x2).
    ig = base_maps(IntegratedGradients(steps=16), model, x, [0, 0])
    expected = torch.stack([5 * x[:, 0], x[:, 1] ** 2, torch.sin(x[:, 2])], dim=1)
    assert_close(ig, expected, rtol=1e-6)
    # completeness: sum(IG) = f(x) - f(0)
    f = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    # maps are float32, so the sum carries float32 rounding
    torch.testing.assert_close(ig.double().flatten(1).sum(1), f, rtol=1e-5, atol=1e-5)


def test_integrated_gradients_polynomial_exact_with_few_steps_and_baseline():
    # The path integrand of 5*x0 + x1^2 is linear in alpha, so 1 Gauss-Legendre node is exact.
    x = make_inputs(2, 4, torch.float64, seed=6) * 3
    b = make_inputs(1, 4, torch.float64, seed=7)
    model = PolyModel()
    for steps in (1, 2, 5):
        ig = base_maps(IntegratedGradients(steps=steps, baseline=b), model, x, [0, 0])
        expected = torch.stack(
            [5 * (x[:, 0] - b[:, 0]), x[:, 1] ** 2 - b[:, 1] ** 2, torch.zeros_like(x[:, 2])], 1
        )
        assert_close(ig, expected, rtol=1e-6)
        f = model(x)[:, 0] - model(b)[:, 0]
        # maps are float32, so the sum carries float32 rounding
    torch.testing.assert_close(ig.double().flatten(1).sum(1), f, rtol=1e-5, atol=1e-5)
    # a scalar baseline broadcasts like a constant image
    ig = base_maps(IntegratedGradients(steps=3, baseline=0.5), model, x, 0)
    assert_close(ig[:, 1], x[:, 1] ** 2 - 0.25, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 2. base methods against Captum


@pytest.fixture(scope="module")
def net64():
    return make_net(dtype=torch.float64)


@pytest.fixture(scope="module")
def x64():
    return make_inputs(3, 8, torch.float64, seed=11)


TARGETS = torch.tensor([0, 2, 3])


def test_gradient_equals_captum_saliency(net64, x64):
    ours = base_maps(Gradient(), net64, x64, TARGETS)
    theirs = Saliency(net64).attribute(x64, target=TARGETS, abs=False)
    assert float(theirs.abs().max()) > 0
    assert_close(ours, theirs)


def test_input_x_gradient_equals_captum(net64, x64):
    ours = base_maps(InputXGradient(), net64, x64, TARGETS)
    theirs = CaptumInputXGradient(net64).attribute(x64, target=TARGETS)
    assert_close(ours, theirs)


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_integrated_gradients_equals_captum_gausslegendre(net64, x64, steps):
    b = make_inputs(1, 8, torch.float64, seed=12) * 0.3
    ours = base_maps(IntegratedGradients(steps=steps, baseline=b), net64, x64, TARGETS)
    theirs = CaptumIntegratedGradients(net64).attribute(
        x64, baselines=b.expand_as(x64), target=TARGETS, n_steps=steps, method="gausslegendre"
    )
    assert_close(ours, theirs)


def test_guided_backprop_equals_captum(net64, x64):
    ours = base_maps(GuidedBackprop(), net64, x64, TARGETS)
    theirs = CaptumGuidedBackprop(net64).attribute(x64, target=TARGETS)
    assert_close(ours, theirs)
    # guided backprop really differs from the plain gradient on this net
    plain = base_maps(Gradient(), net64, x64, TARGETS)
    assert float((ours - plain).abs().max()) > 1e-3 * float(plain.abs().max())
    # and the hooks are gone afterwards: the plain gradient is back
    for m in net64.modules():
        assert not m._forward_hooks
    assert_close(base_maps(Gradient(), net64, x64, TARGETS), plain, rtol=0, atol_scale=0)


def test_guided_backprop_inplace_relu_equals_captum_on_non_inplace_copy(x64):
    inplace = make_net(lambda: nn.ReLU(inplace=True), torch.float64)
    plain = copy.deepcopy(inplace)
    for m in plain.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    ours = base_maps(GuidedBackprop(), inplace, x64, TARGETS)
    theirs = CaptumGuidedBackprop(plain).attribute(x64, target=TARGETS)
    assert_close(ours, theirs)


def test_guided_backprop_relu6_equals_hand_reference(x64):
    model = _make_relu6_net(nn.ReLU6)
    reference = copy.deepcopy(model)
    for name in ("act1", "act2", "act3"):
        setattr(reference, name, GuidedReLU6())
    # some units must saturate at 6 for the ReLU6 upper mask to matter
    assert float(model.act1(model.conv1(20 * x64)).eq(6).float().mean()) > 0.01
    ours = base_maps(GuidedBackprop(), model, x64, TARGETS)
    xr = x64.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference(xr).gather(1, TARGETS[:, None]).sum(), xr)
    assert float(expected.abs().max()) > 0
    assert_close(ours, expected)


def test_prepared_channels_last_model_gives_same_maps(x64):
    net = make_net(dtype=torch.float64)
    expected = Saliency(net).attribute(x64, target=TARGETS, abs=False)
    prepared = prepare_model(copy.deepcopy(net), "cpu")
    assert prepared.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert_close(base_maps(Gradient(), prepared, x64, TARGETS), expected)


# ---------------------------------------------------------------------------------------------
# 3. SmoothGrad against Captum on the same noisy inputs


@pytest.fixture(scope="module")
def net32():
    return prepare_model(make_net(dtype=torch.float32), "cpu")


@pytest.fixture(scope="module")
def x32():
    return make_inputs(2, 8, torch.float32, seed=21)


def _noisy_copies(x, noise_level, samples, seed):
    """The noisy inputs SmoothGrad draws, rebuilt by hand: (images, samples, C, H, W)."""
    g = torch.Generator()
    noise = torch.stack(
        [
            torch.randn(x.shape[1:], generator=g.manual_seed(sample_seed(seed, j)))
            for j in range(samples)
        ]
    )
    flat = x.reshape(x.shape[0], -1)
    sigma = noise_level * (flat.max(1).values - flat.min(1).values)
    return x[:, None] + sigma[:, None, None, None, None] * noise[None]


CAPTUM_PAIRS = {
    "gradient": (Gradient, lambda m: Saliency(m), {"abs": False}),
    "input-x-gradient": (InputXGradient, lambda m: CaptumInputXGradient(m), {}),
    "guided-backprop": (GuidedBackprop, lambda m: CaptumGuidedBackprop(m), {}),
}


@pytest.mark.parametrize("method", sorted(CAPTUM_PAIRS))
def test_smoothgrad_equals_captum_on_rebuilt_noisy_inputs(net32, x32, method):
    ours_cls, captum_factory, kwargs = CAPTUM_PAIRS[method]
    samples, noise_level, seed = 7, 0.2, 5
    target = torch.tensor([1, 3])
    noisy = _noisy_copies(x32, noise_level, samples, seed)
    n = x32.shape[0]
    maps = (
        captum_factory(net32)
        .attribute(
            noisy.reshape(n * samples, *x32.shape[1:]),
            target=target.repeat_interleave(samples),
            **kwargs,
        )
        .detach()
        .reshape(n, samples, *x32.shape[1:])
        .double()
    )
    expected = {
        "smoothgrad": maps.mean(1),
        "smoothgrad-sq": maps.square().mean(1),
        "vargrad": maps.var(1, unbiased=False),
    }
    for smoothing, want in expected.items():
        got = SmoothGrad(
            ours_cls(),
            smoothing=smoothing,
            noise_level=noise_level,
            samples=samples,
            seed=seed,
            batch_size=4,
        ).attribute(net32, x32, target)
        assert float(want.abs().max()) > 0
        assert_close(got, want, rtol=1e-4, atol_scale=1e-5)


def test_smoothgrad_noise_is_nonzero_and_scaled_per_image(net32, x32):
    # a smoothgrad with noise differs from the base map; with 3x the scale it differs more
    target = torch.tensor([0, 1])
    base = base_maps(Gradient(), net32, x32, target)
    small = SmoothGrad(Gradient(), noise_level=0.05, samples=8).attribute(net32, x32, target)
    big = SmoothGrad(Gradient(), noise_level=0.5, samples=8).attribute(net32, x32, target)
    assert float((small - base).abs().max()) > 1e-4
    assert float((big - base).norm()) > float((small - base).norm())


@pytest.mark.parametrize(
    "nt_type,smoothing",
    [("smoothgrad", "smoothgrad"), ("smoothgrad_sq", "smoothgrad-sq"), ("vargrad", "vargrad")],
)
def test_zero_noise_equals_captum_noise_tunnel_with_zero_stdev(net32, x32, nt_type, smoothing):
    target = torch.tensor([2, 0])
    theirs = NoiseTunnel(Saliency(net32)).attribute(
        x32, nt_type=nt_type, nt_samples=5, stdevs=0.0, target=target, abs=False
    )
    ours = SmoothGrad(Gradient(), smoothing=smoothing, noise_level=0.0, samples=5).attribute(
        net32, x32, target
    )
    if smoothing == "vargrad":
        assert float(ours.abs().max()) < 1e-9
        assert float(theirs.abs().max()) < 1e-9
    else:
        assert_close(ours, theirs, rtol=1e-5, atol_scale=1e-6)


# ---------------------------------------------------------------------------------------------
# 4. smoothing none / n=1 without noise equal the base method


def _all_methods():
    b = make_inputs(1, 8, torch.float32, seed=31) * 0.2
    return [
        Gradient(),
        InputXGradient(),
        IntegratedGradients(steps=4, baseline=b),
        GuidedBackprop(),
    ]


@pytest.mark.parametrize("index", range(4))
def test_none_and_single_clean_sample_equal_base_method(net32, x32, index):
    method = _all_methods()[index]
    target = torch.tensor([1, 2])
    base = base_maps(method, net32, x32, target)
    assert float(base.abs().max()) > 0
    none = SmoothGrad(method, smoothing="none", noise_level=0.3, samples=9).attribute(
        net32, x32, target
    )
    assert_close(none, base, rtol=1e-6, atol_scale=1e-6)
    single = SmoothGrad(method, noise_level=0.0, samples=1).attribute(net32, x32, target)
    assert_close(single, base, rtol=1e-6, atol_scale=1e-6)
    many = SmoothGrad(method, noise_level=0.0, samples=4, batch_size=3).attribute(
        net32, x32, target
    )
    assert_close(many, base, rtol=1e-5, atol_scale=1e-6)
    sq = SmoothGrad(method, smoothing="smoothgrad-sq", noise_level=0.0, samples=1).attribute(
        net32, x32, target
    )
    assert_close(sq, base.square(), rtol=1e-5, atol_scale=1e-6)


# ---------------------------------------------------------------------------------------------
# 5. chunking, batch position and seeds


@pytest.mark.parametrize("smoothing", ["smoothgrad", "smoothgrad-sq", "vargrad"])
def test_chunk_size_does_not_change_maps(net32, smoothing):
    x = make_inputs(3, 8, torch.float32, seed=41)
    target = torch.tensor([0, 1, 3])
    n = 6
    maps = [
        SmoothGrad(
            InputXGradient(), smoothing=smoothing, samples=n, seed=3, batch_size=bs
        ).attribute(net32, x, target)
        for bs in (1, 3, n, 4, n * 3, 1000)
    ]
    for other in maps[1:]:
        assert_close(other, maps[0], rtol=1e-5, atol_scale=1e-6)


def test_image_map_independent_of_batch_and_position(net32):
    x = make_inputs(3, 8, torch.float32, seed=42)
    target = torch.tensor([3, 0, 2])
    sg = SmoothGrad(Gradient(), smoothing="smoothgrad", samples=5, seed=9, batch_size=4)
    together = sg.attribute(net32, x, target)
    for i in range(3):
        alone = sg.attribute(net32, x[i : i + 1], target[i : i + 1])
        assert_close(alone[0], together[i], rtol=1e-5, atol_scale=1e-6)
    reversed_ = sg.attribute(net32, x.flip(0), target.flip(0)).flip(0)
    assert_close(reversed_, together, rtol=1e-5, atol_scale=1e-6)


def test_seeds(net32, x32):
    target = torch.tensor([0, 1])

    def run(seed):
        return SmoothGrad(Gradient(), samples=4, seed=seed).attribute(net32, x32, target)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-3 * float(a.abs().max())


def test_sample_seed_is_deterministic_and_distinct():
    seeds = [sample_seed(s, j) for s in range(3) for j in range(20)]
    assert len(set(seeds)) == len(seeds)
    assert sample_seed(7, 3) == sample_seed(7, 3)
    assert all(0 <= s < 2**63 for s in seeds)


# ---------------------------------------------------------------------------------------------
# 6. aggregation


def test_moments_in_uneven_chunks_match_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(2, 13, 3, 4, 4)).astype(np.float32)
    moments = _Moments.zeros(torch.Size((2, 3, 4, 4)), torch.device("cpu"))
    for image, cuts in ((0, [0, 1, 5, 6, 13]), (1, [0, 7, 13])):
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            moments.add(image, torch.from_numpy(data[image, lo:hi]))
    assert moments.count.tolist() == [13, 13]
    d = data.astype(np.float64)
    expected = {
        "smoothgrad": d.mean(1),
        "smoothgrad-sq": (d**2).mean(1),
        "vargrad": d.var(1),
    }
    for smoothing, want in expected.items():
        got = aggregate(moments.mean, moments.m2, 13, smoothing).double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_moments_variance_stable_with_large_offset():
    rng = np.random.default_rng(1)
    data = (1000.0 + rng.normal(0, 0.5, size=(1, 40, 1, 2, 2))).astype(np.float32)
    moments = _Moments.zeros(torch.Size((1, 1, 2, 2)), torch.device("cpu"))
    for lo in range(0, 40, 6):
        moments.add(0, torch.from_numpy(data[0, lo : lo + 6]))
    got = aggregate(moments.mean, moments.m2, 40, "vargrad").double().numpy()
    np.testing.assert_allclose(got, data.astype(np.float64).var(1), rtol=1e-3)


def test_aggregate_formulas_and_unknown():
    mean = torch.tensor([1.0, -2.0, 0.5])
    m2 = torch.tensor([4.0, 0.0, 2.0])
    torch.testing.assert_close(aggregate(mean, m2, 4, "smoothgrad"), mean)
    torch.testing.assert_close(aggregate(mean, m2, 4, "vargrad"), torch.tensor([1.0, 0.0, 0.5]))
    torch.testing.assert_close(
        aggregate(mean, m2, 4, "smoothgrad-sq"), torch.tensor([2.0, 4.0, 0.75])
    )
    with pytest.raises(ValueError, match="unknown smoothing"):
        aggregate(mean, m2, 4, "median")


def test_linear_model_smoothing_formulas():
    torch.manual_seed(0)
    w = torch.randn(2, 3, 4, 4)
    model = prepare_model(LinearScore(w))
    x = make_inputs(2, 4, torch.float32, seed=51)
    target = torch.tensor([1, 0])
    wt = w[target]
    for smoothing, want in (("smoothgrad", wt), ("smoothgrad-sq", wt**2), ("vargrad", 0 * wt)):
        got = SmoothGrad(Gradient(), smoothing=smoothing, noise_level=0.4, samples=5).attribute(
            model, x, target
        )
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # input x gradient: maps are w * (x + sigma*eps), so mean/var follow from the noise alone
    samples, level, seed = 6, 0.3, 2
    noisy = _noisy_copies(x, level, samples, seed).double()
    maps = wt[:, None].double() * noisy
    for smoothing, want in (
        ("smoothgrad", maps.mean(1)),
        ("smoothgrad-sq", maps.square().mean(1)),
        ("vargrad", maps.var(1, unbiased=False)),
    ):
        got = SmoothGrad(
            InputXGradient(), smoothing=smoothing, noise_level=level, samples=samples, seed=seed
        ).attribute(model, x, target)
        assert_close(got, want, rtol=1e-4, atol_scale=1e-5)


# ---------------------------------------------------------------------------------------------
# 7. discriminativity


@pytest.mark.parametrize("index", range(4))
def test_maps_differ_between_classes(net32, index):
    method = _all_methods()[index]
    x = make_inputs(1, 8, torch.float32, seed=61)
    sg = SmoothGrad(method, samples=4, seed=0)
    a = sg.attribute(net32, x, [0])
    b = sg.attribute(net32, x, [2])
    scale = max(float(a.abs().max()), float(b.abs().max()))
    assert float((a - b).abs().max()) > 0.05 * scale
    assert pearson(a, b) < 0.99


# ---------------------------------------------------------------------------------------------
# 8. caller's tensors and model state


def test_prepare_model_freezes_and_evals():
    net = make_net()
    net.train()
    prepared = prepare_model(net, "cpu")
    assert not prepared.training
    assert all(not m.training for m in prepared.modules())
    assert all(not p.requires_grad for p in prepared.parameters())


@pytest.mark.parametrize("prepare", [True, False])
def test_inputs_and_params_untouched(x32, prepare):
    net = make_net()
    if prepare:
        net = prepare_model(net)
    x = x32.clone()
    x_before = x.clone()
    target = torch.tensor([1, 2])
    target_before = target.clone()
    params_before = [p.detach().clone() for p in net.parameters()]
    for method in _all_methods():
        for smoothing in SMOOTHINGS:
            SmoothGrad(method, smoothing=smoothing, samples=3, batch_size=2).attribute(
                net, x, target
            )
    assert torch.equal(x, x_before)
    assert not x.requires_grad
    assert x.grad is None
    assert torch.equal(target, target_before)
    for p, before in zip(net.parameters(), params_before, strict=True):
        assert p.grad is None
        assert torch.equal(p, before)
    for m in net.modules():
        assert not m._forward_hooks


# ---------------------------------------------------------------------------------------------
# 9. errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"samples": 0}, "samples"),
        ({"noise_level": -1}, "noise level"),
        ({"noise_level": float("nan")}, "noise level"),
        ({"noise_level": math.inf}, "noise level"),
        ({"smoothing": "median"}, "unknown smoothing"),
        ({"batch_size": 0}, "batch size"),
        ({"precision": "fp64"}, "unknown precision"),
    ],
)
def test_smoothgrad_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SmoothGrad(Gradient(), **kwargs)


def test_attribute_input_errors(net32, x32):
    sg = SmoothGrad(Gradient(), samples=2)
    with pytest.raises(ValueError, match="one target per input"):
        sg.attribute(net32, x32, [0, 1, 2])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        sg.attribute(net32, x32[0], [0])
    with pytest.raises(ValueError, match="floating-point"):
        sg.attribute(net32, (x32 * 10).long(), [0, 1])


@pytest.mark.parametrize("act,name", [(nn.SiLU, "SiLU"), (nn.GELU, "GELU")])
def test_guided_backprop_names_unsupported_activation(x32, act, name):
    net = make_net()
    net.act2 = act()
    with pytest.raises(ValueError, match=name):
        SmoothGrad(GuidedBackprop(), samples=2).attribute(net, x32, [0, 1])
    for m in net.modules():
        assert not m._forward_hooks


def test_guided_backprop_needs_relu_modules(x32):
    model = LinearScore(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="ReLU"):
        SmoothGrad(GuidedBackprop(), samples=2).attribute(model, x32, [0, 1])


def test_misc_value_errors():
    with pytest.raises(ValueError, match="steps"):
        IntegratedGradients(steps=0)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp64", torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


# ---------------------------------------------------------------------------------------------
# 10. constant image


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_constant_image_gives_finite_maps(net32, smoothing):
    x = torch.full((2, 3, 8, 8), 0.3)
    target = torch.tensor([0, 1])
    for method in _all_methods():
        maps = SmoothGrad(method, smoothing=smoothing, samples=3).attribute(net32, x, target)
        assert torch.isfinite(maps).all()
        base = base_maps(method, net32, x, target)
        want = {"vargrad": torch.zeros_like(base), "smoothgrad-sq": base.square()}.get(
            smoothing, base
        )
        # sigma is 0, so every noisy copy is the clean image
        assert_close(maps, want, rtol=1e-5, atol_scale=1e-6)


# ---------------------------------------------------------------------------------------------
# 11. precision


def test_bf16_close_to_fp32(net32):
    x = make_inputs(2, 16, torch.float32, seed=71)
    target = torch.tensor([0, 3])
    fp32 = SmoothGrad(Gradient(), samples=8, seed=1).attribute(net32, x, target)
    bf16 = SmoothGrad(Gradient(), samples=8, seed=1, precision="bf16").attribute(net32, x, target)
    assert bf16.dtype == torch.float32
    assert torch.isfinite(bf16).all()
    assert not torch.equal(bf16, fp32)  # autocast really ran
    for i in range(2):
        assert pearson(bf16[i], fp32[i]) > 0.95


def test_predict_returns_probabilities(net32, x32):
    probs = predict(net32, x32, batch_size=1)
    torch.testing.assert_close(probs, net32(x32).softmax(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
