"""The second step of an ``explain`` run: decode → explainer → render → write, with decoding
and writing in threads beside the model so that it never waits on the disk."""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import render
from ..explainer import Explainer
from ..images import ImageError, InputImage, load_image
from ..manifest import Manifest, error_entry, ok_entry
from ..report import ImageResult, MapResult, Report, map_results
from .options import ExplainOptions

#: write errors after which every later image would fail the same way
FATAL_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class Abort(KeyboardInterrupt):
    """Stops the run like an interrupt (pending writes finish), but the exit code is 1."""


class FailFast(Abort):
    pass


def manifest_failure(exc: OSError) -> str:
    return f"cannot write the manifest ({exc.strerror or exc}); stopping the run"


@dataclass
class _Decoded:
    image: InputImage
    photo: Image.Image | None = None
    tensor: torch.Tensor | None = None
    error: ImageError | None = None


class Pipeline:
    def __init__(
        self, options: ExplainOptions, report: Report, manifest: Manifest, explainer: Explainer
    ) -> None:
        self.options = options
        self.report = report
        self.manifest = manifest
        self.explainer = explainer
        self.oom_said = False

    def run(self, images: list[InputImage], progress_factory) -> None:
        if not images:
            return
        options = self.options
        # Enough images per engine call to fill a chunk; one on CPUs, several on GPUs.
        per_step = max(
            1, min(64, math.ceil(self.explainer.chunk_size / self.explainer.rows_per_image))
        )
        progress = progress_factory(len(images)) if progress_factory else None
        decoder = ThreadPoolExecutor(options.workers, thread_name_prefix="decode")
        writer = ThreadPoolExecutor(options.workers, thread_name_prefix="write")
        pending_writes: deque[tuple[Future, _Decoded, list[MapResult]]] = deque()
        try:
            with progress if progress is not None else contextlib.nullcontext():
                for group in _batched(self._decoded(images, decoder, per_step), per_step):
                    good = []
                    for item in group:
                        if item.error is not None:
                            self.fail(item.image.path, str(item.error), item.error)
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
            # A URL is downloaded here, in a decode thread, as it comes up (``load_image``).
            photo = load_image(image, self.options.max_pixels)
            tensor = self.explainer.transform(photo)
            if not self.options.overlay:
                photo = None  # only overlays need the photo at its own size
            return _Decoded(image, photo, tensor)
        except ImageError as exc:
            return _Decoded(image, error=exc)
        except Exception as exc:  # a decoder bug must not end the run
            return _Decoded(image, error=ImageError(f"cannot decode image ({exc})"))

    def _explain(self, good: list[_Decoded], writer, pending_writes, progress) -> None:
        rows_per_image = self.explainer.rows_per_image

        def advance(n_rows: int) -> None:
            if progress is not None:
                progress.advance(n_rows / rows_per_image)

        try:
            explanations = self.explainer.explain(
                torch.stack([item.tensor for item in good]),
                # the chunk-size cache is checked against what the run achieves
                progress=self.explainer.chunk_meter.wrap(advance),
                on_oom=self.said_oom,
            )
        except torch.cuda.OutOfMemoryError as exc:
            # Even one noisy copy at a time does not fit: every image would fail the same way.
            reason = (
                "CUDA out of memory even one noisy copy at a time; stopping the run "
                "(try a smaller model or --device cpu)"
            )
            for item in good:
                self.report.failed(item.image.path, reason, exc)
                self._record(error_entry(item.image.path, reason), fatal=False)
            raise Abort from None
        for item, explanation in zip(good, explanations, strict=True):
            item.tensor = None
            # A model or a gradient that overflows gives NaN: that is no map, and NaN is not
            # JSON either. The image fails; the others in its chunk are unaffected.
            if explanation.problem is not None:
                self.fail(item.image.path, explanation.problem, None)
                continue
            results = map_results(explanation)
            future = writer.submit(self._write, item, explanation.maps, results)
            pending_writes.append((future, item, results))

    def said_oom(self, chunk: int) -> None:
        # Later engine calls start at the halved size instead of running out again.
        self.explainer.smoother.batch_size = chunk
        if not self.oom_said:
            self.oom_said = True
            self.report.warn(f"CUDA out of memory: chunk size halved to {chunk} and retried")

    def _write(self, item: _Decoded, maps: np.ndarray, results: list[MapResult]) -> None:
        options = self.options
        names = options.output_names(item.image.relative)
        loaded = self.explainer.loaded
        box = loaded.crop_box(*item.photo.size) if item.photo is not None else None
        for attribution, files, result in zip(maps, names, results, strict=True):
            shown = render.sign_map(attribution, options.sign, options.percentile)
            if options.sign == render.Sign.ALL:
                picture = render.diverging(shown, options.cmap or render.DEFAULT_DIVERGING_CMAP)
                # the overlay shows where the map is strong, of either sign
                magnitude = render.magnitude_map(attribution, options.percentile)
            else:
                magnitude = shown
                if options.cmap:
                    picture = render.colorize(shown, options.cmap)
                else:
                    picture = render.grayscale(shown)
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
            result.outputs = {kind: os.fspath(path) for kind, path in files.items()}

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
                if exc.errno in FATAL_WRITE_ERRORS:
                    # Every later image would fail the same way: stop now, not in an hour.
                    reason = f"{reason}; stopping the run"
                    self.report.failed(item.image.path, reason, exc)
                    self._record(error_entry(item.image.path, reason), fatal=False)
                    raise Abort from None
                self.fail(item.image.path, reason, exc)
                continue
            except Exception as exc:
                if quiet:
                    continue
                self.fail(item.image.path, f"rendering failed ({exc})", exc)
                continue
            finally:
                item.photo = None
            self.report.done(ImageResult(os.fspath(item.image.path), results))
            self._record(ok_entry(item.image.path, item.image.relative, results), fatal=not quiet)

    def fail(self, path, reason: str, exc: BaseException | None) -> None:
        self.report.failed(path, reason, exc)
        self._record(error_entry(path, reason))
        if self.options.fail_fast:
            raise FailFast

    def _record(self, entry: dict[str, Any], fatal: bool = True) -> None:
        """Append to the manifest; a manifest that cannot be written stops the run."""
        try:
            self.manifest.record(entry)
        except OSError as exc:
            if not fatal:
                return
            self.report.failed(self.manifest.path, manifest_failure(exc), exc)
            raise Abort from None


def _batched(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
