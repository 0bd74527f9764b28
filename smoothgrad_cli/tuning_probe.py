"""The timed probe behind the automatic chunk size, bounded in time and robust to load.

The probe shares its machine with whatever else runs there, so its clock is not to be
trusted for long stretches, and a single chunk of a big model can take seconds:

- the budget is a deadline checked before every chunk the probe runs, warm-ups included: a
  chunk expected to end past it (from the latest chunk of that size, or of the nearest
  smaller one) is not started, so only a chunk far slower than the one before it can
  overrun. Running out leaves the result ``finished = False``, which is never cached;
- before timing a larger size, the first round checks that timing it in every round, and the
  remaining rounds of the sizes already timed, still fit the budget; if not, larger sizes are
  left out (said in ``note``) and the probe can still finish;
- each sample times whole chunks for at least ``min_time_s``, over distinct random rows as a
  run would (the same pool of rows, as many as the largest size, cut into chunks);
- rounds alternate direction (up, down, up …) so load that drifts during the probe does not
  favour the sizes timed first, and each size keeps its median;
- ``pick`` takes a size over a larger one only if it is as good in most rounds.

``clock`` and ``chunk`` can be replaced (tests simulate a machine with them): ``chunk(size)``
runs one forward+backward of ``size`` rows and returns when it is done.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import engine

CPU_CANDIDATES = (1, 2, 4, 8, 16, 32)
GPU_CANDIDATES = (8, 16, 32, 64, 128, 256, 512)

#: a chunk within this share of the best rate counts as just as good; the smallest one wins,
#: since it holds less memory and wastes less on a run's last, partial chunk
GOOD_ENOUGH = 0.98
#: stop trying larger chunks once two in a row fall this far below the best
FALLING_OFF = 0.85
#: three rounds: a median that drops one spoilt round, and a majority of two out of three
ROUNDS = 3


class Rates(dict):
    """Median rows (noisy copies) per second by chunk size, and how the probe went."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: dict[int, list[float]] = {}  # each round's rate, in round order
        self.rounds = 0  # rounds finished over every size timed
        self.finished = False  # False: out of time; never cached
        self.cut_by_budget = False  # larger sizes were left out: they would not fit the budget
        self.note = ""  # why it stopped short, or why larger sizes were not timed
        self.seconds = 0.0


class _OutOfTime(Exception):
    pass


def probe(
    model: nn.Module | None,
    device: torch.device,
    input_shape: Sequence[int],
    precision: str = "fp32",
    candidates: Sequence[int] | None = None,
    *,
    rounds: int = ROUNDS,
    budget_s: float | None = None,
    min_time_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    chunk: Callable[[int], None] | None = None,
) -> Rates:
    """Rows per second of a plain forward+backward for each chunk size tried (see above).

    The first round goes up from the smallest size and stops once two larger chunks in a row
    are clearly slower, the GPU runs out of memory, or larger sizes would not fit the budget.
    With ``chunk`` given, ``model`` is not used.
    """
    device = torch.device(device)
    gpu = device.type != "cpu"
    sizes = sorted(candidates or (GPU_CANDIDATES if gpu else CPU_CANDIDATES))
    budget_s = (30.0 if gpu else 20.0) if budget_s is None else budget_s
    min_time_s = (0.05 if gpu else 0.25) if min_time_s is None else min_time_s
    result = Rates()
    started = clock()
    timer = _Timer(chunk, clock, started + budget_s, min_time_s, result.samples)
    try:
        if chunk is None:
            sizes = timer.use_pool(model, device, input_shape, precision, sizes)
        _first_round(timer, sizes, rounds, budget_s, result)
        for r in range(1, rounds):
            for size in sorted(result.samples, reverse=r % 2 == 1):
                timer.sample(size)
            result.rounds += 1
        # One size timed because no larger one fitted the budget says nothing about which
        # size is best: a moment of load, not the machine (it would pin chunk 1 in the cache).
        result.finished = len(result.samples) > 1 or not result.cut_by_budget
        if not result.finished:
            result.note += ": one size alone is no choice, so nothing is cached"
    except _OutOfTime:
        result.note = f"out of its {budget_s:g} s budget after {result.rounds} of {rounds} rounds"
    finally:
        timer.pool = None
        if gpu:
            torch.cuda.empty_cache()
        result.seconds = clock() - started
        result.update({size: statistics.median(s) for size, s in result.samples.items()})
    return result


def _first_round(timer: _Timer, sizes, rounds: int, budget_s: float, result: Rates) -> None:
    worse = 0
    for i, size in enumerate(sizes):
        if i and not timer.fits(size, rounds):
            result.note = f"chunks above {sizes[i - 1]} would not fit the {budget_s:g} s budget"
            result.cut_by_budget = True
            break
        try:
            for _ in range(2 if i == 0 else 1):  # warm-up: first-call costs per shape
                timer.run(size)
            timer.sample(size)
        except torch.cuda.OutOfMemoryError:
            result.note = f"chunk {size} runs out of memory"
            break
        best = max(s[0] for s in result.samples.values())
        worse = worse + 1 if result.samples[size][0] < FALLING_OFF * best else 0
        if worse >= 2:
            break
    result.rounds = 1


class _Timer:
    """Runs and times chunks against one deadline."""

    def __init__(self, chunk, clock, deadline: float, min_time_s: float, samples) -> None:
        self.chunk = chunk
        self.clock = clock
        self.deadline = deadline
        self.min_time_s = min_time_s
        self.samples: dict[int, list[float]] = samples
        self.row_seconds: dict[int, float] = {}  # of the latest chunk of each size
        self.pool: torch.Tensor | None = None

    def use_pool(self, model, device, input_shape, precision, sizes: list[int]) -> list[int]:
        """Time the real model on one pool of random rows; the sizes whose pool fits."""
        generator = torch.Generator().manual_seed(0)
        while self.pool is None and sizes:
            try:
                self.pool = torch.randn((sizes[-1], *input_shape), generator=generator).to(device)
            except torch.cuda.OutOfMemoryError:
                sizes = sizes[:-1]
        if self.pool is None:
            return []
        pool = self.pool = self.pool.contiguous(memory_format=engine.input_format(model))
        targets = torch.zeros(pool.shape[0], dtype=torch.long, device=device)
        offsets: dict[int, int] = {}

        def chunk(size: int) -> None:
            first = offsets.get(size, 0)
            first = 0 if first + size > pool.shape[0] else first
            offsets[size] = first + size  # the next chunk takes the next rows
            engine.input_gradient(model, pool[first : first + size], targets[:size], precision)
            sync(pool.device)  # the clock must see the work done, not just queued

        self.chunk = chunk
        return sizes

    def expected(self, size: int) -> float:
        """Seconds one chunk of ``size`` should take, from the nearest size measured."""
        known = [s for s in self.row_seconds if s <= size]
        return size * self.row_seconds[max(known)] if known else 0.0

    def run(self, size: int) -> None:
        """One chunk, unless it would end past the deadline; its time becomes the estimate
        for the next chunk of this size (warm-ups too: their first-call costs err safe)."""
        started = self.clock()
        if started + self.expected(size) > self.deadline:
            raise _OutOfTime
        self.chunk(size)
        self.row_seconds[size] = (self.clock() - started) / size

    def sample(self, size: int) -> None:
        rows, start = 0, self.clock()
        while True:
            self.run(size)
            rows += size
            elapsed = self.clock() - start
            if elapsed >= self.min_time_s and elapsed > 0:
                break
        self.samples.setdefault(size, []).append(rows / elapsed)

    def fits(self, size: int, rounds: int) -> bool:
        """Would a warm-up and ``rounds`` samples of ``size``, and the rounds left of the
        sizes timed so far, end before the deadline? (A sample: min time and one chunk.)"""
        need = self.expected(size) + rounds * (self.min_time_s + self.expected(size))
        for timed in self.samples:
            need += (rounds - 1) * (self.min_time_s + self.expected(timed))
        return self.clock() + need <= self.deadline


def pick(rates: dict[int, float], samples: dict[int, list[float]] | None = None) -> int:
    """The smallest chunk whose rate is within ``GOOD_ENOUGH`` of the best one; given each
    round's ``samples``, a chunk is kept over a larger one only if it is as good in most
    rounds they share, else the smallest larger chunk that beats it is tried in its place."""
    if not rates:
        raise ValueError("no chunk size could be timed")
    best = max(rates.values())
    choice = min(size for size, rate in rates.items() if rate >= GOOD_ENOUGH * best)
    while samples is not None:
        beaten_by = [
            larger
            for larger in rates
            if larger > choice and not _holds_up(samples[choice], samples[larger])
        ]
        if not beaten_by:
            break
        choice = min(beaten_by)
    return choice


def _holds_up(small: list[float], large: list[float]) -> bool:
    """Round by round, ``small`` within ``GOOD_ENOUGH`` of ``large`` more often than not; a
    tie (an even number of rounds shared, as in a probe cut short) goes by the medians."""
    shared = list(zip(small, large, strict=False))  # a round cut short has fewer
    wins = sum(a >= GOOD_ENOUGH * b for a, b in shared)
    if 2 * wins == len(shared):
        return statistics.median(small) >= GOOD_ENOUGH * statistics.median(large)
    return 2 * wins > len(shared)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- is a lower precision faster? (``--precision auto`` on CPUs with native bf16) ----------

#: a candidate precision must beat fp32 by this much: a near tie is not worth its rounding
FASTER_BY = 1.1
#: a candidate whose warm row takes this many times fp32's row is dropped at once
HOPELESS = 3.0
#: … and so is one whose very first row (first-call costs included) takes this long and ten
#: times fp32's: the embedded Lite0 under bf16 on an AVX-512 BF16 CPU took over a second
HOPELESS_FIRST_S = 0.5


def precision_is_faster(
    model: nn.Module | None,
    device: torch.device,
    input_shape: Sequence[int],
    candidate: str = "bf16",
    *,
    rows: int = 4,
    budget_s: float = 2.0,
    clock: Callable[[], float] = time.perf_counter,
    chunk: Callable[[str, int], None] | None = None,
) -> bool:
    """Whether ``candidate`` runs ``model``'s forward+backward at least ``FASTER_BY`` times
    as fast as fp32 here: the hook ``engine.resolve_precision(..., faster=...)`` calls.

    Bounded for a hopeless candidate: a warm-up row of each, the candidate dropped at once if
    its first row is far slower (``HOPELESS_FIRST_S``), then after one warm row
    (``HOPELESS``); else rounds of fp32 and candidate chunks of ``rows`` rows, interleaved so
    that load hits both, while they fit ``budget_s``, medians compared. ``chunk(precision,
    size)`` replaces the real model (tests).
    """
    device = torch.device(device)
    if chunk is None:
        generator = torch.Generator().manual_seed(0)
        pool = torch.randn((rows, *input_shape), generator=generator).to(device)
        pool = pool.contiguous(memory_format=engine.input_format(model))
        targets = torch.zeros(rows, dtype=torch.long, device=device)

        def chunk(precision: str, size: int) -> None:
            engine.input_gradient(model, pool[:size], targets[:size], precision)
            sync(device)

    def per_row(precision: str, size: int) -> float:
        started = clock()
        chunk(precision, size)
        return (clock() - started) / size

    deadline = clock() + budget_s
    per_row("fp32", 1)  # first-call costs
    fp32 = per_row("fp32", 1)
    first = per_row(candidate, 1)
    if first > max(HOPELESS_FIRST_S, 10 * fp32):
        return False
    times = {"fp32": [fp32], candidate: [per_row(candidate, 1)]}
    if times[candidate][0] > HOPELESS * fp32:
        return False
    for _ in range(ROUNDS):
        if clock() + rows * (times["fp32"][-1] + times[candidate][-1]) > deadline:
            break
        for precision in ("fp32", candidate):
            times[precision].append(per_row(precision, rows))
    # the single warm rows count only when no round of chunks fitted the budget
    measured = {p: t[1:] or t for p, t in times.items()}
    return statistics.median(measured["fp32"]) >= FASTER_BY * statistics.median(measured[candidate])
