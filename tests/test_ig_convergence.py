"""Integrated gradients that say how complete they are, and refine until they are.

Two models whose path integral is known in closed form make every reported gap checkable by
hand: a quadratic S(x) = xᵀAx + bᵀx, whose path integrand is linear in α (Gauss–Legendre is
exact at any number of nodes), and a one-hidden-layer ReLU network, whose integrand
δ·∇S(x′ + αδ) is piecewise constant with a jump where each hidden unit switches, so both the
exact integral and any quadrature of it are sums over the kink points along the path.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from torch import nn
from torchvision.transforms._presets import ImageClassification
from typer.testing import CliRunner

from smoothgrad_cli import Explainer, MapSettings, engine, explainer
from smoothgrad_cli.check import Checker, SpecError, parse_spec
from smoothgrad_cli.cli import app
from smoothgrad_cli.engine.convergence import (
    Convergence,
    Progress,
    WorkMeter,
    completeness_gap,
    converged_attribute,
    step_levels,
)
from smoothgrad_cli.explainer import Explanation, PreparedModel
from smoothgrad_cli.manifest import ok_entry
from smoothgrad_cli.models import LoadedModel
from smoothgrad_cli.report import ImageResult, Report, map_results
from smoothgrad_cli.settings import SettingsError

SHAPE = (3, 4, 4)
D = int(np.prod(SHAPE))


# --- the two models -------------------------------------------------------------------------


class Quadratic(nn.Module):
    """S_c(x) = xᵀ A_c x + b_cᵀ x on the flattened input, in float64."""

    def __init__(self, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(classes, D, D, generator=g, dtype=torch.float64) / D)
        self.b = nn.Parameter(torch.randn(classes, D, generator=g, dtype=torch.float64))

    def forward(self, x):
        z = x.double().flatten(1)
        return torch.einsum("ni,cij,nj->nc", z, self.A, z) + z @ self.b.T


class ReluNet(nn.Module):
    """S(x) = V relu(W x + c) + d on the flattened input, in float64 (the input may be
    float32: its gradient comes back in float32 through the cast)."""

    def __init__(self, hidden: int = 7, classes: int = 2, seed: int = 1, size: int = D) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(hidden, size, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.randn(hidden, generator=g, dtype=torch.float64))
        self.V = nn.Parameter(torch.randn(classes, hidden, generator=g, dtype=torch.float64))
        self.d = nn.Parameter(torch.randn(classes, generator=g, dtype=torch.float64))

    def forward(self, x):
        return torch.relu(x.double().flatten(1) @ self.W.T + self.c) @ self.V.T + self.d


def frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def relu_path(net: ReluNet, x: np.ndarray, start: np.ndarray, c: int):
    """The integrand of class c along x′ → x as (kinks, slopes): f(α) = Σ_i slope_i · [unit i
    is on at α], with unit i's pre-activation linear in α, zero at its kink."""
    W, bias, V = (t.detach().numpy() for t in (net.W, net.c, net.V))
    delta = (x - start).ravel().astype(np.float64)
    h0 = W @ start.ravel().astype(np.float64) + bias  # pre-activations at α = 0
    rate = W @ delta  # their change per unit α
    return h0, rate, V[c] * rate


def relu_integrand(net, x, start, c, alphas: np.ndarray) -> np.ndarray:
    h0, rate, slope = relu_path(net, x, start, c)
    on = (h0[None, :] + alphas[:, None] * rate[None, :]) > 0
    return on.astype(np.float64) @ slope


def relu_exact(net, x, start, c) -> float:
    """∫₀¹ f(α) dα: each unit contributes its slope times the length of α ∈ [0, 1] where it is
    on, found from its kink."""
    h0, rate, slope = relu_path(net, x, start, c)
    total = 0.0
    for h, r, s in zip(h0, rate, slope, strict=True):
        if r == 0:
            on = 1.0 if h > 0 else 0.0
        else:
            kink = -h / r
            on = np.clip(1.0 - kink, 0, 1) if r > 0 else np.clip(kink, 0, 1)
        total += s * on
    return float(total)


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (nodes + 1.0), 0.5 * weights


def relu_gap(net, x, start, c, steps: int) -> float:
    """The hand-computed completeness gap of Gauss–Legendre with ``steps`` nodes."""
    alphas, weights = gauss_legendre(steps)
    exact = relu_exact(net, x, start, c)
    return abs(float(weights @ relu_integrand(net, x, start, c, alphas)) - exact) / abs(exact)


def inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed))


def smoother(steps: int, baseline=None, **kwargs) -> engine.SmoothGrad:
    kwargs.setdefault("smoothing", "none")
    return engine.SmoothGrad(engine.IntegratedGradients(steps, baseline=baseline), **kwargs)


# --- the closed forms -----------------------------------------------------------------------


def test_the_hand_integral_of_the_relu_network_is_its_score_change():
    net = frozen(ReluNet())
    x, start = inputs(1, 2)[0].numpy(), np.zeros(SHAPE, np.float32)
    with torch.no_grad():
        scores = net(torch.from_numpy(np.stack([x, start])))
    for c in (0, 1):
        change = float(scores[0, c] - scores[1, c])
        assert relu_exact(net, x, start, c) == pytest.approx(change, rel=1e-12)
    # the path crosses kinks: the integrand is not constant and few nodes miss
    assert relu_gap(net, x, start, 0, 2) > 1e-3


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_the_quadratic_is_integrated_exactly_and_its_gap_is_zero(steps):
    model = frozen(Quadratic())
    x, target = inputs(2, 3), torch.tensor([0, 1])
    start = 0.3 * inputs(1, 4)
    maps, results = converged_attribute(
        smoother(steps, baseline=start), model, x, target, tolerance=None
    )
    A, b = model.A.detach(), model.b.detach()
    for i, c in enumerate(target.tolist()):
        z, z0 = x[i].double().ravel(), start[0].double().ravel()
        delta = z - z0
        # ∇S is affine, so its mean along the path is its value at the midpoint
        expected = delta * ((A[c] + A[c].T) @ (z0 + delta / 2) + b[c])
        torch.testing.assert_close(maps[i].double().ravel(), expected, rtol=1e-5, atol=1e-5)
        change = float(model(x[i : i + 1])[0, c] - model(start)[0, c])
        assert results[i].steps == steps and results[i].tolerance is None
        assert results[i].converged is None
        assert results[i].score_change == pytest.approx(change, rel=1e-9)
        assert results[i].attribution_sum == pytest.approx(float(maps[i].double().sum()), rel=1e-6)
        assert results[i].gap < 1e-5  # the hand-computed gap is 0


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 13, 32])
def test_the_relu_gap_is_the_hand_computed_one_at_each_step_count(steps):
    net = frozen(ReluNet())
    x = inputs(2, 5)
    target = torch.tensor([0, 1])
    maps, results = converged_attribute(smoother(steps), net, x, target, tolerance=None)
    start = np.zeros(SHAPE, np.float32)
    for i, c in enumerate(target.tolist()):
        xi = x[i].numpy()
        alphas, weights = gauss_legendre(steps)
        quadrature = float(weights @ relu_integrand(net, xi, start, c, alphas))
        assert results[i].attribution_sum == pytest.approx(quadrature, rel=1e-5, abs=1e-6)
        assert results[i].score_change == pytest.approx(relu_exact(net, xi, start, c), rel=1e-9)
        assert results[i].gap == pytest.approx(
            relu_gap(net, xi, start, c, steps), rel=1e-4, abs=1e-6
        )
        assert float(maps[i].double().sum()) == pytest.approx(quadrature, rel=1e-5, abs=1e-6)


def test_the_gap_is_relative_to_the_score_change():
    assert completeness_gap(9.0, 10.0) == pytest.approx(0.1)
    assert completeness_gap(-11.0, -10.0) == pytest.approx(0.1)
    assert completeness_gap(0.0, 0.0) == 0.0  # x is its own baseline: nothing to miss
    assert completeness_gap(1e-3, 0.0) == float("inf")
    assert Convergence(8, 1.0, 1.0, 0.05, 0.0).converged is True
    assert Convergence(8, 1.0, 2.0, 0.05, 0.5).converged is False
    assert Convergence(8, 1.0, 2.0, None, 0.5).converged is None


# --- the tolerance loop ---------------------------------------------------------------------


def test_step_levels_double_from_the_first_up_to_the_most():
    assert step_levels(256) == [16, 32, 64, 128, 256]
    assert step_levels(100) == [16, 32, 64, 100]
    assert step_levels(16) == [16]
    assert step_levels(4) == [4]
    assert step_levels(10, first=1) == [1, 2, 4, 8, 10]
    with pytest.raises(ValueError):
        step_levels(0)


def _first_level_meeting(gaps: dict[int, float], tolerance: float) -> int | None:
    return next((steps for steps, gap in gaps.items() if gap <= tolerance), None)


def test_the_loop_stops_at_the_first_step_count_that_meets_the_tolerance():
    net = frozen(ReluNet())
    x, c = inputs(1, 5), 0
    xi, start = x[0].numpy(), np.zeros(SHAPE, np.float32)
    levels = step_levels(64, first=1)
    gaps = {steps: relu_gap(net, xi, start, c, steps) for steps in levels}
    tried = 0
    for stop in levels:
        tolerance = gaps[stop] * (1 + 1e-3)
        if _first_level_meeting(gaps, tolerance) != stop:
            continue  # an earlier level meets it too: not a test of stopping here
        tried += 1
        maps, (result,) = converged_attribute(
            smoother(64), net, x, torch.tensor([c]), tolerance=tolerance, first_steps=1
        )
        assert result.steps == stop and result.converged is True
        assert result.gap == pytest.approx(gaps[stop], rel=1e-4, abs=1e-6)
        # the map is the one of that many nodes
        alone = engine.IntegratedGradients(stop).attribute(net, x, torch.tensor([c]))
        torch.testing.assert_close(maps, alone)
    assert tried >= 3, gaps


def test_inputs_stop_at_their_own_levels_and_the_rest_run_together():
    net = frozen(ReluNet())
    x = torch.cat([inputs(1, 8), inputs(1, 10), inputs(1, 7)])
    target = torch.tensor([0, 1, 1])
    start = np.zeros(SHAPE, np.float32)
    levels = step_levels(32, first=2)
    tolerance = 0.01  # met at 16, at 8, and never (see the gaps this prints when it fails)
    expected = []
    for i in range(3):
        gaps = {s: relu_gap(net, x[i].numpy(), start, int(target[i]), s) for s in levels}
        expected.append(_first_level_meeting(gaps, tolerance) or levels[-1])
    assert expected == [16, 8, 32], expected
    sg = smoother(32)
    calls = []
    attribute = sg.attribute

    def spy(model, rows, targets, **kwargs):
        calls.append((sg.base.steps, rows.shape[0]))
        return attribute(model, rows, targets, **kwargs)

    sg.attribute = spy
    _, results = converged_attribute(sg, net, x, target, tolerance=tolerance, first_steps=2)
    assert [r.steps for r in results] == expected
    assert [r.converged for r in results] == [True, True, False]
    # one engine call per level, holding every input not yet within the tolerance
    for steps, n_rows in calls:
        assert n_rows == sum(e >= steps for e in expected)
    assert [s for s, _ in calls] == [s for s in levels if s <= max(expected)]
    assert sg.base.steps == 32  # the method is put back


def test_an_input_that_reaches_the_most_steps_unconverged_is_marked():
    net = frozen(ReluNet())
    _, (result,) = converged_attribute(
        smoother(8), net, inputs(1, 5), torch.tensor([0]), tolerance=1e-12, first_steps=2
    )
    assert result.steps == 8 and result.converged is False and result.gap > 1e-12


def test_progress_ends_at_one_input_each_and_work_counts_the_passes():
    net = frozen(ReluNet())
    x = torch.cat([inputs(1, 5), inputs(1, 6), 0.01 * inputs(1, 7)])
    target = torch.tensor([0, 0, 1])
    sg = smoother(32, smoothing="smoothgrad", samples=3, noise_level=0.1, batch_size=2)
    shown, work = [], []
    _, results = converged_attribute(
        sg, net, x, target, tolerance=0.02, first_steps=2,
        progress=Progress(shown.append, work.append),
    )  # fmt: skip
    assert sum(shown) == pytest.approx(3 * 3)  # 3 inputs × 3 noisy copies
    passes = sum(3 * sum(s for s in step_levels(32, 2) if s <= r.steps) for r in results)
    assert sum(work) * 32 == pytest.approx(passes)


# --- under SmoothGrad -----------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["zeros", "half of each row"])
def test_smoothgrad_gap_is_the_mean_map_against_the_mean_noisy_score_change(baseline):
    net = frozen(ReluNet())
    x = inputs(2, 8)
    target = torch.tensor([1, 0])
    seed, samples, level, steps = 7, 5, 0.2, 6
    start = None if baseline == "zeros" else (lambda rows: 0.5 * rows)
    sg = smoother(
        steps, baseline=start, smoothing="smoothgrad", samples=samples, noise_level=level,
        seed=seed, batch_size=3,
    )  # fmt: skip
    maps, results = converged_attribute(sg, net, x, target, tolerance=None)
    for i, c in enumerate(target.tolist()):
        # The noise, drawn here as the engine's formula says: sample j's N(0, 1) from a CPU
        # generator seeded by sample_seed(seed, j), times σ = level · (max − min) of the input.
        sigma = level * float(x[i].max() - x[i].min())
        noisy = []
        for j in range(samples):
            g = torch.Generator().manual_seed(engine.sample_seed(seed, j))
            noise = torch.randn(SHAPE, generator=g)
            torch.testing.assert_close(noise, engine.sample_noise(seed, j, SHAPE), rtol=0, atol=0)
            noisy.append(x[i] + sigma * noise)
        noisy = torch.stack(noisy)
        starts = torch.zeros_like(noisy) if start is None else start(noisy)
        with torch.no_grad():
            changes = net(noisy)[:, c] - net(starts)[:, c]
        mean_change = float(changes.mean())
        map_sum = float(maps[i].double().sum())
        assert results[i].score_change == pytest.approx(mean_change, rel=1e-6)
        assert results[i].attribution_sum == pytest.approx(map_sum, rel=1e-5)
        assert results[i].gap == pytest.approx(
            abs(map_sum - mean_change) / abs(mean_change), rel=1e-4, abs=1e-6
        )
        # and the mean map's sum is the mean of each noisy copy's quadrature, by hand
        alphas, weights = gauss_legendre(steps)
        by_hand = np.mean(
            [
                weights @ relu_integrand(net, n.numpy(), s.numpy(), c, alphas)
                for n, s in zip(noisy, starts, strict=True)
            ]
        )
        assert map_sum == pytest.approx(float(by_hand), rel=1e-5)
        assert results[i].gap > 1e-4  # something to compare: the quadrature misses


# --- settings, results, manifest, table -----------------------------------------------------


def test_settings_take_a_tolerance_and_record_it_for_integrated_gradients_only():
    ig = MapSettings(method="integrated-gradients", ig_tolerance=0.01)
    assert ig.parameters()["ig_tolerance"] == 0.01 and ig.parameters()["ig_steps"] == 256
    assert "ig_tolerance" not in MapSettings().parameters()
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(SettingsError) as info:
            MapSettings(ig_tolerance=bad)
        assert info.value.key == "ig_tolerance"
        assert info.value.command_line_message().startswith("--ig-tolerance must be a fraction")


SIZE = 8


def loaded_relu() -> LoadedModel:
    transform = ImageClassification(
        crop_size=SIZE, resize_size=SIZE, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)
    )
    net = ReluNet(hidden=12, classes=3, seed=4, size=3 * SIZE * SIZE)
    return LoadedModel("relu", "random", net.eval(), transform, ["a", "b", "c"])


@pytest.fixture()
def prepared() -> PreparedModel:
    return PreparedModel.load("relu", device="cpu", loader=lambda m, w: loaded_relu())


@pytest.fixture()
def photo_file(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(pixels).save(path)
    return path


def test_explanations_carry_each_maps_convergence(prepared, photo_file):
    settings = MapSettings(
        method="integrated-gradients", smoothing="none", ig_steps=64, ig_tolerance=0.001,
        top_k=2, precision="fp32",
    )  # fmt: skip
    e = Explainer(settings, prepared)
    explanation = e.explain_file(photo_file)
    assert len(explanation.convergence) == 2
    for m, result in zip(explanation.maps, explanation.convergence, strict=True):
        assert result.steps in (16, 32, 64)
        assert result.attribution_sum == pytest.approx(float(m.astype(np.float64).sum()), rel=1e-5)
    results = map_results(explanation)
    assert [r.ig.steps for r in results] == [c.steps for c in explanation.convergence]
    assert "ig" in results[0].to_json()
    # other methods have none, and their JSON no "ig" key
    plain = Explainer(settings.replace(method="gradient"), prepared).explain_file(photo_file)
    assert plain.convergence is None
    assert "ig" not in map_results(plain)[0].to_json()


def test_the_explainer_tells_the_bar_images_and_the_meter_passes(prepared, photo_file):
    class Meter:  # a chunk-size meter: its timing callback is told rows at the most nodes
        rows: list[float] = []

        def wrap(self, progress):
            assert progress is None
            return self.rows.append

    settings = MapSettings(
        method="integrated-gradients", samples=3, ig_steps=64, ig_tolerance=0.001, top_k=2,
        batch_size=4, precision="fp32",
    )  # fmt: skip
    e = Explainer(settings, prepared)
    e.plan_chunks(compile=False, say=[].append)
    assert isinstance(e.chunk_meter, WorkMeter)
    x = e.transform(Image.open(photo_file).convert("RGB"))
    bar, meter = [], Meter()
    explanations = e.explain(torch.stack([x, 0.5 * x]), progress=WorkMeter(meter).wrap(bar.append))
    # the pipeline's bar divides by rows_per_image: each image ends at exactly one
    assert sum(bar) == pytest.approx(2 * e.rows_per_image)
    levels = step_levels(64)
    steps = [c.steps for ex in explanations for c in ex.convergence]
    assert sum(meter.rows) * 64 == pytest.approx(
        sum(3 * sum(s for s in levels if s <= n) for n in steps)
    )


def _explanation(gap: float, tolerance: float | None = 0.05) -> Explanation:
    probabilities = np.array([0.7, 0.2, 0.1], np.float32)
    result = Convergence(256, 1.0 + gap, 1.0, tolerance, gap)
    return Explanation(np.zeros((1, 3, 2, 2), np.float32), [0], probabilities, "abc", [result])


def test_an_unconverged_map_is_said_on_stderr_marked_in_the_manifest_and_the_table():
    out, err = Console(file=io.StringIO(), width=200), Console(file=io.StringIO(), width=200)
    report = Report(out, err)
    bad, good = map_results(_explanation(0.08)), map_results(_explanation(0.01))
    report.done(ImageResult("bad.png", bad))
    report.done(ImageResult("good.png", good))
    said = err.file.getvalue()
    assert said.count("warning:") == 1
    assert (
        "warning: bad.png: integrated gradients of a (0) did not converge: completeness gap "
        "8.0% at 256 steps (--ig-steps), above --ig-tolerance 0.05" in said
    )
    assert ok_entry("bad.png", Path("bad.png"), bad)["ig_converged"] is False
    entry = ok_entry("good.png", Path("good.png"), good)
    assert entry["ig_converged"] is True and entry["maps"][0]["ig"]["steps"] == 256
    fixed = map_results(_explanation(0.08, tolerance=None))
    assert "ig_converged" not in ok_entry("f.png", Path("f.png"), fixed)
    report.finish()
    table = out.file.getvalue()
    assert "IG gap" in table and "8.0% · 256 steps, over 5%" in table
    assert "1.0% · 256 steps" in table


def test_cli_reports_the_gap_and_marks_an_unconverged_image(tmp_path, monkeypatch, photo_file):
    monkeypatch.setattr(explainer, "load_model", lambda m, w: loaded_relu())
    common = ["--method", "integrated-gradients", "--smoothing", "none", "--device", "cpu",
              "--batch-size", "2", "-q", "--json"]  # fmt: skip
    result = CliRunner().invoke(
        app,
        ["explain", str(photo_file), "-o", str(tmp_path / "out"), "--ig-steps", "2",
         "--ig-tolerance", "1e-12", *common],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ig = json.loads(result.stdout)["maps"][0]["ig"]
    assert ig["steps"] == 2 and ig["converged"] is False and ig["gap"] > 0
    assert "did not converge" in result.stderr and "--ig-tolerance 1e-12" in result.stderr
    entry = json.loads((tmp_path / "out" / "manifest.jsonl").read_text())
    assert entry["ig_converged"] is False and entry["parameters"]["ig_tolerance"] == 1e-12
    # fixed steps: the gap is reported, nothing is asked of it
    result = CliRunner().invoke(
        app,
        ["explain", str(photo_file), "-o", str(tmp_path / "o2"), "--ig-steps", "3",
         "--ig-tolerance", "0", *common],
        catch_exceptions=False,
    )  # fmt: skip
    ig = json.loads(result.stdout)["maps"][0]["ig"]
    assert ig["steps"] == 3 and ig["converged"] is None and "did not converge" not in result.stderr
    bad = CliRunner().invoke(app, ["explain", str(photo_file), "--ig-tolerance", "-1"])
    assert bad.exit_code == 2
    assert bad.stderr.strip() == (
        "smoothgrad: error: --ig-tolerance must be a fraction >= 0 (0.05 is 5 %), got -1.0"
    )


# --- check: max_ig_gap ----------------------------------------------------------------------


def _spec(tmp_path, photo_file, case: str, defaults: str = "", method="integrated-gradients"):
    path = tmp_path / "spec.toml"
    path.write_text(
        textwrap.dedent(
            """
            [defaults]
            method = "{method}"
            smoothing = "none"
            {defaults}
            [[case]]
            name = "p"
            image = "{image}"
            {case}
            """
        ).format(method=method, defaults=defaults, image=photo_file, case=case)
    )
    return path


def test_check_max_ig_gap_passes_and_fails_on_the_gap(tmp_path, photo_file):
    loader = lambda m, w: loaded_relu()  # noqa: E731
    spec = parse_spec(_spec(tmp_path, photo_file, "max_ig_gap = 0.05", "ig_steps = 64"))
    (passed,) = Checker(spec, device="cpu", loader=loader).run().results
    assert passed.check == "max_ig_gap" and passed.passed, passed
    assert passed.value <= 0.05 and passed.measured.endswith("steps)")
    spec = parse_spec(
        _spec(tmp_path, photo_file, "max_ig_gap = 1e-9", "ig_steps = 1\nig_tolerance = 0")
    )
    (failed,) = Checker(spec, device="cpu", loader=loader).run().results
    assert not failed.passed and "raise ig_steps (now 1)" in failed.message
    assert failed.to_json()["steps"] == 1


@pytest.mark.parametrize(
    ("case", "method", "message"),
    [
        ("max_ig_gap = 0.1", "gradient", 'needs method = "integrated-gradients"'),
        ("max_ig_gap = 0.01", "integrated-gradients", "0.01 is below ig_tolerance 0.05"),
        ('max_ig_gap = "x"', "integrated-gradients", "expected a number"),
        ("max_ig_gap = 0.1\nig_tolerance = -1", "integrated-gradients", "ig_tolerance: must be"),
    ],
)
def test_check_max_ig_gap_spec_errors(tmp_path, photo_file, case, method, message):
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(tmp_path, photo_file, case, method=method))
    assert message in str(info.value)
