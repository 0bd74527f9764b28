"""The chunk-size tuner on a noisy, shared machine, simulated: no timing is measured here.

``Machine`` is a clock that moves only when the probe runs a chunk, by as much as that chunk
would cost on a machine whose load changes over (simulated) time, so each test sets the
exact conditions: chunk 1 fast for one moment and slow after it, a probe longer than its
budget, a Ctrl-C, a cached rate that a real run contradicts.

- the probe: the deadline is checked before every chunk (the number of chunks it runs is
  bounded), later rounds go down then up, medians and a majority decide;
- the cache: an unfinished or interrupted probe is never cached, a cached choice is said on
  one line with how to re-probe, ``SMOOTHGRAD_RETUNE=1`` re-probes, corrupt entries are
  re-probed, ``--batch-size`` overrides everything;
- runs correct the cache: a run far slower or faster than its probe marks the entry stale
  and the next run re-probes; a compiled run's speed, a short run, or an entry re-probed
  meanwhile change nothing; re-probing stops after ``MAX_REPROBES`` in a row.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from smoothgrad_cli import engine, tuning, tuning_cache, tuning_probe

CPU = torch.device("cpu")
SHAPE = (3, 8, 8)


class Machine:
    """A simulated machine: ``clock()`` moves only when ``chunk(size)`` does work.

    A chunk of ``size`` rows costs ``size × row_seconds[size] × load(now)`` seconds."""

    def __init__(self, row_seconds: dict[int, float], load: Callable[[float], float] = None):
        self.row_seconds = row_seconds
        self.load = load or (lambda now: 1.0)
        self.now = 0.0
        self.calls: list[tuple[int, float]] = []  # (size, start)
        self.interrupt_at: int | None = None  # raise KeyboardInterrupt on this call

    def clock(self) -> float:
        return self.now

    def chunk(self, size: int) -> None:
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append((size, self.now))
        self.now += size * self.row_seconds[size] * self.load(self.now)

    def seconds(self, size: int) -> float:
        return size * self.row_seconds[size] * self.load(self.now)


#: an idle CPU: chunk 4 is the fastest per row, 1 about 40 % slower than it
IDLE = {1: 0.010, 2: 0.008, 4: 0.006, 8: 0.006, 16: 0.0065, 32: 0.0075}


def probe_on(machine: Machine, **kwargs) -> tuning.Rates:
    return tuning.probe(None, CPU, SHAPE, clock=machine.clock, chunk=machine.chunk, **kwargs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SMOOTHGRAD_CACHE_DIR", str(folder))
    monkeypatch.delenv("SMOOTHGRAD_RETUNE", raising=False)
    return folder


@pytest.fixture
def machine(monkeypatch) -> Machine:
    """The tuner's probe runs on a simulated machine (``machine.probes`` counts probes)."""
    sim = Machine(dict(IDLE))
    sim.probes = 0
    real = tuning_probe.probe

    def simulated(model, device, input_shape, precision="fp32", candidates=None, **kwargs):
        sim.probes += 1
        return real(
            None, device, input_shape, precision, candidates, clock=sim.clock, chunk=sim.chunk
        )

    monkeypatch.setattr(tuning, "probe", simulated)
    return sim


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(72, 3)).eval()


def entries() -> dict:
    return json.loads(tuning.cache_path().read_text())["entries"]


def the_entry() -> dict:
    (entry,) = entries().values()
    return entry


# ---------------------------------------------------------------------------------------------
# 1. the probe: bounded, interleaved, robust to a moment of load


def test_a_moment_of_idle_for_chunk_1_does_not_make_it_the_choice():
    # idle while chunk 1 is timed in the first round, twice as slow from then on: the
    # reported trial. Each size keeping its best round would pick chunk 1.
    sim = Machine(dict(IDLE), load=lambda now: 1.0 if now < 0.3 else 2.0)
    rates = probe_on(sim)
    assert rates.finished and rates.rounds == 3
    best_rounds = {size: max(r) for size, r in rates.samples.items()}
    assert tuning.pick(best_rounds) == 1  # what keeping each size's best round would pick
    assert tuning.pick(rates, rates.samples) == 4


def test_later_rounds_go_down_then_up():
    sim = Machine(dict(IDLE))
    rates = probe_on(sim, candidates=(1, 2, 4), min_time_s=0.01, rounds=3)
    order = []
    for size, _ in sim.calls:  # the sizes in the order they were run, runs of one merged
        if not order or order[-1] != size:
            order.append(size)
    assert order == [1, 2, 4, 2, 1, 2, 4]  # up (with warm-ups), then 4 again going down, up
    assert all(len(s) == 3 for s in rates.samples.values())


def test_every_chunk_is_started_only_if_it_fits_the_budget():
    # A big model on a loaded machine: one row costs a second, whatever the chunk. The old
    # probe timed a full sweep of 32 rows of chunk 1 (32 s) before looking at its limit.
    sim = Machine(dict.fromkeys(IDLE, 1.0))
    rates = probe_on(sim, budget_s=20)
    assert sim.now <= 20
    assert len(sim.calls) <= 20  # each call costs at least 1 s
    # sizes that could not be timed in every round were left out beforehand: it finished
    assert rates.finished and rates.rounds == 3
    assert "would not fit the 20 s budget" in rates.note


def test_a_probe_that_only_had_time_for_the_smallest_size_is_not_cached():
    # So loaded that after chunk 1 no larger chunk fits: the one size timed is no choice
    # (a cached chunk 1 at a fraction of the machine's speed would stay for every run).
    sim = Machine(dict.fromkeys(IDLE, 4.0))
    rates = probe_on(sim, budget_s=20)
    assert list(rates.samples) == [1]
    assert not rates.finished
    assert "would not fit the 20 s budget: one size alone is no choice" in rates.note


def test_a_machine_that_slows_down_mid_probe_leaves_it_unfinished_within_one_chunk():
    # the first round goes well; then the machine becomes 30 times slower
    sim = Machine(dict(IDLE), load=lambda now: 1.0 if now < 2.0 else 30.0)
    rates = probe_on(sim, budget_s=5)
    assert not rates.finished
    assert "out of its 5 s budget" in rates.note
    longest = max(size * IDLE[size] * 30.0 for size in IDLE)
    assert sim.now <= 5 + longest  # at most the one chunk that met the slowdown
    assert rates.samples and 1 <= rates.rounds < 3  # what was measured is still there


def test_the_deadline_is_checked_inside_a_sample_not_after_it():
    # one size only, whose chunks get slower and slower: the sample is cut by the deadline
    sim = Machine({1: 1.0}, load=lambda now: 1.0 + now)
    rates = probe_on(sim, candidates=(1,), budget_s=10, min_time_s=100)
    assert not rates.finished and rates.rounds == 0 and not rates.samples
    # chunks of 1, 2 then 4 s; the next, expected to take 4 s more, would end at 11 s
    assert [round(start) for _, start in sim.calls] == [0, 1, 3]
    assert sim.now == pytest.approx(7.0)


def test_pick_prefers_a_smaller_chunk_only_if_it_wins_most_rounds():
    # chunk 1's median is the best, but it was slower than chunk 4 in two rounds of three
    samples = {1: [20.0, 9.0, 10.5], 4: [5.0, 10.0, 11.0]}
    medians = {1: 10.5, 4: 10.0}
    assert tuning.pick(medians) == 1
    assert tuning.pick(medians, samples) == 4
    # as good as 4 in two rounds of three: the smaller one is kept
    samples = {1: [10.0, 9.0, 10.0], 4: [10.1, 10.2, 8.0]}
    assert tuning.pick({1: 10.0, 4: 10.1}, samples) == 1
    # a probe cut short after two rounds, one won by each: the medians decide
    assert tuning.pick({4: 12.4, 8: 3.2}, {4: [2.9, 12.4, 14.0], 8: [3.5, 3.0]}) == 4
    assert tuning.pick({4: 3.0, 8: 3.2}, {4: [3.5, 2.5, 3.0], 8: [3.0, 3.4]}) == 8


# ---------------------------------------------------------------------------------------------
# 2. what is cached, what is said


def test_an_unfinished_probe_is_not_cached_and_the_best_so_far_is_used(cache, machine, model):
    machine.load = lambda now: 1.0 if now < 2.0 else 1000.0
    said = []
    plan = tuning.plan_run(model, CPU, SHAPE, "fp32", say=said.append)
    assert not tuning.cache_path().exists()
    assert plan.choice.cached is False and plan.meter is tuning.NO_METER
    measured = plan.choice.rates
    assert plan.batch_size in measured and plan.batch_size == tuning.pick(measured)
    assert "for this run only and not cached" in said[-1] and "--batch-size N" in said[-1]
    assert "out of its 20 s budget" in said[-1]
    # so the next run probes again
    machine.load = lambda now: 1.0
    tuning.plan_run(model, CPU, SHAPE, "fp32")
    assert machine.probes == 2 and tuning.cache_path().exists()


def test_a_probe_that_times_nothing_uses_the_default(cache, model, monkeypatch):
    monkeypatch.setattr(tuning, "probe", lambda *args, **kwargs: tuning.Rates())
    said = []
    plan = tuning.plan_run(model, CPU, SHAPE, "fp32", say=said.append)
    assert plan.batch_size == engine.default_batch_size(CPU)
    assert "the default" in said[-1] and not tuning.cache_path().exists()


def test_an_interrupted_probe_caches_nothing_and_says_so(cache, machine, model):
    machine.interrupt_at = 7
    said = []
    with pytest.raises(KeyboardInterrupt):
        tuning.plan_run(model, CPU, SHAPE, "fp32", say=said.append)
    assert said[-1] == "chunk-size probe interrupted: nothing cached"
    assert not tuning.cache_path().exists()


def test_the_cached_entry_records_rates_rounds_and_when(cache, machine, model):
    tuning.plan_run(model, CPU, SHAPE, "fp32")
    entry = the_entry()
    assert entry["batch_size"] == 4 and entry["rounds"] == 3 and entry["reprobes"] == 0
    assert set(entry["round_rates"]) == set(entry["rows_per_s"])
    assert all(len(r) == 3 for r in entry["round_rates"].values())
    assert entry["probed_at"].endswith("+00:00") and entry["probe_seconds"] >= 0


def test_a_cached_choice_is_used_and_said_with_how_to_reprobe(cache, machine, model):
    tuning.plan_run(model, CPU, SHAPE, "fp32", say=[].append, model_name="tiny")
    said = []
    plan = tuning.plan_run(model, CPU, SHAPE, "fp32", say=said.append, model_name="tiny")
    assert machine.probes == 1 and plan.batch_size == 4 and not plan.choice.probed
    (line,) = said
    assert "\n" not in line and line.startswith("chunk size 4 from the cache (probed ")
    assert "3 rounds" in line and "SMOOTHGRAD_RETUNE=1 re-probes" in line
    assert "--batch-size N" in line
    batch_size, _ = plan  # callers that unpack (batch_size, model) still can
    assert batch_size == 4


def test_smoothgrad_retune_probes_again(cache, machine, model, monkeypatch):
    tuning.plan_run(model, CPU, SHAPE, "fp32")
    monkeypatch.setenv("SMOOTHGRAD_RETUNE", "1")
    said = []
    tuning.plan_run(model, CPU, SHAPE, "fp32", say=said.append)
    assert machine.probes == 2 and "SMOOTHGRAD_RETUNE is set" in said[0]
    monkeypatch.setenv("SMOOTHGRAD_RETUNE", "0")
    tuning.plan_run(model, CPU, SHAPE, "fp32")
    assert machine.probes == 2


def test_a_run_too_small_to_pay_for_a_probe_gets_none(cache, machine, model, monkeypatch):
    """A probe times ≈ 190 rows on a CPU: a run of fewer than 4× that takes the default (or
    the cached size), caches nothing and says why; a larger one probes; RETUNE forces one."""
    pays_from = tuning.PROBE_PAYS_AFTER * tuning.probe_rows(CPU)
    assert pays_from == 4 * sum(tuning.CPU_CANDIDATES) * tuning.ROUNDS == 756
    said = []
    plan = tuning.plan_run(model, CPU, SHAPE, "fp32", say=said.append, run_rows=pays_from - 1)
    assert machine.probes == 0 and not tuning.cache_path().exists()
    assert plan.batch_size == engine.default_batch_size(CPU) and plan.meter is tuning.NO_METER
    (line,) = said
    assert line.startswith(f"chunk size {plan.batch_size}, not timed: ") and "\n" not in line
    assert "this run's 755 forward+backward passes (runs of 756 or more time one;" in line
    # a run large enough probes and caches; a small run after it uses (and checks) the cache
    tuning.plan_run(model, CPU, SHAPE, "fp32", run_rows=pays_from)
    assert machine.probes == 1 and the_entry()["batch_size"] == 4
    plan = tuning.plan_run(model, CPU, SHAPE, "fp32", run_rows=1)
    assert plan.batch_size == 4 and plan.meter is not tuning.NO_METER and machine.probes == 1
    # a stale entry is not re-probed for a small run, but its measured size is still used
    stale = tuning_cache.read_entries()
    stale[plan.choice.key]["stale"] = "a run on this machine was far slower"
    assert tuning_cache.write_entries(stale)
    assert tuning.plan_run(model, CPU, SHAPE, "fp32", run_rows=1).batch_size == 4
    assert machine.probes == 1
    monkeypatch.setenv("SMOOTHGRAD_RETUNE", "1")
    tuning.plan_run(model, CPU, SHAPE, "fp32", run_rows=1)
    assert machine.probes == 2


def test_batch_size_overrides_the_cache_and_retune(cache, machine, model, monkeypatch):
    tuning.plan_run(model, CPU, SHAPE, "fp32")
    monkeypatch.setenv("SMOOTHGRAD_RETUNE", "1")
    said = []
    plan = tuning.plan_run(model, CPU, SHAPE, "fp32", batch_size=3, say=said.append)
    assert plan.batch_size == 3 and plan.choice is None and plan.meter is tuning.NO_METER
    assert machine.probes == 1 and said == []


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"batch_size": True},
        {"rows_per_s": [1, 2]},
        {"rows_per_s": {"4": -1.0}},
        {"rows_per_s": {"four": 1.0}},
        {"probed_at": None},
        {"stale": 3},
    ],
)
def test_a_corrupt_entry_is_reprobed(cache, machine, model, bad):
    tuning.plan_run(model, CPU, SHAPE, "fp32")
    data = json.loads(tuning.cache_path().read_text())
    (key,) = data["entries"]
    data["entries"][key].update(bad)
    tuning.cache_path().write_text(json.dumps(data))
    assert tuning.plan_run(model, CPU, SHAPE, "fp32").batch_size == 4
    assert machine.probes == 2
    assert tuning_cache.valid_entry(the_entry()) is not None  # whole again


def test_an_entry_with_odd_bookkeeping_is_still_used(cache, machine, model):
    tuning.plan_run(model, CPU, SHAPE, "fp32")
    data = json.loads(tuning.cache_path().read_text())
    (key,) = data["entries"]
    data["entries"][key].update(reprobes="many", runs={"not": "a list"})
    tuning.cache_path().write_text(json.dumps(data))
    plan = planned(model)
    assert machine.probes == 1 and plan.meter.reprobes == 0
    run(plan.meter, cached_rate())
    assert [r["batch_size"] for r in the_entry()["runs"]] == [4]


def test_a_version_1_cache_is_not_trusted(cache, machine, model):
    key = tuning.cache_key(model, CPU, SHAPE, "fp32")
    cache.mkdir()
    old = {"batch_size": 1, "rows_per_s": {"1": 5.0}, "probed_at": "2024-01-01T00:00:00+00:00"}
    tuning.cache_path().write_text(json.dumps({"version": 1, "entries": {key: old}}))
    assert tuning.plan_run(model, CPU, SHAPE, "fp32").batch_size == 4
    assert machine.probes == 1


# ---------------------------------------------------------------------------------------------
# 3. runs correct the cache


class RunClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(meter, rows_per_s: float, *, calls: int = 6, chunk: int = 4) -> None:
    """A run of ``calls`` engine calls of a second each at ``rows_per_s``, with slow
    decoding and writing between calls (which must not count)."""
    clock = meter.clock
    rows = max(chunk, round(rows_per_s))
    for _ in range(calls):
        progress = meter.wrap(None)
        for first in range(0, rows, chunk):
            done = min(chunk, rows - first)
            clock.now += done / rows_per_s
            if progress is not None:
                progress(done)
        clock.now += 30.0  # decode, render, write


def planned(model, say=None, **kwargs):
    plan = tuning.plan_run(model, CPU, SHAPE, "fp32", say=say, **kwargs)
    if plan.meter is not tuning.NO_METER:
        plan.meter.clock = RunClock()
    return plan


def cached_rate() -> float:
    entry = the_entry()
    return entry["rows_per_s"][str(entry["batch_size"])]


def test_a_run_that_agrees_is_recorded_and_keeps_the_entry(cache, machine, model):
    plan = planned(model)
    rate = cached_rate()
    run(plan.meter, 0.9 * rate)
    assert plan.meter.verdict == "agrees"
    entry = the_entry()
    assert "stale" not in entry
    (record,) = entry["runs"]
    assert record["batch_size"] == 4 and record["of_probe"] == pytest.approx(0.9, abs=0.01)
    planned(model)
    assert machine.probes == 1


@pytest.mark.parametrize("factor", [0.3, 2.0])
def test_a_run_far_from_its_probe_marks_the_entry_stale_and_the_next_run_reprobes(
    cache, machine, model, factor
):
    # 2.0: the reported trial: the probe ran on a loaded machine, the run on an idle one
    said = []
    plan = planned(model, say=said.append)
    run(plan.meter, factor * cached_rate())
    assert "stale" in the_entry()
    assert said[-1].endswith("; the next run probes again")
    assert ("slower" if factor < 1 else "faster") in said[-1]
    said.clear()
    again = planned(model, say=said.append)
    assert machine.probes == 2 and again.choice.probed
    assert "as the cached one is stale: a run on " in said[0]
    entry = the_entry()
    assert "stale" not in entry and entry["reprobes"] == 1


def test_reprobing_stops_when_runs_keep_contradicting_every_probe(cache, machine, model):
    for _ in range(tuning_cache.MAX_REPROBES + 1):
        plan = planned(model)
        run(plan.meter, 0.2 * cached_rate())
    assert machine.probes == tuning_cache.MAX_REPROBES + 1
    assert plan.meter.verdict == "kept"  # the gap outlived the re-probes: not the load
    planned(model)
    assert machine.probes == tuning_cache.MAX_REPROBES + 1
    assert len(the_entry()["runs"]) == 1


def test_a_compiled_run_being_faster_proves_nothing(cache, machine, model):
    tuning.plan_run(model, CPU, SHAPE, "fp32")
    entry = tuning_cache.valid_entry(the_entry())
    key = next(iter(entries()))
    meter = tuning.RunMeter(key, entry, faster_counts=False)
    meter.clock = RunClock()
    run(meter, 3 * cached_rate())
    assert meter.verdict == "agrees" and "stale" not in the_entry()


def test_a_short_run_says_nothing(cache, machine, model):
    plan = planned(model)
    run(plan.meter, 0.1 * cached_rate(), calls=3)
    plan.meter.wrap(None)
    assert plan.meter.verdict is None and "runs" not in the_entry()


def test_the_rate_is_counted_in_passes(cache, machine, model):
    # integrated gradients with 8 steps: 8 passes a row, so 1/8 of the rows is the same speed
    plan = planned(model, passes_per_row=8)
    run(plan.meter, cached_rate() / 8)
    assert plan.meter.verdict == "agrees"


def test_a_run_does_not_judge_an_entry_reprobed_meanwhile(cache, machine, model):
    plan = planned(model)
    data = json.loads(tuning.cache_path().read_text())
    (key,) = data["entries"]
    data["entries"][key]["probed_at"] = "2099-01-01T00:00:00+00:00"  # another run's probe
    tuning.cache_path().write_text(json.dumps(data))
    run(plan.meter, 0.1 * cached_rate())
    assert "stale" not in the_entry() and "runs" not in the_entry()


def test_no_meter_hands_the_callback_back():
    def progress(rows):
        return None

    assert tuning.NO_METER.wrap(progress) is progress
    assert tuning.NO_METER.wrap(None) is None


def test_the_explainer_keeps_the_meter_and_counts_its_method_passes(cache, machine):
    from torchvision.transforms._presets import ImageClassification

    from smoothgrad_cli import Explainer, MapSettings
    from smoothgrad_cli.explainer import PreparedModel
    from smoothgrad_cli.models import LoadedModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)).eval()
    loaded = LoadedModel("net", "random", net, ImageClassification(crop_size=8), ["a", "b", "c"])
    prepared = PreparedModel.load("net", device="cpu", loader=lambda m, w: loaded)
    explainer = Explainer(MapSettings(method="integrated-gradients", ig_steps=5), prepared)
    explainer.plan_chunks(compile=False, say=[].append)
    assert explainer.smoother.batch_size == 4
    assert explainer.chunk_meter.passes_per_row == 5 and explainer.chunk_meter.active
    fixed = Explainer(MapSettings(batch_size=2), prepared)
    fixed.plan_chunks(compile=False, say=[].append)
    assert fixed.smoother.batch_size == 2 and fixed.chunk_meter is tuning.NO_METER


def test_the_cli_batch_size_still_skips_the_probe_with_a_stale_entry(
    cache, machine, model, tmp_path, sample_images, monkeypatch
):
    from typer.testing import CliRunner

    from smoothgrad_cli.cli import app

    monkeypatch.setenv("SMOOTHGRAD_RETUNE", "1")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["explain", str(sample_images / "coffee.png"), "-o", str(out), "-n", "2",
         "--batch-size", "2", "--device", "cpu", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert machine.probes == 0 and not tuning.cache_path().exists()
    assert "chunk size" not in result.stderr
