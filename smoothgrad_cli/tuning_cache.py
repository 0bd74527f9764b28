"""The chunk-size cache, and what real runs tell it.

One JSON file, ``chunk-sizes.json`` in the cache folder (``$SMOOTHGRAD_CACHE_DIR``, else
``$XDG_CACHE_HOME/smoothgrad``, else ``~/.cache/smoothgrad``), one entry per model/device/
input size/precision: the chosen chunk, the probe's median rate for every chunk it timed and
the rate of each round, when it ran, how many rounds it finished.

A probe is a few seconds on a machine that may be busy, so its answer is checked by the runs
that use it: a ``RunMeter`` times the run's own engine calls and, once it has seen enough,
compares the rate with the probe's for the same chunk. A run far slower, or far faster (the
probe then ran on a busier machine, and its ranking of sizes is suspect), marks the entry
stale and the next run probes again. ``SMOOTHGRAD_RETUNE=1`` re-probes at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_write

CACHE_FILE = "chunk-sizes.json"
#: 2: entries record each round's rates and are checked by runs; version 1's probes could be
#: cut short by a busy machine and cached anyway, so they are not trusted (probed once again)
CACHE_VERSION = 2
RETUNE_VARIABLE = "SMOOTHGRAD_RETUNE"

#: a run's rate below this share of the probe's, or above the second, contradicts the probe.
#: Wide on purpose: a run also builds noise, renders and writes beside the model, and other
#: base methods cost a little more than the probe's plain gradient.
SLOWER, FASTER = 0.5, 1.5
#: engine calls a run must time (after its first, which pays one-off costs) before judging
MIN_CALLS, MIN_SECONDS = 3, 2.0
#: re-probes in a row that runs may force: a gap that outlives them is not the machine's load
#: (the method, the pipeline) and re-probing every run would not close it
MAX_REPROBES = 2


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


def retune_requested() -> bool:
    """``SMOOTHGRAD_RETUNE`` set to anything but empty or ``0``: ignore the cached entry."""
    return os.environ.get(RETUNE_VARIABLE, "").strip() not in ("", "0")


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


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_entries() -> dict[str, Any]:
    """The cached entries; an absent, unreadable or malformed file counts as empty."""
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def write_entries(entries: dict[str, Any]) -> bool:
    """Write atomically (a reader never sees half a file); False if it cannot be written."""
    text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True)
    try:
        atomic_write(cache_path(), (text + "\n").encode("utf-8"))
    except OSError:
        return False
    return True


def store(key: str, entry: dict[str, Any]) -> bool:
    entries = read_entries()  # re-read: another run may have written meanwhile
    entries[key] = entry
    return write_entries(entries)


def valid_entry(entry: Any) -> dict[str, Any] | None:
    """``entry`` if it can be used as it is, else ``None`` (then the size is probed again)."""
    if not isinstance(entry, dict) or not valid_size(entry.get("batch_size")):
        return None
    rates = entry.get("rows_per_s")
    if not isinstance(rates, dict) or not isinstance(entry.get("probed_at"), str):
        return None
    try:
        parsed = {int(k): float(v) for k, v in rates.items()}
    except (TypeError, ValueError):
        return None
    if not all(valid_size(k) and v > 0 for k, v in parsed.items()):
        return None
    stale = entry.get("stale")
    if stale is not None and not isinstance(stale, str):
        return None
    reprobes = entry.get("reprobes", 0)
    reprobes = reprobes if isinstance(reprobes, int) and not isinstance(reprobes, bool) else 0
    return {**entry, "rows_per_s": parsed, "reprobes": max(0, reprobes)}


def valid_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class RunMeter:
    """Times a real run's engine calls and tells the cache, once, whether they agree with
    the probe behind its chunk size.

    The pipeline wraps each engine call's progress callback: ``progress=meter.wrap(advance)``.
    A call is timed from the wrap (just before the call) to its last chunk, so the time spent
    decoding and writing between calls does not count. The first call is left out (first-call
    costs, the noise bank); then the median over calls is the run's rate, in forward+backward
    passes per second, the probe's unit. A meter that has nothing to check (``--batch-size``,
    a probe that was not cached) is inactive: ``wrap`` hands back the callback unchanged.
    """

    clock: Callable[[], float] = staticmethod(time.perf_counter)

    def __init__(
        self,
        key: str | None = None,
        entry: dict[str, Any] | None = None,
        *,
        passes_per_row: int = 1,
        faster_counts: bool = True,
        say: Callable[[str], None] | None = None,
    ) -> None:
        entry = entry or {}
        self.key = key
        self.batch_size = entry.get("batch_size", 0)
        self.expected = float(entry.get("rows_per_s", {}).get(self.batch_size, 0.0))
        self.probed_at = entry.get("probed_at")
        self.reprobes = entry.get("reprobes", 0)
        self.passes_per_row = passes_per_row
        # a compiled model outruns the eager probe: being faster then proves nothing
        self.faster_counts = faster_counts
        self.say = say
        self.active = key is not None and self.expected > 0
        self.calls: list[tuple[float, float]] = []  # (passes per second, seconds) per call
        self._open: list[float] | None = None  # [start, rows, time of the last chunk]
        self.verdict: str | None = None  # "agrees", "kept" (past MAX_REPROBES), or the finding

    def wrap(self, progress: Callable[[int], None] | None) -> Callable[[int], None] | None:
        """The progress callback for the next engine call, timed. Safe to call always."""
        if not self.active:
            return progress
        self._close()
        if not self.active:  # that call was the last one needed: judged
            return progress
        call = self._open = [self.clock(), 0, 0.0]

        def metered(rows: int) -> None:
            call[1] += rows
            call[2] = self.clock()
            if progress is not None:
                progress(rows)

        return metered

    def _close(self) -> None:
        call, self._open = self._open, None
        if call is not None and call[1] > 0 and call[2] > call[0]:
            seconds = call[2] - call[0]
            self.calls.append((call[1] * self.passes_per_row / seconds, seconds))
        timed = self.calls[1:]
        if len(timed) >= MIN_CALLS and sum(s for _, s in timed) >= MIN_SECONDS:
            self._judge(statistics.median(rate for rate, _ in timed))

    def _judge(self, achieved: float) -> None:
        self.active = False
        ratio = achieved / self.expected
        contradicts = ratio < SLOWER or (ratio > FASTER and self.faster_counts)
        how = f"{1 / ratio:.1f}× slower" if ratio < 1 else f"{ratio:.1f}× faster"
        finding = (
            f"a run on {now_iso()[:10]} did {achieved:.1f} noisy copies/s at chunk "
            f"{self.batch_size}, {how} than its probe's {self.expected:.1f}"
        )
        # after MAX_REPROBES re-probes the gap is not the load: keep the entry, note the run
        stale = contradicts and self.reprobes < MAX_REPROBES
        self.verdict = finding if stale else "agrees" if not contradicts else "kept"
        record = {
            "at": now_iso(),
            "batch_size": self.batch_size,
            "rows_per_s": round(achieved, 3),
            "of_probe": round(ratio, 3),
        }
        entries = read_entries()
        entry = entries.get(self.key)
        if not isinstance(entry, dict) or entry.get("probed_at") != self.probed_at:
            return  # another run re-probed meanwhile: this run says nothing about that probe
        runs = entry.get("runs")
        entry["runs"] = [*(runs[-4:] if isinstance(runs, list) else []), record]  # the last 5
        if stale:
            entry["stale"] = finding
        elif not contradicts:
            entry["reprobes"] = 0  # the probe held up: later gaps may be load again
        if write_entries(entries) and stale and self.say is not None:
            self.say(f"chunk size {self.batch_size}: {finding}; the next run probes again")


#: the meter of a run with nothing to check
NO_METER = RunMeter()
