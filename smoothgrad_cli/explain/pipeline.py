"""The second step of an ``explain`` run: decode → explainer → render → write, with decoding
and writing in threads beside the model so that it never waits on the disk."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import engine, render
from ..explainer import Explainer, Explanation
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
        self.explanations: _Explanations | None = None  # the run's, made by ``run``
        #: set when the run ends: downloads still in flight are not waited for (a run that
        #: --fail-fast ended would otherwise wait for them as the process exits)
        self.stop = threading.Event()

    def run(self, images: list[InputImage], progress_factory) -> None:
        if not images:
            return
        options = self.options
        # Enough images per engine call to fill a chunk; one on CPUs, several on GPUs. Rows
        # left over run with the next call's (``_Explanations``): every chunk is full.
        per_step = max(
            1, min(64, math.ceil(self.explainer.chunk_size / self.explainer.rows_per_image))
        )
        progress = progress_factory(len(images)) if progress_factory else None
        decoder = ThreadPoolExecutor(options.workers, thread_name_prefix="decode")
        writer = ThreadPoolExecutor(options.workers, thread_name_prefix="write")
        pending_writes: deque[tuple[Future, _Decoded, list[MapResult]]] = deque()
        rows_per_image = self.explainer.rows_per_image

        def advance(n_rows: float) -> None:
            if progress is not None:
                progress.advance(n_rows / rows_per_image)

        self.explanations = _Explanations(self.explainer, advance, self.said_oom)
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
                        self._explain(good, writer, pending_writes)
                    self._collect(pending_writes, block=False)
                    # Writers behind the model: wait, rather than hold every map in memory.
                    self._collect(pending_writes, block=True, keep=4 * options.workers)
                self._explain_rest(writer, pending_writes)
                self._collect(pending_writes, block=True)
        finally:
            self.stop.set()
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
            photo = load_image(image, self.options.max_pixels, self.stop)
            tensor = self.explainer.transform(photo)
            if not self.options.overlay:
                photo = None  # only overlays need the photo at its own size
            return _Decoded(image, photo, tensor)
        except ImageError as exc:
            return _Decoded(image, error=exc)
        except Exception as exc:  # a decoder bug must not end the run
            return _Decoded(image, error=ImageError(f"cannot decode image ({exc})"))

    def _explain(self, good: list[_Decoded], writer, pending_writes) -> None:
        """Feed decoded images to the explainer; write every map that finished."""
        self._write_finished(lambda: self.explanations.feed(good), good, writer, pending_writes)

    def _explain_rest(self, writer, pending_writes) -> None:
        """At the run's end: the maps of the images still in the engine's last chunk."""
        self._write_finished(self.explanations.finish, [], writer, pending_writes)

    def _write_finished(self, explain, good, writer, pending_writes) -> None:
        try:
            finished = explain()
        except torch.cuda.OutOfMemoryError as exc:
            # Even one noisy copy at a time does not fit: every image would fail the same way.
            reason = (
                "CUDA out of memory even one noisy copy at a time; stopping the run "
                "(try a smaller model or --device cpu)"
            )
            for item in self.explanations.drop(good):
                self.report.failed(item.image.path, reason, exc)
                self._record(error_entry(item.image.path, reason), fatal=False)
            raise Abort from None
        for item, explanation in finished:
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
        legend = None  # what the overlay's legend calls the map (--no-overlay-legend: none)
        if options.overlay_legend:
            settings = options.settings
            legend = render.legend_title(settings.method, settings.smoothing, options.sign)
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
                        item.photo,
                        magnitude,
                        box,
                        options.cmap or render.DEFAULT_OVERLAY_CMAP,
                        blur=options.overlay_blur,  # display only: never the map or the .npy
                        percentile=options.percentile,
                        legend=legend,
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


class _Explanations:
    """Images in as they are decoded, explanations out as their maps finish.

    Each call runs the explainer's clean forward pass for the classes to explain and feeds
    the noisy copies to the engine's stream (``SmoothGrad.stream``), which packs the rows of
    successive calls into full chunks: an image's maps may come out of a later call than the
    one that fed it, and ``finish`` returns the rest. This is ``Explainer.explain`` spread
    over calls. Integrated gradients, refined image by image to a tolerance level after
    level (``converged_attribute``), still go through ``Explainer.explain`` one call at a time.
    """

    def __init__(self, explainer: Explainer, advance, on_oom) -> None:
        self.explainer = explainer
        self.advance = advance
        self.on_oom = on_oom
        self.streamed = not isinstance(explainer.smoother.base, engine.IntegratedGradients)
        self.engine = (
            explainer.smoother.stream(explainer.attribution_model, on_oom=on_oom)
            if self.streamed
            else None
        )
        self.waiting: deque[tuple[_Decoded, list[int], np.ndarray]] = deque()
        self.maps: list[np.ndarray] = []  # finished maps of images with classes to come
        self.fed: list[_Decoded] = []  # the images of a call not streamed

    def feed(self, items: list[_Decoded]) -> list[tuple[_Decoded, Explanation]]:
        explainer = self.explainer
        x = torch.stack([item.tensor for item in items])
        # the chunk-size cache is checked against what the run achieves, call by call
        progress = explainer.chunk_meter.wrap(self.advance)
        if self.engine is None:
            self.fed = items
            explained = explainer.explain(x, progress=progress, on_oom=self.on_oom)
            self.fed = []
            return list(zip(items, explained, strict=True))
        self.engine.progress = progress
        probabilities = explainer.predict(x)
        classes = explainer.classes(probabilities)
        for item, chosen, p in zip(items, classes, probabilities, strict=True):
            self.waiting.append((item, chosen, p.numpy()))
        return self._finished(self.engine.feed(*explainer.rows(x, classes)))

    def finish(self) -> list[tuple[_Decoded, Explanation]]:
        if self.engine is None:
            return []
        self.engine.progress = self.explainer.chunk_meter.wrap(self.advance)
        return self._finished(self.engine.finish())

    def drop(self, also: list[_Decoded]) -> list[_Decoded]:
        """Every image fed and not finished, then those of ``also`` not among them."""
        items = [item for item, _, _ in self.waiting] + self.fed
        self.waiting.clear()
        self.maps.clear()
        self.fed = []
        return items + [item for item in also if all(item is not other for other in items)]

    def _finished(self, maps: torch.Tensor) -> list[tuple[_Decoded, Explanation]]:
        # An image's k classes are k inputs of the engine, which may finish in different
        # calls: an image comes out once all of its maps have.
        k = self.explainer.classes_per_image
        self.maps.extend(maps.cpu().numpy())
        out = []
        while len(self.maps) >= k:
            item, chosen, probabilities = self.waiting.popleft()
            image_maps = np.stack(self.maps[:k])
            del self.maps[:k]
            explanation = Explanation(image_maps, chosen, probabilities, self.explainer.categories)
            out.append((item, explanation))
        return out


def _batched(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
