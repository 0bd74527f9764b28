"""What an ``explain`` run is asked to do: the settings that decide its maps, and the rest
(where outputs go, how they look, how the run behaves)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import outputs, render, shard
from ..errors import UsageError
from ..images import DEFAULT_MAX_PIXELS
from ..settings import MapSettings, SettingsError


def as_usage_error(error: SettingsError) -> UsageError:
    """A setting refused, worded with its command-line option."""
    return UsageError(error.command_line_message())


@dataclass
class ExplainOptions:
    inputs: list[str]
    settings: MapSettings = field(default_factory=MapSettings)
    output: Path = Path("smoothgrad_out")
    device: str = "auto"
    compile: bool = False  # torch.compile the model (worth it for folders)
    percentile: float = render.DEFAULT_PERCENTILE
    cmap: str | None = None
    overlay: bool = False
    overlay_blur: float | None = None  # σ in photo pixels; None: render.auto_overlay_blur
    overlay_legend: bool = True  # --no-overlay-legend: False
    sign: str = render.Sign.ABSOLUTE.value  # what the map shows (render.sign_map)
    save_raw: bool = False
    skip_existing: bool = False
    fail_fast: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    patterns: list[str] | None = None
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    shard: str | None = None  # --shard I/N or auto (shard.parse)
    files_from: str | None = None  # --files-from FILE or - (file_list.read_file_list)
    null: bool = False  # -0: the list is NUL-separated

    def validate(self) -> None:
        """Check the options the settings do not hold, before any work; ``UsageError``."""
        if self.sign not in render.SIGNS:
            raise UsageError(f"unknown --sign {self.sign!r}: use one of {', '.join(render.SIGNS)}")
        if self.workers < 1:
            raise UsageError("--workers must be >= 1")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError("--max-pixels must be >= 1")
        if self.null and self.files_from is None:
            raise UsageError("-0 says how --files-from separates names: give --files-from")
        try:
            render.check_overlay_blur(self.overlay_blur)
        except ValueError as exc:
            raise UsageError(f"--{exc}") from None
        if not self.overlay and (self.overlay_blur is not None or not self.overlay_legend):
            option = "--overlay-blur" if self.overlay_blur is not None else "--no-overlay-legend"
            raise UsageError(f"{option} is about the overlay: give --overlay")
        try:
            render.check_percentile(self.percentile)
            if self.cmap is not None:
                render.check_cmap(self.cmap)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def shard_of_job(self) -> tuple[shard.Shard | None, str | None]:
        """``--shard``: this process's shard (``None``: all images) and a warning to say."""
        if self.shard is None:
            return None, None
        try:
            return shard.parse(self.shard)
        except shard.ShardError as exc:
            raise UsageError(str(exc)) from None

    def output_names(self, relative: Path) -> list[dict[str, Path]]:
        """The files one image produces, per rank (see ``outputs.output_names``)."""
        return outputs.output_names(
            relative, self.output, self.settings.top_k, self.overlay, self.save_raw
        )

    def parameters(self, precision: str) -> dict:
        """What determines an image's files, for the manifest and ``--skip-existing``: the
        settings with the precision used, and how the map is shown (percentile, sign,
        colormap; with overlays, their blur and legend)."""
        values = {
            **self.settings.parameters(),
            "precision": precision,
            "percentile": self.percentile,
            "sign": self.sign,
            "cmap": self.cmap,
        }
        if self.overlay:
            values |= {"overlay_blur": self.overlay_blur, "overlay_legend": self.overlay_legend}
        return values


#: what an entry made before these were recorded was made with (no sign, colormap, overlay
#: blur or legend options existed then), so that such a folder still resumes
RECORDED_LATER = {"sign": render.Sign.ABSOLUTE.value, "cmap": None}
OVERLAY_DEFAULTS = {"overlay_blur": None, "overlay_legend": True}


def comparable(recorded: dict, wanted: dict) -> dict:
    """A manifest entry's ``parameters`` put beside this run's ``wanted`` ones: keys recorded
    only by later versions take the value older ones used, and the overlay's keys count only
    when this run makes overlays (a run without them leaves the overlays there alone)."""
    values = {**RECORDED_LATER, **recorded}
    for key, default in OVERLAY_DEFAULTS.items():
        if key in wanted:
            values.setdefault(key, default)
        else:
            values.pop(key, None)
    return values
