"""Automatic chunk size: a short, bounded, timed probe the first time, then a cached answer
that the runs using it keep checking.

SmoothGrad runs n forward+backward passes per image in chunks of noisy copies. The best chunk
depends on the model, the device, the input size and the precision: on small CPUs a chunk of
4–8 copies that stays in cache can run several times faster than 48 at once, while GPUs want
chunks large enough to fill them. So the first run for a (model, device, input size,
precision) times a few chunk sizes on random inputs and keeps the fastest; the answer is
cached (``tuning_cache``) and reused by later runs.

The probe runs on machines shared with other work, where a burst of load can make any size
look fast or slow for a moment, so:

- it has a hard time budget, checked before every chunk it runs (a chunk that would end past
  it is not started), not after a size has been timed. A probe that ran out of time, or was
  interrupted, is not cached: the run uses the best size measured so far, or the default,
  and says so;
- sizes are timed in interleaved rounds (up, down, up), each keeps its median, and a size is
  chosen over a larger one only if it is as good in most rounds, so one lucky moment of one
  size does not decide;
- runs check the entry they use (``tuning_cache.RunMeter``): a run whose rate contradicts it
  marks it stale and the next run probes again. ``SMOOTHGRAD_RETUNE=1`` re-probes now, and
  ``--batch-size N`` skips all of this;
- a run too small for the probe to pay off (fewer forward+backward rows than
  ``PROBE_PAYS_AFTER`` probes would time) does not probe: it takes the cached size if there
  is one, else the default, and caches nothing. The probe times each candidate at least once
  a round, ≈ 190 rows on a CPU, nearly four single-photo runs of 50 samples: a first
  ``smoothgrad explain photo.jpg`` would otherwise spend most of its time choosing a chunk.
  What a probe can win is the gap between the default and the best size (on the 2-core
  development CPU, 8 is the best for Lite0 and 4 and 16 are within 12 % of it), which only a
  long run gains back.

The chunk size never changes what is computed, only how the work is cut: every noisy copy is
drawn from its own seed and the engine's results agree across chunk sizes to float rounding.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import engine, tuning_cache
from .tuning_cache import (
    CACHE_FILE,
    CACHE_VERSION,
    NO_METER,
    RETUNE_VARIABLE,
    RunMeter,
    cache_dir,
    cache_key,
    cache_path,
    cpu_name,
    device_description,
    model_fingerprint,
)
from .tuning_probe import (
    CPU_CANDIDATES,
    FALLING_OFF,
    GOOD_ENOUGH,
    GPU_CANDIDATES,
    ROUNDS,
    Rates,
    pick,
    precision_is_faster,
    probe,
    sync,
)

#: a run probes once its work is at least this many times the probe's own (``probe_rows``)
PROBE_PAYS_AFTER = 4


def probe_rows(device: torch.device) -> int:
    """Forward+backward rows a probe runs at the least: each candidate once per round."""
    gpu = torch.device(device).type != "cpu"
    return sum(GPU_CANDIDATES if gpu else CPU_CANDIDATES) * ROUNDS


@dataclass
class Choice:
    batch_size: int
    probed: bool  # False: read from the cache
    rates: dict[int, float]  # rows (noisy copies) per second for each chunk tried: medians
    seconds: float = 0.0  # how long the probe took
    cached: bool = True  # False: the probe stopped short; its answer is for this run only
    note: str = ""  # why the probe stopped short, or why it did not time larger chunks
    entry: dict[str, Any] | None = None  # the cache entry behind the choice
    key: str = ""
    #: (the run's rows, the rows from which a run probes), when too few for one: none was run
    small_run: tuple[int, int] | None = None


def choose_batch_size(
    model: nn.Module,
    device: torch.device,
    input_shape: Sequence[int],
    precision: str = "fp32",
    *,
    model_name: str | None = None,
    say: Callable[[str], None] | None = None,
    run_rows: int | None = None,
) -> Choice:
    """The chunk size for this model/device/input size/precision: cached, else probed now.

    ``say`` is told, once, that a probe is running (it takes a few seconds) and why. A
    missing, unreadable, corrupt or stale entry only means probing again; a cache folder that
    cannot be written only means the answer is not kept. ``run_rows``, the forward+backward
    rows the run will do, if known: a run too small to pay for a probe gets none (the
    module's doc), unless ``SMOOTHGRAD_RETUNE`` asks for one.
    """
    device = torch.device(device)
    precision = engine.resolve_precision(precision, device)
    key = cache_key(model, device, input_shape, precision, model_name)
    retune = tuning_cache.retune_requested()
    old = None if retune else tuning_cache.valid_entry(tuning_cache.read_entries().get(key))
    if old is not None and not old.get("stale"):
        return Choice(old["batch_size"], False, old["rows_per_s"], entry=old, key=key)
    pays_from = PROBE_PAYS_AFTER * probe_rows(device)
    if run_rows is not None and not retune and run_rows < pays_from:
        # a stale entry's size is still a measured one; the meter is not run against it
        size = old["batch_size"] if old is not None else engine.default_batch_size(device)
        return Choice(size, False, {}, cached=False, key=key, small_run=(run_rows, pays_from))
    if say is not None:
        if old is not None:
            why = f"again, as the cached one is stale: {old['stale']}"
        elif retune:
            why = f"again, as {RETUNE_VARIABLE} is set; cached in {cache_path()}"
        else:
            why = f"done once and cached in {cache_path()}"
        where = model_name or type(model).__name__
        say(
            f"choosing a chunk size for {where} on {device.type} ({precision}): a timed probe {why}"
        )
    started = time.perf_counter()
    try:
        rates = probe(model, device, input_shape, precision)
    except KeyboardInterrupt:
        if say is not None:
            say("chunk-size probe interrupted: nothing cached")
        raise
    seconds = time.perf_counter() - started
    note = getattr(rates, "note", "")
    if not rates:
        note = note or "no chunk size could be timed"
        return Choice(engine.default_batch_size(device), True, {}, seconds, False, note)
    samples = getattr(rates, "samples", None) or {k: [v] for k, v in rates.items()}
    best = pick(rates, samples)
    if not getattr(rates, "finished", True):
        return Choice(best, True, dict(rates), seconds, False, note)
    entry = {
        "batch_size": best,
        "rows_per_s": {str(k): round(v, 3) for k, v in rates.items()},  # medians
        "round_rates": {str(k): [round(r, 3) for r in v] for k, v in samples.items()},
        "rounds": getattr(rates, "rounds", 1),
        "probe_seconds": round(seconds, 2),
        "probed_at": tuning_cache.now_iso(),
        # re-probes in a row forced by runs (see tuning_cache.MAX_REPROBES)
        "reprobes": old.get("reprobes", 0) + 1 if old is not None else 0,
        **({"note": note} if note else {}),
    }
    tuning_cache.store(key, entry)
    parsed = tuning_cache.valid_entry(entry)
    return Choice(best, True, dict(rates), seconds, True, note, parsed, key)


@dataclass
class RunPlan:
    """What a run needs before its first image. ``meter.wrap(progress)`` times each engine
    call for the cache (a no-op where there is nothing to check)."""

    batch_size: int
    model: nn.Module
    meter: RunMeter = NO_METER
    choice: Choice | None = None  # None: ``batch_size`` was given

    def __iter__(self) -> Iterator[Any]:  # for callers that unpack (batch_size, model)
        return iter((self.batch_size, self.model))


def plan_run(
    model: nn.Module,
    device: torch.device,
    input_shape: Sequence[int],
    precision: str,
    *,
    batch_size: int | None = None,
    compile: bool = False,
    model_name: str | None = None,
    say: Callable[[str], None] | None = None,
    passes_per_row: int = 1,
    run_rows: int | None = None,
) -> RunPlan:
    """The chunk size (``batch_size`` if given, else cached or probed, said on one line) and
    the model to attribute with (compiled with ``compile``). ``passes_per_row``: forward+
    backward passes per row of the run's method, to compare its rate with the probe's;
    ``run_rows``: the run's forward+backward passes, if known (``choose_batch_size``)."""
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    choice = None
    if batch_size is None:
        choice = choose_batch_size(
            model, device, input_shape, precision, model_name=model_name, say=say,
            run_rows=run_rows,
        )  # fmt: skip
        batch_size = choice.batch_size
        if say is not None:
            say(describe(choice))
    eager = model
    if compile:
        model = compile_model(
            model, device, input_shape, precision, batch_size, model_name=model_name, say=say
        )
    meter = NO_METER
    if choice is not None and choice.entry is not None:
        meter = RunMeter(
            choice.key,
            choice.entry,
            passes_per_row=passes_per_row,
            faster_counts=model is eager,
            say=say,
        )
    return RunPlan(batch_size, model, meter, choice)


def describe(choice: Choice) -> str:
    """The one line a run says about its chunk size, with how to change it."""
    change = f"{RETUNE_VARIABLE}=1 re-probes, --batch-size N sets one"
    size = choice.batch_size
    if choice.small_run is not None:
        rows, pays_from = choice.small_run
        return (
            f"chunk size {size}, not timed: a probe would cost more than it saves on this "
            f"run's {rows:,} forward+backward passes (runs of {pays_from:,} or more time one; "
            f"{RETUNE_VARIABLE}=1 forces one, --batch-size N sets a size)"
        )
    if not choice.probed and choice.entry is not None:
        entry = choice.entry
        when = entry["probed_at"][:16].replace("T", " ")
        rate = entry["rows_per_s"].get(size)
        rate_text = f", {rate:.1f} noisy copies/s" if rate else ""
        rounds = entry.get("rounds", "?")
        return (
            f"chunk size {size} from the cache (probed {when} UTC, {rounds} rounds{rate_text}; "
            f"{change})"
        )
    rates = ", ".join(f"{k}: {v:.1f}" for k, v in sorted(choice.rates.items()))
    rates = f"noisy copies per second by chunk size: {rates}; " if rates else ""
    if choice.cached:
        note = f"; {choice.note}" if choice.note else ""
        return f"chunk size {size} ({rates}probe took {choice.seconds:.1f} s{note})"
    what = "the best measured so far" if choice.rates else "the default"
    return (
        f"chunk-size probe stopped short ({choice.note}; {choice.seconds:.1f} s): chunk {size}, "
        f"{what}, for this run only and not cached ({rates}--batch-size N skips the probe)"
    )


def compile_model(
    model: nn.Module,
    device: torch.device,
    input_shape: Sequence[int],
    precision: str,
    batch_size: int,
    *,
    model_name: str | None = None,
    say: Callable[[str], None] | None = None,
) -> nn.Module:
    """``torch.compile`` the model and compile it now, on one chunk, so the time it takes is
    known and said; fall back to the eager model if compiling fails.

    Compiled kernels are cached by PyTorch's Inductor in ``<cache folder>/inductor`` (unless
    ``TORCHINDUCTOR_CACHE_DIR`` says otherwise), so later runs of the same model and chunk
    size compile much faster. A run's last, smaller chunk compiles once more (with a dynamic
    batch size). Worth it for folders, not for a few images.
    """
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    where = model_name or type(model).__name__
    if say is not None:
        say(
            f"compiling {where} with torch.compile (kernels cached in "
            f"{os.environ['TORCHINDUCTOR_CACHE_DIR']})"
        )
    started = time.perf_counter()
    try:
        compiled = torch.compile(model)
        x = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
        x = x.to(device).contiguous(memory_format=engine.input_format(model))
        target = torch.zeros(batch_size, dtype=torch.long, device=device)
        engine.input_gradient(compiled, x, target, precision)
        sync(device)
    except Exception as exc:  # no C compiler, an unsupported layer, …: eager still works
        if say is not None:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            say(f"torch.compile failed ({type(exc).__name__}: {first}); running eagerly")
        return model
    if say is not None:
        say(f"compiled {where} in {time.perf_counter() - started:.1f} s")
    return compiled


_ALLOCATOR_TUNED = False


def precision_probe(
    model: nn.Module,
    device: torch.device,
    input_shape: Sequence[int],
    *,
    model_name: str | None = None,
) -> Callable[[str], bool]:
    """``engine.resolve_precision``'s ``faster`` hook for this model here: whether a
    candidate precision runs it faster than fp32 (``tuning_probe.precision_is_faster``, at
    most about two seconds), asked once and cached beside the chunk sizes, so that
    ``--precision auto`` gives a model the same precision on every run of this machine
    (``SMOOTHGRAD_RETUNE=1`` asks again). Called only on CPUs with native bf16."""
    device = torch.device(device)

    def faster(candidate: str) -> bool:
        key = cache_key(model, device, input_shape, f"{candidate} against fp32", model_name)
        if not tuning_cache.retune_requested():
            entry = tuning_cache.read_entries().get(key)
            if isinstance(entry, dict) and isinstance(entry.get("faster"), bool):
                return entry["faster"]
        answer = precision_is_faster(model, device, input_shape, candidate)
        tuning_cache.store(key, {"faster": answer, "probed_at": tuning_cache.now_iso()})
        return answer

    return faster


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of giving it back to the OS.

    Every chunk allocates and frees the same tens of megabytes of activations. By default
    glibc serves blocks that big with fresh ``mmap`` calls and returns them on ``free``, so
    every chunk page-faults all of its activations in again; on small and virtual machines
    that costs 10–20 % of a CPU run. Raising the mmap and trim thresholds lets freed blocks be
    reused; the price is that the process keeps its peak memory until it exits. Process-wide,
    so the CLI calls it for CPU runs (the library leaves the choice to its caller). Returns
    False where this is not glibc (nothing changes there).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = (
        mallopt(m_mmap_threshold, 32 << 20) == 1  # glibc's largest allowed value
        and mallopt(m_trim_threshold, 1 << 30) == 1
        and mallopt(m_top_pad, 64 << 20) == 1
    )
    _ALLOCATOR_TUNED = ok
    return ok


__all__ = [
    "CACHE_FILE", "CACHE_VERSION", "CPU_CANDIDATES", "Choice", "FALLING_OFF", "GOOD_ENOUGH",
    "GPU_CANDIDATES", "NO_METER", "RETUNE_VARIABLE", "ROUNDS", "Rates", "RunMeter", "RunPlan",
    "cache_dir", "cache_key", "cache_path", "choose_batch_size", "compile_model", "cpu_name",
    "describe", "device_description", "keep_freed_memory", "model_fingerprint", "pick",
    "plan_run", "precision_probe", "probe",
]  # fmt: skip
