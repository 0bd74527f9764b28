"""The explain pipeline: decode → engine → render → write, with decoding and writing in
threads beside the model so that it never waits on the disk."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import platform
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import engine, interrupt, outputs, render, tuning
from .images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    InputImage,
    discover,
    load_image,
    quiet_pillow_bomb_warnings,
)
from .models import LoadedModel, ModelError, load_model
from .names import shown
from .report import ImageResult, Manifest, MapResult, Report, read_manifest


class UsageError(Exception):
    """Bad options or set-up: nothing can be done; exit 2 with this one-line message."""


@dataclass
class ExplainOptions:
    inputs: list[str]
    output: Path = Path("smoothgrad_out")
    model: str = "efficientnet_lite0"
    weights: str | None = None
    method: str = "gradient"
    smoothing: str = "smoothgrad"
    noise: float = 15.0  # percent of (max − min) of each model-input tensor
    samples: int = 50
    seed: int = 0
    batch_size: int | None = None
    ig_steps: int = 32
    target: str | None = None
    top_k: int = 1
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False  # torch.compile the model (worth it for folders)
    percentile: float = render.DEFAULT_PERCENTILE
    cmap: str | None = None
    overlay: bool = False
    diverging: bool = False
    save_raw: bool = False
    skip_existing: bool = False
    fail_fast: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    patterns: list[str] | None = None
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))

    def validate(self) -> None:
        """Check every value before any work starts; raise ``UsageError``."""
        checks = [
            (self.samples >= 1, f"--samples must be >= 1, got {self.samples}"),
            (
                math.isfinite(self.noise) and self.noise >= 0,
                f"--noise must be a percentage >= 0, got {self.noise}",
            ),
            (self.batch_size is None or self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.ig_steps >= 1, f"--ig-steps must be >= 1, got {self.ig_steps}"),
            (self.top_k >= 1, f"--top-k must be >= 1, got {self.top_k}"),
            (
                not (self.target is not None and self.top_k > 1),
                "--target and --top-k are exclusive: one names the class, the other ranks them",
            ),
            (
                self.method in engine.BASE_METHODS,
                f"unknown --method {self.method!r}: use one of {', '.join(engine.BASE_METHODS)}",
            ),
            (
                self.smoothing in engine.SMOOTHINGS,
                f"unknown --smoothing {self.smoothing!r}: "
                f"use one of {', '.join(engine.SMOOTHINGS)}",
            ),
            (self.workers >= 1, "--workers must be >= 1"),
            (
                self.precision in engine.PRECISIONS,
                f"unknown --precision {self.precision!r}: "
                f"use one of {', '.join(engine.PRECISIONS)}",
            ),
            (self.max_pixels is None or self.max_pixels >= 1, "--max-pixels must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        try:
            render.check_percentile(self.percentile)
            if self.cmap is not None:
                render.check_cmap(self.cmap)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def parameters(self) -> dict[str, Any]:
        """What determines a map, for the manifest and JSON."""
        keys = (
            "model",
            "weights",
            "method",
            "smoothing",
            "noise",
            "samples",
            "seed",
            "ig_steps",
            "precision",
            "percentile",
        )
        values = {k: v for k, v in asdict(self).items() if k in keys}
        if self.method != "integrated-gradients":
            values.pop("ig_steps")
        return values


def output_names(relative: Path, options: ExplainOptions) -> list[dict[str, Path]]:
    """The files one image produces, per rank (see ``outputs.output_names``)."""
    return outputs.output_names(
        relative, options.output, options.top_k, options.overlay, options.save_raw
    )


def build_base_method(options: ExplainOptions, loaded: LoadedModel) -> engine.BaseMethod:
    if options.method == "integrated-gradients":
        return engine.IntegratedGradients(options.ig_steps, baseline=loaded.black_baseline())
    return engine.BASE_METHODS[options.method]()


def check_writable(folder: Path) -> None:
    """Fail now, not after an hour of compute, if outputs cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(
            f"{folder}: output folder cannot be written ({exc.strerror or exc})"
        ) from None


def check_inputs_outside(inputs: list[str], output: Path) -> None:
    """The output folder is never searched for images (its maps are no inputs), so an input
    inside it would silently give nothing: say so instead."""
    out = os.path.realpath(output)
    for spec in inputs:
        real = os.path.realpath(spec)
        if real == out or real.startswith(out.rstrip(os.sep) + os.sep):
            where = "is" if real == out else "is inside"
            raise UsageError(
                f"{shown(spec)} {where} the output folder {shown(output)}, which is never "
                "searched for images: give another --output"
            )


def _error_entry(path: str | os.PathLike, reason: str) -> dict[str, Any]:
    return {
        "input": os.fspath(path),
        "status": "error",
        "outputs": [],
        "class": None,
        "class_index": None,
        "probability": None,
        "maps": [],
        "error": reason,
    }


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("smoothgrad", "torch", "torchvision", "timm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class _Decoded:
    image: InputImage
    photo: Image.Image | None = None
    tensor: torch.Tensor | None = None
    error: ImageError | None = None


def run_explain(
    options: ExplainOptions,
    report: Report,
    progress_factory: Callable[[int], Any] | None = None,
) -> int:
    """Explain every input; return the exit code. Usage problems raise ``UsageError``.

    Ctrl-C or ``kill`` (SIGTERM) during the work: the writes in flight finish, the exit code
    is 130 and the report has what was done; before the work starts, ``KeyboardInterrupt``.
    """
    with interrupt.stop_once(), _warnings_to(report):
        return _run_explain(options, report, progress_factory)


def _run_explain(
    options: ExplainOptions,
    report: Report,
    progress_factory: Callable[[int], Any] | None,
) -> int:
    options.validate()
    try:
        device = engine.resolve_device(options.device)
        precision = engine.resolve_precision(options.precision, device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # Inputs and the output folder are checked before the model loads: a typo or a folder
    # that cannot be written is reported now, not after a download or an hour of compute.
    check_inputs_outside(options.inputs, options.output)
    images, missing = discover(options.inputs, options.patterns, exclude=[options.output])
    if not images and not missing:
        raise UsageError("no input images given")
    check_writable(options.output)
    quiet_pillow_bomb_warnings()
    try:
        loaded = load_model(options.model, options.weights)
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    targets_fixed = None
    if options.target is not None:
        try:
            targets_fixed = loaded.class_index(options.target)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if options.top_k > len(loaded.categories):
        raise UsageError(
            f"--top-k {options.top_k} exceeds the model's {len(loaded.categories)} classes"
        )
    base = build_base_method(options, loaded)
    input_shape = (3, loaded.crop_size, loaded.crop_size)
    model = engine.prepare_model(loaded.model, device, input_shape=input_shape)
    if isinstance(base, engine.GuidedBackprop):
        try:
            with base.hooks(model):
                pass
        except ValueError as exc:
            raise UsageError(f"{options.model}: {exc}") from None
    smoother = engine.SmoothGrad(
        base,
        smoothing=options.smoothing,
        noise_level=options.noise / 100.0,
        samples=options.samples,
        seed=options.seed,
        batch_size=options.batch_size,
        precision=precision,
    )

    common = {
        "parameters": {**options.parameters(), "precision": precision},
        "seed": options.seed,
        "model": loaded.name,
        "weights": loaded.weights,
        "device": str(device),
        "versions": package_versions(),
    }
    try:
        manifest = Manifest(options.output / "manifest.jsonl", common)
    except OSError as exc:
        raise UsageError(
            f"{shown(options.output / 'manifest.jsonl')}: cannot write the manifest "
            f"({exc.strerror or exc})"
        ) from None
    try:
        for item in missing:
            report.failed(item.path, item.reason)
            manifest.record(_error_entry(item.path, item.reason))
    except OSError as exc:
        report.failed(manifest.path, _manifest_failure(exc), exc)
        manifest.close()
        return report.exit_code
    if missing and options.fail_fast:
        manifest.close()
        return report.exit_code

    outputs.remove_stale_temporaries(
        path
        for image in images
        for files in output_names(image.relative, options)
        for path in files.values()
    )
    if options.skip_existing:
        images = _not_done(images, options, report, manifest)

    attribution_model = model
    try:
        if images:
            # The chunk size (cached, else a short probe) and --compile, before any image.
            smoother.batch_size, attribution_model = tuning.plan_run(
                model,
                device,
                input_shape,
                precision,
                batch_size=options.batch_size,
                compile=options.compile and not isinstance(base, engine.GuidedBackprop),
                model_name=loaded.name,
                say=lambda m: report.err.print(m, markup=False),
            )
    except KeyboardInterrupt:
        report.interrupted = True
        manifest.close()
        return report.exit_code
    pipeline = _Pipeline(options, report, manifest, loaded, model, smoother, targets_fixed)
    pipeline.attribution_model = attribution_model
    try:
        pipeline.run(images, progress_factory)
    except _Abort:
        pass  # already reported; the failures make the exit code 1
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        manifest.close()
    return report.exit_code


def _not_done(
    images: list[InputImage], options: ExplainOptions, report: Report, manifest: Manifest
) -> list[InputImage]:
    """``--skip-existing``: the images still to do. Done means all outputs on disk *and* a
    manifest line saying so: a run killed between its last write and its manifest line
    (``kill -9``) left outputs the manifest does not know, and those images are done again,
    which rewrites the same maps and adds their line."""
    relatives, inputs = outputs.recorded_done(read_manifest(manifest.path))
    todo = []
    for image in images:
        names = output_names(image.relative, options)
        on_disk = all(outputs.exists(p) for files in names for p in files.values())
        recorded = image.relative.as_posix() in relatives or os.fspath(image.path) in inputs
        if on_disk and recorded:
            report.done(ImageResult(os.fspath(image.path), skipped=True))
        else:
            todo.append(image)
    return todo


@contextlib.contextmanager
def _warnings_to(report: Report) -> Iterator[None]:
    """Library warnings (Pillow, torch) become one ``warning:`` line each through the report,
    not Python's two-line format with a source line; each distinct one once."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = f"{category.__name__}: {message}"
        if text not in seen:
            seen.add(text)
            report.warn(text)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


class _Pipeline:
    def __init__(
        self,
        options: ExplainOptions,
        report: Report,
        manifest: Manifest,
        loaded: LoadedModel,
        model: torch.nn.Module,
        smoother: engine.SmoothGrad,
        fixed_target: int | None,
    ) -> None:
        self.options = options
        self.report = report
        self.manifest = manifest
        self.loaded = loaded
        self.model = model
        self.attribution_model = model  # compiled with --compile
        self.smoother = smoother
        self.fixed_target = fixed_target
        self.oom_said = False

    def run(self, images: list[InputImage], progress_factory) -> None:
        if not images:
            return
        options = self.options
        chunk = self.smoother.batch_size or engine.default_batch_size(
            engine._model_device(self.model)
        )
        rows = self.smoother.rows_per_input * options.top_k
        # Enough images per engine call to fill a chunk; one on CPUs, several on GPUs.
        per_step = max(1, min(64, math.ceil(chunk / rows)))
        progress = progress_factory(len(images)) if progress_factory else None
        decoder = ThreadPoolExecutor(options.workers, thread_name_prefix="decode")
        writer = ThreadPoolExecutor(options.workers, thread_name_prefix="write")
        pending_writes: deque[tuple[Future, _Decoded, list[MapResult]]] = deque()
        try:
            with progress if progress is not None else _nullcontext():
                for group in _batched(self._decoded(images, decoder, per_step), per_step):
                    good = []
                    for item in group:
                        if item.error is not None:
                            self._fail(item.image.path, str(item.error), item.error)
                            if progress is not None:
                                progress.advance(1)
                        else:
                            good.append(item)
                    if good:
                        self._explain(good, writer, pending_writes, progress)
                    self._collect(pending_writes, block=False)
                    # Writers behind the model: wait, rather than hold every map in memory.
                    self._collect(pending_writes, block=True, keep=4 * options.workers)
                self._collect(pending_writes, block=True)
        finally:
            decoder.shutdown(wait=False, cancel_futures=True)
            self._collect(pending_writes, block=True, quiet=True)
            writer.shutdown(wait=True)

    def _decoded(self, images, decoder: ThreadPoolExecutor, per_step: int) -> Iterator[_Decoded]:
        ahead = max(2 * per_step, 2 * self.options.workers)
        queue: deque[Future] = deque()
        todo = iter(images)
        for image in todo:
            queue.append(decoder.submit(self._decode, image))
            if len(queue) >= ahead:
                break
        while queue:
            item = queue.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                queue.append(decoder.submit(self._decode, nxt))
            yield item

    def _decode(self, image: InputImage) -> _Decoded:
        try:
            photo = load_image(image.path, self.options.max_pixels)
            tensor = self.loaded.transform(photo)
            if not self.options.overlay:
                photo = None  # only overlays need the photo at its own size
            return _Decoded(image, photo, tensor)
        except ImageError as exc:
            return _Decoded(image, error=exc)
        except Exception as exc:  # a decoder bug must not end the run
            return _Decoded(image, error=ImageError(f"cannot decode image ({exc})"))

    def _explain(self, good: list[_Decoded], writer, pending_writes, progress) -> None:
        options = self.options
        x = torch.stack([item.tensor for item in good])
        probs = engine.predict(self.model, x, precision=self.smoother.precision).cpu()
        if self.fixed_target is not None:
            classes = [[self.fixed_target] for _ in good]
        else:
            classes = probs.topk(options.top_k, dim=1).indices.tolist()
        # One item per (image, class): each gets its own map, with the same noise.
        item_x = x.repeat_interleave(len(classes[0]), dim=0)
        item_t = torch.tensor([c for cs in classes for c in cs])
        per_image_rows = self.smoother.rows_per_input * len(classes[0])

        def advance(n_rows: int) -> None:
            if progress is not None:
                progress.advance(n_rows / per_image_rows)

        try:
            maps = (
                self.smoother.attribute(
                    self.attribution_model, item_x, item_t, progress=advance, on_oom=self._said_oom
                )
                .cpu()
                .numpy()
            )
        except torch.cuda.OutOfMemoryError as exc:
            # Even one noisy copy at a time does not fit: every image would fail the same way.
            reason = (
                "CUDA out of memory even one noisy copy at a time; stopping the run "
                "(try a smaller model or --device cpu)"
            )
            for item in good:
                self.report.failed(item.image.path, reason, exc)
                self._record(_error_entry(item.image.path, reason), fatal=False)
            raise _Abort from None
        k = len(classes[0])
        for i, item in enumerate(good):
            # A model or a gradient that overflows gives NaN: that is no map, and NaN is not
            # JSON either. The image fails; the others in its chunk are unaffected.
            if not torch.isfinite(probs[i]).all():
                self._fail(item.image.path, "the model's scores are not finite (NaN or inf)", None)
                continue
            if not np.isfinite(maps[i * k : (i + 1) * k]).all():
                self._fail(
                    item.image.path, "the map is not finite (NaN or inf in the gradient)", None
                )
                continue
            results = [
                MapResult(
                    rank=rank + 1,
                    class_index=int(c),
                    class_name=self.loaded.categories[c],
                    probability=float(probs[i, c]),
                    outputs={},
                )
                for rank, c in enumerate(classes[i])
            ]
            future = writer.submit(self._write, item, maps[i * k : (i + 1) * k], results)
            pending_writes.append((future, item, results))
            item.tensor = None

    def _said_oom(self, chunk: int) -> None:
        # Later engine calls start at the halved size instead of running out again.
        self.smoother.batch_size = chunk
        if not self.oom_said:
            self.oom_said = True
            self.report.warn(f"CUDA out of memory: chunk size halved to {chunk} and retried")

    def _write(self, item: _Decoded, maps: np.ndarray, results: list[MapResult]) -> None:
        options = self.options
        names = output_names(item.image.relative, options)
        box = self.loaded.crop_box(*item.photo.size) if item.photo is not None else None
        for attribution, files, result in zip(maps, names, results, strict=True):
            magnitude = render.magnitude_map(attribution, options.percentile)
            if options.diverging:
                picture = render.diverging(
                    render.signed_map(attribution, options.percentile),
                    options.cmap or render.DEFAULT_DIVERGING_CMAP,
                )
            elif options.cmap:
                picture = render.colorize(magnitude, options.cmap)
            else:
                picture = render.grayscale(magnitude)
            render.save_png(picture, files["map"])
            if "overlay" in files:
                render.save_png(
                    render.overlay(
                        item.photo, magnitude, box, options.cmap or render.DEFAULT_OVERLAY_CMAP
                    ),
                    files["overlay"],
                )
            if "raw" in files:
                render.save_npy(attribution, files["raw"])
            result.outputs = {kind: str(path) for kind, path in files.items()}

    def _collect(self, pending, *, block: bool, quiet: bool = False, keep: int = 0) -> None:
        """Report finished writes, oldest first; ``block``: wait until ``keep`` are left."""
        while len(pending) > keep and (block or pending[0][0].done()):
            future, item, results = pending.popleft()
            try:
                future.result()
            except OSError as exc:
                if quiet:
                    continue
                reason = f"cannot write output ({exc.strerror or exc})"
                if exc.errno in _FATAL_WRITE_ERRORS:
                    # Every later image would fail the same way: stop now, not in an hour.
                    reason = f"{reason}; stopping the run"
                    self.report.failed(item.image.path, reason, exc)
                    self._record(_error_entry(item.image.path, reason), fatal=False)
                    raise _Abort from None
                self._fail(item.image.path, reason, exc)
                continue
            except Exception as exc:
                if quiet:
                    continue
                self._fail(item.image.path, f"rendering failed ({exc})", exc)
                continue
            finally:
                item.photo = None
            result = ImageResult(os.fspath(item.image.path), results)
            self.report.done(result)
            top = results[0]
            self._record(
                {
                    "input": os.fspath(item.image.path),
                    "relative": item.image.relative.as_posix(),
                    "status": "ok",
                    "outputs": [path for m in results for path in m.outputs.values()],
                    "class": top.class_name,
                    "class_index": top.class_index,
                    "probability": top.probability,
                    "maps": [asdict(m) for m in results],
                    "error": None,
                },
                fatal=not quiet,
            )

    def _fail(self, path, reason: str, exc: BaseException | None) -> None:
        self.report.failed(path, reason, exc)
        self._record(_error_entry(path, reason))
        if self.options.fail_fast:
            raise _FailFast

    def _record(self, entry: dict[str, Any], fatal: bool = True) -> None:
        """Append to the manifest; a manifest that cannot be written stops the run."""
        try:
            self.manifest.record(entry)
        except OSError as exc:
            if not fatal:
                return
            self.report.failed(self.manifest.path, _manifest_failure(exc), exc)
            raise _Abort from None


def _manifest_failure(exc: OSError) -> str:
    return f"cannot write the manifest ({exc.strerror or exc}); stopping the run"


class _Abort(KeyboardInterrupt):
    """Stops the run like an interrupt (pending writes finish), but the exit code is 1."""


class _FailFast(_Abort):
    pass


_FATAL_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _batched(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
