"""Photos → maps with their classes and probabilities: the layer every command stands on.

    from smoothgrad_cli import Explainer, MapSettings
    explainer = Explainer.load(MapSettings(samples=50, noise=15))
    map = explainer.explain_file("sample_images/coffee.png").maps[0]   # (C, H, W) float32

``PreparedModel`` is a classifier loaded once and made ready for input gradients (frozen,
on its device, BatchNorm folded); ``Explainer`` adds one ``MapSettings`` to it: the base
method and its baseline, the target or top-k classes, and the engine's ``SmoothGrad``. Any
setting no map can be made with is refused when the explainer is made, as a
``SettingsError`` naming the setting, before any image is touched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from . import engine, tuning
from .engine.convergence import Convergence, WorkMeter, converged_attribute
from .images import ImageError, load_image
from .labels import LabelsError, read_labels
from .models import LoadedModel, ModelError, load_model
from .settings import Baseline, MapSettings, Method, SettingsError

Loader = Callable[[str, "str | None"], LoadedModel]


@dataclass
class PreparedModel:
    """A classifier loaded once and prepared as every command prepares it, so a map from
    ``explain --save-raw`` and one from ``check`` are the same map."""

    loaded: LoadedModel
    model: nn.Module
    device: torch.device

    @classmethod
    def load(
        cls,
        model: str,
        weights: str | None = None,
        device: str | torch.device = "auto",
        loader: Loader | None = None,
        labels: str | None = None,
    ) -> PreparedModel:
        """Raises ``SettingsError`` (key ``device``, ``model``, ``weights`` or ``labels``).
        ``loader`` replaces ``models.load_model`` (tests, or a model built in code);
        ``labels`` is a file of class names (``labels.read_labels``)."""
        try:
            resolved = device if isinstance(device, torch.device) else engine.resolve_device(device)
        except ValueError as exc:
            raise SettingsError("device", _literal(str(exc))) from None
        try:
            loaded = (loader or load_model)(model, weights)
        except ModelError as exc:
            key = "weights" if weights and "weights" in str(exc) else "model"
            raise SettingsError(key, _literal(str(exc))) from None
        if labels is not None:
            try:
                names = read_labels(labels, len(loaded.categories))
            except LabelsError as exc:
                raise SettingsError("labels", _literal(str(exc))) from None
            loaded = dataclasses.replace(loaded, categories=names)
        shape = loaded.input_shape
        return cls(
            loaded, engine.prepare_model(loaded.model, resolved, input_shape=shape), resolved
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.loaded.input_shape


@dataclass
class Explanation:
    """One image's maps, one per explained class, best first."""

    maps: np.ndarray  # (K, C, H, W) float32: the smoothed attribution of each class
    classes: list[int]
    probabilities: np.ndarray  # (classes,) float32: the softmax over every class
    categories: Sequence[str]
    #: integrated gradients: how complete each class's map is (``None`` for other methods)
    convergence: list[Convergence] | None = None

    @property
    def class_names(self) -> list[str]:
        return [self.categories[c] for c in self.classes]

    def rank(self, class_index: int) -> int:
        """1 for the model's top prediction, 2 for the next, …"""
        return int((self.probabilities > self.probabilities[class_index]).sum()) + 1

    @property
    def problem(self) -> str | None:
        """Why this is no map (a model or gradient that overflowed), or ``None``."""
        if not np.isfinite(self.probabilities).all():
            return "the model's scores are not finite (NaN or inf)"
        if not np.isfinite(self.maps).all():
            return "the map is not finite (NaN or inf in the gradient)"
        return None


class Explainer:
    def __init__(self, settings: MapSettings, prepared: PreparedModel) -> None:
        """Raises ``SettingsError`` for a setting this model cannot take."""
        self.settings = settings
        self.prepared = prepared
        loaded = prepared.loaded
        try:
            # auto: bf16 where the device has it natively and, on a CPU, where it is faster
            # for this model (timed once per machine and model, then cached)
            faster = tuning.precision_probe(
                prepared.model, prepared.device, prepared.input_shape, model_name=loaded.name
            )
            self.precision = engine.resolve_precision(
                settings.precision, prepared.device, faster=faster
            )
        except ValueError as exc:
            raise SettingsError("precision", _literal(str(exc))) from None
        self.target: int | None = None
        if settings.target is not None:
            try:
                self.target = loaded.class_index(str(settings.target))
            except ValueError as exc:
                raise SettingsError("target", _literal(str(exc))) from None
        if settings.top_k > len(loaded.categories):
            raise SettingsError(
                "top_k",
                f"{{option}} {settings.top_k} exceeds the model's {len(loaded.categories)} classes",
            )
        if settings.method == Method.INTEGRATED_GRADIENTS:
            # At its most nodes: converged_attribute refines up to them (--ig-tolerance).
            base = engine.IntegratedGradients(
                settings.ig_steps, baseline=_baseline(settings, loaded)
            )
        else:
            base = engine.BASE_METHODS[settings.method]()
        if isinstance(base, engine.GuidedBackprop):
            try:
                with base.hooks(prepared.model):
                    pass
            except ValueError as exc:  # activations it cannot guide (GELU, SiLU, …)
                raise SettingsError("method", _literal(f"{settings.model}: {exc}")) from None
        self.smoother = engine.SmoothGrad(
            base,
            smoothing=settings.smoothing,
            noise_level=settings.noise_level,
            samples=settings.samples,
            seed=settings.seed,
            batch_size=settings.batch_size,
            precision=self.precision,
        )
        #: what the maps are computed with: the prepared model, or its compiled form
        self.attribution_model: nn.Module = prepared.model
        #: times a run's engine calls against the cached chunk size (``plan_chunks``)
        self.chunk_meter = tuning.NO_METER

    @classmethod
    def load(
        cls,
        settings: MapSettings,
        device: str | torch.device = "auto",
        loader: Loader | None = None,
    ) -> Explainer:
        """Load and prepare ``settings.model``, then build the explainer on it."""
        prepared = PreparedModel.load(
            settings.model, settings.weights, device, loader, labels=settings.labels
        )
        return cls(settings, prepared)

    def with_settings(self, settings: MapSettings) -> Explainer:
        """Another explainer on the same prepared model (its model and weights must match)."""
        if settings.model_key != self.settings.model_key:
            raise ValueError(f"{settings.model_key} is not the model of this explainer")
        return Explainer(settings, self.prepared)

    # --- what commands read --------------------------------------------------------------

    @property
    def loaded(self) -> LoadedModel:
        return self.prepared.loaded

    @property
    def model(self) -> nn.Module:
        return self.prepared.model

    @property
    def device(self) -> torch.device:
        return self.prepared.device

    @property
    def categories(self) -> list[str]:
        return self.prepared.loaded.categories

    @property
    def classes_per_image(self) -> int:
        return 1 if self.target is not None else self.settings.top_k

    @property
    def rows_per_image(self) -> int:
        """Forward/backward rows one image costs: noisy copies × explained classes."""
        return self.smoother.rows_per_input * self.classes_per_image

    @property
    def chunk_size(self) -> int:
        return self.smoother.batch_size or engine.default_batch_size(self.device)

    @property
    def passes_per_image(self) -> int:
        """Forward+backward passes one image costs: its rows × the base method's passes per
        row (integrated gradients: up to ``ig_steps``)."""
        return self.rows_per_image * self.smoother.base.passes_per_input

    def plan_chunks(
        self, *, compile: bool, say: Callable[[str], None], passes: int | None = None
    ) -> None:
        """Settle the chunk size (cached, else a short timed probe; ``batch_size`` wins) and
        compile the model if asked, before the first image of a long run. ``passes``: the
        forward+backward passes the run will make, if known (a run too small for a probe
        gets none; ``passes_per_image`` helps count them).

        ``chunk_meter.wrap(progress)`` then times each engine call for the chunk-size cache
        (``tuning.NO_METER``, a no-op, when there is nothing to check)."""
        plan = tuning.plan_run(
            self.model,
            self.device,
            self.prepared.input_shape,
            self.precision,
            batch_size=self.settings.batch_size,
            compile=compile and not isinstance(self.smoother.base, engine.GuidedBackprop),
            model_name=self.loaded.name,
            say=say,
            passes_per_row=self.smoother.base.passes_per_input,
            run_rows=passes,
        )
        self.smoother.batch_size, self.attribution_model = plan.batch_size, plan.model
        # Refined integrated gradients cost a row as many passes as its level: the meter is
        # told the passes, the progress bar each image's share (``convergence.WorkMeter``).
        self.chunk_meter = WorkMeter(plan.meter) if self._integrated else plan.meter

    # --- photos → maps -------------------------------------------------------------------

    def transform(self, photo: Image.Image) -> torch.Tensor:
        """An RGB photo → the model's input ``(C, H, W)``, its own preprocessing."""
        return self.loaded.transform(photo)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, classes)`` on the CPU, from the clean forward pass."""
        return engine.predict(self.model, x, precision=self.precision).cpu()

    def classes(self, probabilities: torch.Tensor) -> list[list[int]]:
        """The classes to explain for each image: the target, or the top-k predictions."""
        if self.target is not None:
            return [[self.target] for _ in range(probabilities.shape[0])]
        return probabilities.topk(self.settings.top_k, dim=1).indices.tolist()

    @property
    def _integrated(self) -> bool:
        return isinstance(self.smoother.base, engine.IntegratedGradients)

    def rows(
        self, x: torch.Tensor, classes: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's inputs for images ``x`` and their ``classes``: each image repeated
        once per class (the same noise for each), and the class of each row."""
        k = len(classes[0])
        return x.repeat_interleave(k, dim=0), torch.tensor([c for cs in classes for c in cs])

    def attributions(
        self,
        x: torch.Tensor,
        classes: Sequence[Sequence[int]],
        *,
        model: nn.Module | None = None,
        progress: Callable[[int], None] | None = None,
        on_oom: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, list[list[Convergence]] | None]:
        """Maps ``(N, K, C, H, W)``: for each image, one per class in ``classes[i]`` (the
        same noise for each), and for integrated gradients each map's ``Convergence`` (per
        image, per class), refined to ``settings.ig_tolerance``. ``model`` replaces the
        explainer's own (a randomised copy for sanity checks); ``progress`` and ``on_oom``
        go to the engine."""
        k = len(classes[0])
        rows, targets = self.rows(x, classes)
        model = model if model is not None else self.attribution_model
        convergence = None
        if self._integrated:
            maps, flat = converged_attribute(
                self.smoother, model, rows, targets, tolerance=self.settings.ig_tolerance,
                progress=progress, on_oom=on_oom,
            )  # fmt: skip
            convergence = [flat[i * k : (i + 1) * k] for i in range(x.shape[0])]
        else:
            maps = self.smoother.attribute(model, rows, targets, progress=progress, on_oom=on_oom)
        maps = maps.cpu().numpy()
        return maps.reshape(x.shape[0], k, *maps.shape[1:]), convergence

    def explain(
        self,
        x: torch.Tensor,
        *,
        progress: Callable[[int], None] | None = None,
        on_oom: Callable[[int], None] | None = None,
    ) -> list[Explanation]:
        """Model inputs ``(N, C, H, W)`` → one ``Explanation`` each."""
        probabilities = self.predict(x)
        classes = self.classes(probabilities)
        maps, convergence = self.attributions(x, classes, progress=progress, on_oom=on_oom)
        return [
            Explanation(
                maps[i],
                classes[i],
                probabilities[i].numpy(),
                self.categories,
                convergence[i] if convergence is not None else None,
            )
            for i in range(x.shape[0])
        ]

    def explain_photos(self, photos: Sequence[Image.Image]) -> list[Explanation]:
        return self.explain(torch.stack([self.transform(photo) for photo in photos]))

    def explain_file(self, path: str | PathLike) -> Explanation:
        """An image file, or an ``http(s)://`` URL given as a string → its explanation;
        ``images.ImageError`` if it cannot be used."""
        return self.explain_photos([load_image(path)])[0]


#: the uniform baseline's draw: a stream of the seed that no noisy copy's index reaches
_UNIFORM_STREAM = 2**40
#: the blurred baseline's Gaussian σ, as a share of the input's side (Sturmfels et al. 2020
#: blur until no edge is left; 5 % of 224 pixels is σ ≈ 11)
BLUR_SIGMA = 0.05


def _baseline(settings: MapSettings, loaded: LoadedModel) -> torch.Tensor | Callable:
    """Integrated gradients' x′ in the model's input space (``settings.baseline``)."""
    _, height, width = loaded.input_shape
    if settings.baseline == Baseline.BLACK:
        return loaded.black_baseline()
    if settings.baseline == Baseline.WHITE:
        return loaded.to_input_space(torch.ones(3, 1, 1))
    if settings.baseline == Baseline.UNIFORM:
        # Drawn from the seed alone, on the CPU: the same x′ for every image and device.
        generator = torch.Generator().manual_seed(
            engine.sample_seed(settings.seed, _UNIFORM_STREAM)
        )
        return loaded.to_input_space(torch.rand(3, height, width, generator=generator))
    if settings.baseline == Baseline.BLUR:
        sigma = BLUR_SIGMA * min(height, width)
        kernel = 2 * math.ceil(3 * sigma) + 1

        def blurred(x: torch.Tensor) -> torch.Tensor:
            # Blurring the normalised input is blurring the photo: normalising is affine.
            return gaussian_blur(x, [kernel, kernel], [sigma, sigma])

        return blurred
    try:
        photo = load_image(Path(settings.baseline))
    except ImageError as exc:
        raise SettingsError(
            "baseline",
            _literal(
                f"{settings.baseline}: not black, white, blur or uniform, and not an image "
                f"that can be used ({exc})"
            ),
        ) from None
    return loaded.transform(photo)


def _literal(text: str) -> str:
    """A message used as a ``SettingsError`` template, its braces kept as they are."""
    return text.replace("{", "{{").replace("}", "}}")


__all__ = ["Explainer", "Explanation", "PreparedModel"]
