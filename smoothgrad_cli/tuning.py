"""Automatic chunk size: a short timed probe the first time, then a cached answer.

SmoothGrad runs n forward+backward passes per image in chunks of noisy copies. The best chunk
depends on the model, the device, the input size and the precision: on small CPUs a chunk of
4–8 copies that stays in cache can run several times faster than 48 at once, while GPUs want
chunks large enough to fill them. So the first run for a (model, device, input size,
precision) times a few chunk sizes on random inputs and keeps the fastest; the answer is
cached as JSON in the user's cache folder and reused by later runs.

The chunk size never changes what is computed, only how the work is cut: every noisy copy is
drawn from its own seed and the engine's results agree across chunk sizes to float rounding.

Cache folder: ``$SMOOTHGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/smoothgrad``, else
``~/.cache/smoothgrad``; the file is ``chunk-sizes.json``. Delete it to re-probe.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import engine
from .files import atomic_write

CACHE_FILE = "chunk-sizes.json"
CACHE_VERSION = 1

CPU_CANDIDATES = (1, 2, 4, 8, 16, 32)
GPU_CANDIDATES = (8, 16, 32, 64, 128, 256, 512)

#: a chunk within this share of the best rate counts as just as good; the smallest one wins,
#: since it holds less memory and wastes less on a run's last, partial chunk
GOOD_ENOUGH = 0.98
#: stop trying larger chunks once two in a row fall this far below the best
FALLING_OFF = 0.85


def cache_dir() -> Path:
    """``$SMOOTHGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/smoothgrad``, else ``~/.cache/...``."""
    override = os.environ.get("SMOOTHGRAD_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "smoothgrad"


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's class and parameter shapes: same architecture, same key."""
    inner = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    digest = hashlib.sha1(type(inner).__qualname__.encode())
    for name, p in inner.named_parameters():
        digest.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    return digest.hexdigest()[:12]


def device_description(device: torch.device) -> str:
    """What decides speed on ``device``: the GPU's name, or the CPU's model and thread count."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(index)}"
    if device.type == "cpu":
        return f"cpu:{cpu_name()}:{torch.get_num_threads()} threads"
    return device.type


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cache_key(
    model: nn.Module,
    device: torch.device,
    input_shape: Sequence[int],
    precision: str,
    model_name: str | None = None,
) -> str:
    """model/device/input size/precision (and torch's version, whose kernels change speed)."""
    size = "x".join(str(int(s)) for s in input_shape)
    name = f"{model_name}/" if model_name else ""
    return (
        f"{name}{model_fingerprint(model)}|{device_description(device)}|{size}|{precision}"
        f"|torch {torch.__version__}"
    )


@dataclass
class Choice:
    batch_size: int
    probed: bool  # False: read from the cache
    rates: dict[int, float]  # rows (noisy copies) per second for each chunk tried
    seconds: float = 0.0  # how long the probe took


def choose_batch_size(
    model: nn.Module,
    device: torch.device,
    input_shape: Sequence[int],
    precision: str = "fp32",
    *,
    model_name: str | None = None,
    say: Callable[[str], None] | None = None,
) -> Choice:
    """The chunk size for this model/device/input size/precision: cached, else probed now.

    ``say`` is told, once, that a probe is running (it takes a few seconds). A missing,
    unreadable or corrupt cache file only means probing again; a cache folder that cannot be
    written only means the answer is not kept.
    """
    device = torch.device(device)
    precision = engine.resolve_precision(precision, device)
    key = cache_key(model, device, input_shape, precision, model_name)
    entries = _read_cache()
    entry = entries.get(key)
    if isinstance(entry, dict) and _valid_size(entry.get("batch_size")):
        rates = entry.get("rows_per_s")
        return Choice(
            int(entry["batch_size"]),
            False,
            {int(k): float(v) for k, v in rates.items()} if isinstance(rates, dict) else {},
        )
    if say is not None:
        where = model_name or type(model).__name__
        say(
            f"choosing a chunk size for {where} on {device.type} ({precision}): a short timed "
            f"probe, done once and cached in {cache_path()}"
        )
    started = time.perf_counter()
    rates = probe(model, device, input_shape, precision)
    seconds = time.perf_counter() - started
    best = pick(rates)
    entries = _read_cache()  # another run may have written meanwhile
    entries[key] = {
        "batch_size": best,
        "rows_per_s": {str(k): round(v, 3) for k, v in rates.items()},
        "probe_seconds": round(seconds, 2),
        "probed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_cache(entries)
    return Choice(best, True, rates, seconds)


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
) -> tuple[int, nn.Module]:
    """What a run needs before its first image: the chunk size (``batch_size`` if given,
    else cached or probed) and the model to attribute with (compiled with ``compile``)."""
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    if batch_size is None:
        choice = choose_batch_size(
            model, device, input_shape, precision, model_name=model_name, say=say
        )
        batch_size = choice.batch_size
        if choice.probed and say is not None:
            rates = ", ".join(f"{k}: {v:.1f}" for k, v in sorted(choice.rates.items()))
            say(
                f"chunk size {batch_size} (noisy copies per second by chunk size: {rates}; "
                f"probe took {choice.seconds:.1f} s)"
            )
    if compile:
        model = compile_model(
            model, device, input_shape, precision, batch_size, model_name=model_name, say=say
        )
    return batch_size, model


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
        _sync(device)
    except Exception as exc:  # no C compiler, an unsupported layer, …: eager still works
        if say is not None:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            say(f"torch.compile failed ({type(exc).__name__}: {first}); running eagerly")
        return model
    if say is not None:
        say(f"compiled {where} in {time.perf_counter() - started:.1f} s")
    return compiled


def pick(rates: dict[int, float]) -> int:
    """The smallest chunk whose rate is within ``GOOD_ENOUGH`` of the best one."""
    if not rates:
        raise ValueError("no chunk size could be timed")
    best = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= GOOD_ENOUGH * best)


def probe(
    model: nn.Module,
    device: torch.device,
    input_shape: Sequence[int],
    precision: str = "fp32",
    candidates: Sequence[int] | None = None,
    *,
    rounds: int = 2,
    budget_s: float | None = None,
    min_time_s: float | None = None,
) -> dict[int, float]:
    """Rows per second of a plain forward+backward for each chunk size tried.

    Every size does the same work, as a run would: one sweep over the same pool of distinct
    random rows (as many rows as the largest size), cut into chunks of that size. The first
    round goes up from the smallest size and stops once two larger chunks in a row are
    clearly slower, or the GPU runs out of memory. Later rounds time the same sizes again,
    interleaved, and each size keeps its best rate: a burst of load from another process then
    spoils one sample of every size, not all samples of one size.
    """
    device = torch.device(device)
    gpu = device.type != "cpu"
    if candidates is None:
        candidates = GPU_CANDIDATES if gpu else CPU_CANDIDATES
    sizes = sorted(candidates)
    if budget_s is None:
        budget_s = 30.0 if gpu else 20.0
    if min_time_s is None:
        min_time_s = 0.05 if gpu else 0.25
    memory_format = engine.input_format(model)
    generator = torch.Generator().manual_seed(0)
    rates: dict[int, float] = {}
    started = time.perf_counter()
    pool = None
    try:
        while pool is None and sizes:
            try:
                pool = torch.randn((sizes[-1], *input_shape), generator=generator).to(device)
            except torch.cuda.OutOfMemoryError:
                sizes = sizes[:-1]
        if pool is None:
            return rates
        pool = pool.contiguous(memory_format=memory_format)
        targets = torch.zeros(pool.shape[0], dtype=torch.long, device=device)
        worse = 0
        for i, size in enumerate(sizes):
            try:
                for _ in range(2 if i == 0 else 1):  # warm-up: first-call costs per shape
                    engine.input_gradient(model, pool[:size], targets[:size], precision)
                rates[size] = _rate(model, pool, targets, size, precision, min_time_s)
            except torch.cuda.OutOfMemoryError:
                break
            worse = worse + 1 if rates[size] < FALLING_OFF * max(rates.values()) else 0
            if worse >= 2 or time.perf_counter() - started > budget_s:
                break
        for _ in range(rounds - 1):
            if time.perf_counter() - started > budget_s:
                break
            for size in rates:
                rate = _rate(model, pool, targets, size, precision, min_time_s)
                rates[size] = max(rates[size], rate)
    finally:
        pool = None
        if gpu:
            torch.cuda.empty_cache()
    return rates


def _rate(model, pool, targets, size, precision, min_time_s: float) -> float:
    """Rows per second over sweeps of the pool in chunks of ``size`` (at least one sweep,
    and at least ``min_time_s``)."""
    _sync(pool.device)
    rows = 0
    start = time.perf_counter()
    while True:
        for first in range(0, pool.shape[0], size):
            engine.input_gradient(
                model, pool[first : first + size], targets[first : first + size], precision
            )
            rows += min(size, pool.shape[0] - first)
        _sync(pool.device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time_s:
            return rows / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_ALLOCATOR_TUNED = False


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


def _valid_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _read_cache() -> dict[str, Any]:
    """The cached entries; an absent, unreadable or malformed file counts as empty."""
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_cache(entries: dict[str, Any]) -> bool:
    """Write atomically (a reader never sees half a file); False if it cannot be written."""
    text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True)
    try:
        atomic_write(cache_path(), (text + "\n").encode("utf-8"))
    except OSError:
        return False
    return True


__all__ = [
    "CACHE_FILE",
    "Choice",
    "cache_dir",
    "cache_key",
    "cache_path",
    "choose_batch_size",
    "compile_model",
    "plan_run",
    "keep_freed_memory",
    "pick",
    "probe",
]
