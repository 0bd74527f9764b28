"""What a map's numbers are made of, whatever the device: the noise, TF32 and bf16 choices.

- portable noise: noisy copy j of every image is x + σ·randn(shape) drawn on the CPU from
  ``torch.Generator().manual_seed(sample_seed(seed, j))``, kept noise bank or not; with
  CUDA, the same noise there and maps that rank pixels as the CPU's do;
- TF32: fp32 on CUDA allows it for the engine call only and restores the caller's flags,
  fp32-strict does not; nothing is touched on the CPU;
- ``--precision auto`` on CPUs: bf16 only with native bf16 (``/proc/cpuinfo`` flags) and a
  probe that finds it faster; the probe drops a hopeless candidate after one row.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from smoothgrad_cli import engine, tuning_probe
from smoothgrad_cli.check.metrics import pool_map, spearman
from smoothgrad_cli.engine import model as engine_model
from smoothgrad_cli.engine import smoothgrad as smoothgrad_module
from smoothgrad_cli.engine.noise import draw_noise, sample_noise

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SHAPE = (3, 5, 6)


class _Recording(engine.Gradient):
    """The plain gradient, keeping a copy of every chunk of noisy rows it is given."""

    batches: list[torch.Tensor] = []

    def attribute(self, model, x, target, precision="fp32"):
        type(self).batches.append(x.detach().cpu().clone())
        return super().attribute(model, x, target, precision)


def tiny_net(device="cpu") -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(120, 3))
    return engine.prepare_model(net, device, input_shape=SHAPE)


def randn_formula(seed: int, sample: int, shape=SHAPE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(engine.sample_seed(seed, sample))
    return torch.randn(shape, generator=generator)


# --- portable noise ---------------------------------------------------------------------------


def test_sample_noise_is_the_documented_randn_formula():
    for seed, sample in ((0, 0), (0, 7), (3, 1), (12345, 49)):
        assert torch.equal(sample_noise(seed, sample, SHAPE), randn_formula(seed, sample))
    rows = draw_noise(3, [4, 0, 2], SHAPE, torch.device("cpu"))
    for row, sample in zip(rows, [4, 0, 2], strict=True):
        assert torch.equal(row, randn_formula(3, sample))


@pytest.mark.parametrize("bank", [True, False])
def test_the_rows_the_model_sees_are_x_plus_sigma_times_that_noise(monkeypatch, bank):
    """Every row of every chunk (chunks of 3 cut images of 4 copies anywhere): image i's copy
    j is exactly torch.add(x_i, noise_j, alpha=σ_i), from the kept bank or drawn per chunk."""
    if not bank:
        monkeypatch.setattr(smoothgrad_module, "_NOISE_BANK_BYTES", 0)
    x = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(1))
    x[1] *= 4  # σ is per image
    seed, samples, level = 9, 4, 0.2
    _Recording.batches = []
    sg = engine.SmoothGrad(
        _Recording(), noise_level=level, samples=samples, seed=seed, batch_size=3
    )
    sg.attribute(tiny_net(), x, [0, 1, 2])
    assert (sg._noise_bank is not None) == bank
    rows = torch.cat(_Recording.batches)
    assert rows.shape[0] == 3 * samples
    for i in range(3):
        sigma = level * float(x[i].max() - x[i].min())
        for j in range(samples):
            want = torch.add(x[i], randn_formula(seed, j), alpha=sigma)
            assert torch.equal(rows[i * samples + j], want), (i, j)


def test_cpu_maps_use_the_cpu_generator_whatever_the_bank():
    """The bank and per-chunk drawing are the same numbers, so the same maps, bit for bit."""
    x = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(2))
    kept = engine.SmoothGrad(engine.Gradient(), samples=5, batch_size=2)
    a = kept.attribute(tiny_net(), x, [0, 2])
    bank = kept._noise_bank[1]
    for j in range(5):
        assert torch.equal(bank[j], randn_formula(0, j))
    smoothgrad_module._NOISE_BANK_BYTES, saved = 0, smoothgrad_module._NOISE_BANK_BYTES
    try:
        b = engine.SmoothGrad(engine.Gradient(), samples=5, batch_size=2).attribute(
            tiny_net(), x, [0, 2]
        )
    finally:
        smoothgrad_module._NOISE_BANK_BYTES = saved
    assert torch.equal(a, b)


@CUDA
def test_cuda_noise_equals_cpu_noise_and_maps_rank_pixels_alike(monkeypatch, lite0, sample_images):
    cuda = torch.device("cuda")
    rows = draw_noise(5, [0, 3, 1], (3, 224, 224), cuda)
    assert rows.device.type == "cuda"
    assert torch.equal(rows.cpu(), draw_noise(5, [0, 3, 1], (3, 224, 224), torch.device("cpu")))
    # the kept bank and per-chunk drawing on CUDA
    x = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(3))
    for limit in (None, 0):
        if limit is not None:
            monkeypatch.setattr(smoothgrad_module, "_NOISE_BANK_BYTES_GPU", limit)
        seen = {}
        for device in ("cuda", "cpu"):
            _Recording.batches = []
            engine.SmoothGrad(_Recording(), samples=3, batch_size=4).attribute(
                tiny_net(device), x.to(device), [0, 1]
            )
            seen[device] = torch.cat(_Recording.batches)
        # x + σ·noise computed on each device: the same to the last bit or two
        torch.testing.assert_close(seen["cuda"], seen["cpu"], rtol=0, atol=1e-6)
    # fp32 maps of the embedded model, CPU and CUDA, pooled 8×8 (the golden check's pooling)
    with Image.open(sample_images / "coffee.png") as photo:
        x = lite0.transform(photo.convert("RGB"))[None]
    maps = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "fp32-strict")):
        model = engine.prepare_model(copy.deepcopy(lite0.model), device, input_shape=x.shape[1:])
        sg = engine.SmoothGrad(engine.Gradient(), samples=10, precision=precision)
        attribution = sg.attribute(model, x.to(device), [967])[0].cpu().numpy()
        maps[device, precision] = pool_map(np.abs(attribution).sum(0), 8).ravel()
    for key in (("cuda", "fp32"), ("cuda", "fp32-strict")):
        assert spearman(maps[key], maps["cpu", "fp32"]) >= 0.99, key


# --- TF32 on CUDA, for the engine call only ---------------------------------------------------


def _flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize(("precision", "inside"), [("fp32", True), ("fp32-strict", False)])
def test_tf32_is_set_for_the_call_and_restored(precision, inside):
    """The flags are process-wide and can be set without a GPU: the context is checked here
    on a CUDA device object, and again for a call that fails."""
    cuda = torch.device("cuda")
    before = _flags()
    with engine.float32_math(cuda, precision):
        assert _flags() == (inside, inside)
    assert _flags() == before
    with pytest.raises(RuntimeError, match="boom"), engine.float32_math(cuda, precision):
        raise RuntimeError("boom")
    assert _flags() == before
    for other in ("bf16", "fp16"):  # half precisions leave the flags alone
        with engine.float32_math(cuda, other):
            assert _flags() == before


def test_the_cpu_never_touches_the_tf32_flags(monkeypatch):
    def refuse(allowed):
        raise AssertionError("TF32 flags touched on the CPU")

    monkeypatch.setattr(engine_model, "_tf32", refuse)
    before = _flags()
    x = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(4))
    for precision in ("fp32", "fp32-strict"):
        engine.SmoothGrad(engine.Gradient(), samples=3, precision=precision).attribute(
            tiny_net(), x, [0, 1]
        )
        engine.predict(tiny_net(), x, precision=precision)
    assert _flags() == before


def test_tf32_follows_the_newer_api_when_the_caller_used_it():
    """After ``fp32_precision`` was set, reading the older flags raises: the context then
    sets and restores the newer ones (in a fresh process: that state cannot be undone)."""
    code = (
        "import torch\n"
        "from smoothgrad_cli import engine\n"
        "m, c = torch.backends.cuda.matmul, torch.backends.cudnn.conv\n"
        "m.fp32_precision = 'ieee'\n"
        "with engine.float32_math(torch.device('cuda'), 'fp32'):\n"
        "    assert (m.fp32_precision, c.fp32_precision) == ('tf32', 'tf32')\n"
        "assert m.fp32_precision == 'ieee'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


def test_fp32_strict_is_plain_fp32_off_cuda():
    assert engine.resolve_precision("fp32-strict", torch.device("cpu")) == "fp32"
    assert engine.resolve_precision("fp32", torch.device("cpu")) == "fp32"


# --- bf16 on CPUs that have it natively -------------------------------------------------------

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw {extra}
vmx flags\t: vnmi preemption_timer posted_intr {vmx}
bugs\t\t: spectre_v1 spectre_v2

processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw {extra}
"""


@pytest.mark.parametrize(
    ("extra", "vmx", "native"),
    [
        ("avx512_bf16 avx512_fp16", "", True),
        ("amx_bf16 amx_tile amx_int8", "", True),
        ("avx512_vnni", "", False),  # AVX-512 without BF16
        ("", "amx_bf16", False),  # only the flags line counts
        ("avx512_bf16x", "", False),  # whole flags, not substrings
    ],
)
def test_native_bf16_reads_the_cpuinfo_flags(extra, vmx, native):
    assert engine.native_bf16(CPUINFO.format(extra=extra, vmx=vmx)) is native


def test_native_bf16_of_an_amd_epyc_without_avx512():
    text = "flags\t\t: fpu sse2 avx f16c fma avx2 sha_ni vaes vpclmulqdq\n"
    assert engine.native_bf16(text) is False
    assert engine.native_bf16("") is False


def test_auto_on_cpu_asks_the_probe_only_with_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    asked = []

    def faster(candidate):
        asked.append(candidate)
        return True

    monkeypatch.setattr(engine_model, "_this_cpu_native_bf16", lambda: False)
    assert engine.resolve_precision("auto", cpu) == "fp32"  # the existing callers' form
    assert engine.resolve_precision("auto", cpu, faster=faster) == "fp32"
    assert asked == []
    monkeypatch.setattr(engine_model, "_this_cpu_native_bf16", lambda: True)
    assert engine.resolve_precision("auto", cpu) == "fp32"  # no probe, no bf16
    assert engine.resolve_precision("auto", cpu, faster=faster) == "bf16"
    assert engine.resolve_precision("auto", cpu, faster=lambda c: False) == "fp32"
    assert asked == ["bf16"]
    assert engine.resolve_precision("fp32", cpu, faster=faster) == "fp32"  # only auto asks


class _FakeMachine:
    """A clock and a chunk function: each row costs ``row_s[precision]`` seconds, the first
    call of each precision ``first_s`` more."""

    def __init__(self, row_s: dict[str, float], first_s: float = 0.0) -> None:
        self.now = 0.0
        self.row_s = row_s
        self.first_s = first_s
        self.calls: list[tuple[str, int]] = []

    def clock(self) -> float:
        return self.now

    def chunk(self, precision: str, size: int) -> None:
        first = all(p != precision for p, _ in self.calls)
        self.calls.append((precision, size))
        self.now += size * self.row_s[precision] + (self.first_s if first else 0.0)


def _probe(machine: _FakeMachine, **kwargs) -> bool:
    return tuning_probe.precision_is_faster(
        None, "cpu", SHAPE, clock=machine.clock, chunk=machine.chunk, **kwargs
    )


def test_probe_drops_a_hopeless_bf16_after_one_row():
    machine = _FakeMachine({"fp32": 0.03, "bf16": 1.2})  # Lite0-like: bf16 40× slower
    assert _probe(machine) is False
    assert [c for c in machine.calls if c[0] == "bf16"] == [("bf16", 1)]
    assert machine.now < 1.5  # dropped within a second or two


def test_probe_drops_a_slow_warm_bf16_after_its_second_row():
    machine = _FakeMachine({"fp32": 0.03, "bf16": 0.12}, first_s=0.2)  # 4× slower, warm
    assert _probe(machine) is False
    assert [c for c in machine.calls if c[0] == "bf16"] == [("bf16", 1), ("bf16", 1)]


def test_probe_takes_bf16_that_is_clearly_faster_despite_first_call_costs():
    machine = _FakeMachine({"fp32": 0.05, "bf16": 0.026}, first_s=0.3)  # resnet18-like 1.9×
    assert _probe(machine) is True
    assert machine.now <= 2.0 + 4 * (0.05 + 0.026)  # within its budget (one round over)


def test_probe_keeps_fp32_on_a_near_tie():
    assert _probe(_FakeMachine({"fp32": 0.05, "bf16": 0.048})) is False


def test_probe_with_a_real_model_runs_and_answers():
    answer = tuning_probe.precision_is_faster(tiny_net(), "cpu", SHAPE, rows=2, budget_s=0.5)
    assert answer in (True, False)


def test_auto_precision_probes_a_model_once_per_machine_then_reads_the_cache(monkeypatch, tmp_path):
    """The explainer's ``auto`` on a CPU with native bf16: the probe's answer is cached (a
    second explainer, as a second run would, does not time again) and SMOOTHGRAD_RETUNE asks
    again."""
    from torchvision.transforms._presets import ImageClassification

    from smoothgrad_cli import tuning
    from smoothgrad_cli.explainer import Explainer
    from smoothgrad_cli.models import LoadedModel
    from smoothgrad_cli.settings import MapSettings

    monkeypatch.setenv("SMOOTHGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(engine_model, "_this_cpu_native_bf16", lambda: True)
    timed = []

    def precision_is_faster(model, device, input_shape, candidate):
        timed.append((tuple(input_shape), candidate))
        return True

    monkeypatch.setattr(tuning, "precision_is_faster", precision_is_faster)

    def loader(name, weights):
        torch.manual_seed(0)
        transform = ImageClassification(crop_size=16, resize_size=16)
        return LoadedModel("tiny", "random", tiny_net(), transform, ["a", "b", "c"])

    def precision(**settings):
        return Explainer.load(MapSettings(**settings), "cpu", loader).precision

    assert precision() == "bf16"
    assert precision() == "bf16"
    assert timed == [((3, 16, 16), "bf16")]
    assert precision(precision="fp32") == "fp32"  # asked only for auto
    monkeypatch.setenv("SMOOTHGRAD_RETUNE", "1")
    assert precision() == "bf16"
    assert len(timed) == 2
