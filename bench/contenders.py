"""The contenders both tables run: the engine as the bench runs it, the floor (the model's
forward+backward passes and nothing else), Captum's NoiseTunnel and PAIR's loop, and what
they are handed (the model as given, each image's noise level)."""

from __future__ import annotations

import numpy as np
import torch
from common import NOISE, SAMPLES, SEED

from smoothgrad_cli import engine

# ------------------------------------------------------------------------------------------
# maps and their agreement


def pooled_magnitude(attribution: torch.Tensor, cells: int = 14) -> np.ndarray:
    """The displayed quantity (|map| summed over channels), averaged over cells × cells."""
    magnitude = attribution.detach().float().abs().sum(0)[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(magnitude, cells).flatten().cpu().numpy()


# ------------------------------------------------------------------------------------------
# the peers


def captum_smoothgrad(model, x, target, sigma, batch):
    from captum.attr import NoiseTunnel, Saliency

    tunnel = NoiseTunnel(Saliency(model))
    return tunnel.attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=SAMPLES,
        nt_samples_batch_size=batch,
        stdevs=sigma,
        target=target,
        abs=False,
    )


def pair_call_model_function(model, device):
    """PAIR's glue for a PyTorch model, as its examples write it: NHWC numpy in and out."""
    import saliency.core as saliency

    def call_model_function(images, call_model_args=None, expected_keys=None):
        x = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        x = x.to(device).requires_grad_(True)
        target = call_model_args["target"]
        scores = model(x)[:, target]
        (grads,) = torch.autograd.grad(scores, x, grad_outputs=torch.ones_like(scores))
        return {saliency.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).cpu().numpy()}

    return call_model_function


def pair_smoothgrad(model, device, x_hwc: np.ndarray, target: int) -> np.ndarray:
    import saliency.core as saliency

    return saliency.GradientSaliency().GetSmoothedMask(
        x_hwc,
        pair_call_model_function(model, device),
        call_model_args={"target": target},
        stdev_spread=NOISE,
        nsamples=SAMPLES,
        magnitude=False,
    )


# ------------------------------------------------------------------------------------------
# the engine, the floor and the model they get


def sigmas_of(x: torch.Tensor) -> list[float]:
    flat = x.reshape(x.shape[0], -1)
    return (NOISE * (flat.max(1).values - flat.min(1).values)).tolist()


def as_given(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model as a careful user hands it to any library: eval mode, frozen parameters,
    channels-last, but none of the engine's graph changes (BatchNorm folding, ReLU6 swap)."""
    model = model.eval().to(device).requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def floor_passes(model, x, t, chunk, precision):
    """Plain chunked forward+backward over len(x) × n noisy rows made beforehand: no noise
    drawing, no sums, nothing but the model's own work."""
    memory_format = engine.input_format(model)
    generator = torch.Generator().manual_seed(1)
    total = x.shape[0] * SAMPLES
    batches = []
    for start in range(0, total, chunk):
        index = (torch.arange(start, min(start + chunk, total)) // SAMPLES).to(x.device)
        noise = torch.randn((len(index), *x.shape[1:]), generator=generator).to(x.device)
        noisy = (x[index] + 0.3 * noise).contiguous(memory_format=memory_format)
        batches.append((noisy, t[index]))

    def passes():
        for noisy, target in batches:
            engine.input_gradient(model, noisy, target, precision)

    return passes


def smoother(chunk: int, precision: str = "fp32", n: int = SAMPLES, seed: int = SEED):
    """The engine as every row of the bench runs it: the gradient, n copies, 15 % noise."""
    return engine.SmoothGrad(
        engine.Gradient(), samples=n, noise_level=NOISE, seed=seed, batch_size=chunk,
        precision=precision,
    )  # fmt: skip


def engine_run(model, x, t, batch, precision, n=SAMPLES):
    """One ``smoother`` run: the maps of ``x`` for targets ``t``."""
    return smoother(batch, precision, n).attribute(model, x, t)
