"""``smoothgrad predict``: the model's top-k classes for each image, no maps, for checking a
model before explaining it. The smallest command: its own logic around the explainer."""

from __future__ import annotations

import torch

from .errors import UsageError
from .explainer import Explainer
from .images import ImageError, discover, load_image, quiet_pillow_bomb_warnings
from .report import ImageResult, MapResult, Report
from .settings import MapSettings, SettingsError

#: images per forward pass: the clean forward is cheap, so this only bounds memory
BATCH = 32


def run_predict(inputs: list[str], settings: MapSettings, device: str, report: Report) -> int:
    """Classify every input; return the exit code. ``UsageError`` if nothing can be done."""
    images, missing = discover(inputs)
    if not images and not missing:
        raise UsageError("no input images given")
    quiet_pillow_bomb_warnings()
    try:
        explainer = Explainer.load(settings, device)
    except SettingsError as exc:
        raise UsageError(exc.command_line_message()) from None
    for item in missing:
        report.failed(item.path, item.reason)
    for start in range(0, len(images), BATCH):
        good, tensors = [], []
        for image in images[start : start + BATCH]:
            try:
                # a URL is downloaded here, when its batch comes up, not all before the first
                tensors.append(explainer.transform(load_image(image)))
                good.append(image)
            except ImageError as exc:
                report.failed(image.path, str(exc))
        if not good:
            continue
        probabilities = explainer.predict(torch.stack(tensors))
        for image, p, classes in zip(
            good, probabilities, explainer.classes(probabilities), strict=True
        ):
            if not torch.isfinite(p).all():
                report.failed(image.path, "the model's scores are not finite (NaN or inf)")
                continue
            predictions = [
                MapResult(rank, c, explainer.categories[c], float(p[c]), {})
                for rank, c in enumerate(classes, start=1)
            ]
            report.done(ImageResult(str(image.path), predictions))
    return report.exit_code
