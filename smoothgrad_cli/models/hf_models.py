"""transformers image classifiers: ``hf:./my-vit`` (a folder saved with ``save_pretrained``,
the model and its image processor) or ``hf:org/name`` (a hub repository, from the local
Hugging Face cache; downloaded when absent and allowed).

The network is built by ``AutoModelForImageClassification``'s class for the config, from the
config alone; its weights are read by the one safe loader and handed over as a state dict, so
transformers never opens a weights file, and no code from a folder (``trust_remote_code``)
ever runs. The model is wrapped to return its logits, ``(N, classes)``, as the engine takes
scores; class names are the config's ``id2label``; preprocessing is the image processor's,
reproduced as torch transforms (``hf_processors``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..model_names import HF
from ..names import one_line
from . import hub
from .base import LoadedModel, ModelError, ModelInfo, check_scores, first_line, numbered_classes
from .checkpoints import misfit, read_state_dict
from .hf_processors import preprocess_of

PREFIX = HF  # the prefix of its --model names
EXTRA = "pip install 'smoothgrad[hf]'"
#: a hub repository id, with an optional revision: org/name[@rev]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
#: what a download of a repository fetches: the configs and the weights, never code
_CONFIGS = ["config.json", "preprocessor_config.json"]
_SAFETENSORS = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
_PICKLES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class Logits(nn.Module):
    """A transformers classifier whose forward takes the input tensor and returns the
    logits: the engine and ``predict`` take ``(N, classes)`` scores, not an output object."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=x)
        logits = getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"{type(self.model).__name__} returned no logits")
        return logits


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise ModelError(f"hf: models need the transformers package: {EXTRA}") from None
    return transformers


def load(name: str, weights: str | None, is_file: bool) -> LoadedModel:
    transformers = require_transformers()
    if weights is not None and not is_file:
        raise ModelError(f"{name}: --weights takes a local state-dict file for hf: models")
    folder, label = _folder(name.removeprefix(PREFIX))
    where = str(folder)
    with _quiet(transformers):
        config = _saved(
            transformers.AutoConfig,
            folder,
            "config.json",
            "not a saved transformers model (no config.json; save one with "
            "model.save_pretrained(FOLDER) and its image processor beside it)",
        )
        cls = _model_class(transformers, config, where)
        # the processor before the weights: a folder without one fails before gigabytes
        processor = _saved(
            transformers.AutoImageProcessor,
            folder,
            "preprocessor_config.json",
            "no preprocessor_config.json: save the image processor beside the model "
            "(processor.save_pretrained(FOLDER)) so its preprocessing is known",
        )
        transform = preprocess_of(processor, where)
        if weights is not None:
            state, where, label = read_state_dict(weights), weights, str(Path(weights))
        else:
            state = folder_state(folder)
        model, info = cls.from_pretrained(
            None,
            config=config,
            state_dict=state,
            dtype=torch.float32,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below, in one line, not raised
        )
    missing, mismatched = sorted(info["missing_keys"]), info["mismatched_keys"]
    if missing or mismatched:
        # Keys the checkpoint has and the model does not are tolerated alone (hub files carry
        # pooler weights a classifier drops); a missing or resized one would be random.
        shapes = [_mismatch(entry) for entry in mismatched]
        unexpected = sorted(info["unexpected_keys"])
        raise ModelError(f"{where}: {misfit(cls.__name__, missing, unexpected, shapes)}")
    classes = int(config.num_labels)
    wrapped = Logits(model.eval()).eval()
    check_scores(wrapped, (3, *transform.size), classes, name)
    return LoadedModel(name, label, wrapped, transform, categories(config, classes))


def _folder(spec: str) -> tuple[Path, str]:
    """The model's folder and the label of its weights: a local folder, else a cached (or
    downloaded) hub repository."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, str(path)
    if path.exists():
        raise ModelError(f"{spec}: a file, not a folder saved with save_pretrained")
    if not _REPO_ID.fullmatch(spec) or spec.startswith((".", "/", "~")):
        raise ModelError(f"{PREFIX}{spec}: no such folder, and not a hub repository (org/name)")
    repo, revision = hub.split_revision(spec)
    folder = hub.cached_snapshot(repo, revision)
    if folder is None and hub.offline():
        raise ModelError(f"{PREFIX}{spec}: no such folder, and {repo} is not in {hub.where()}")
    if folder is None:
        folder = _download(repo, revision)
    return folder, f"{repo}@{folder.name[:12]}"


def _download(repo: str, revision: str | None) -> Path:
    """Configs and safetensors weights; a repository with none gets its pytorch_model.bin
    files (still read with weights_only=True)."""
    try:
        folder = hub.download_snapshot(repo, revision, _CONFIGS + _SAFETENSORS)
        if not any(folder.glob("model*.safetensors")):
            folder = hub.download_snapshot(repo, revision, _PICKLES)
    except Exception as exc:  # no network, a gated or missing repository
        raise ModelError(
            f"{PREFIX}{repo}: not a folder here, not cached and could not be downloaded "
            f"({type(exc).__name__}: {first_line(exc)[:160]}); it belongs in {hub.where()}"
        ) from exc
    return folder


def _saved(auto, folder: Path, file: str, missing: str):
    """``auto.from_pretrained(folder)`` for the ``file`` it reads (a config, an image
    processor's config); ``ModelError`` saying ``missing`` when there is none."""
    if not (folder / file).is_file():
        raise ModelError(f"{folder}: {missing}")
    try:
        return auto.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # an unknown model_type, custom code, broken JSON
        raise ModelError(
            f"{folder}: {file} cannot be used ({type(exc).__name__}: "
            f"{first_line(exc)[:200]}); code from a folder is never run"
        ) from exc


def _model_class(transformers, config, where: str) -> type:
    """The image-classification class ``AutoModelForImageClassification`` would build for
    ``config`` (the one its ``architectures`` names, where a type has several)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as CLASSIFIERS,
    )

    names = CLASSIFIERS.get(config.model_type)
    architectures = list(getattr(config, "architectures", None) or [])
    saved = architectures[0] if architectures else config.model_type
    if names is None:
        raise ModelError(
            f"{where}: a saved {saved}, not an image classifier "
            "(AutoModelForImageClassification has no class for it)"
        )
    names = (names,) if isinstance(names, str) else tuple(names)
    if architectures and not set(architectures) & set(names):
        raise ModelError(
            f"{where}: a saved {saved}, not an image classifier ({' or '.join(names)}): "
            "a backbone without its classification head?"
        )
    chosen = next((a for a in architectures if a in names), names[0])
    return getattr(transformers, chosen)


def folder_state(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a saved model: one file, or the shards its index names."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = hub.read_json(index, "weights index").get("weight_map", {})
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(shards.values())):
                state.update(read_state_dict(folder / shard))
            return state
    for weights in _WEIGHTS:
        if (folder / weights).is_file():
            return read_state_dict(folder / weights)
    raise ModelError(f"{folder}: no weights ({' or '.join(_WEIGHTS)}) in the folder")


def _mismatch(entry) -> str:
    key, *shapes = entry
    shown = [
        ("×".join(str(n) for n in s) if isinstance(s, (tuple, torch.Size)) else str(s))
        for s in shapes
    ]
    return f"{key}: {' in the file, '.join(shown)} in the model" if len(shown) == 2 else key


def categories(config, classes: int) -> list[str]:
    """``id2label``'s names, on one line each; transformers' placeholders (``LABEL_3``) and
    a table of another size give ``class 0 … class K−1``."""
    labels = getattr(config, "id2label", None) or {}
    names = [labels.get(i, labels.get(str(i))) for i in range(classes)]
    if any(not isinstance(n, str) or not n.strip() for n in names):
        return numbered_classes(classes)
    if all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return numbered_classes(classes)
    return [one_line(n.strip()) for n in names]


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """No progress bars or load reports on stderr while loading: the command's output is
    its own. The caller's logging settings come back afterwards."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def infos(pattern: str) -> list[ModelInfo]:
    """``smoothgrad models hf:[PATTERN]``: the image classifiers in the local hub cache, by
    their config alone (nothing is imported or built)."""
    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    rows = []
    for repo, snapshot in hub.cached_repos():
        if not fnmatch.fnmatch(repo, glob) or not (snapshot / "config.json").is_file():
            continue
        try:
            config = hub.read_json(snapshot / "config.json", "config")
        except ModelError:
            continue
        architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
        classifier = next((a for a in architectures if "ForImageClassification" in a), None)
        if classifier is None:
            continue
        classes = len(config.get("id2label") or {}) or config.get("num_labels", "?")
        rows.append(
            ModelInfo(
                f"{PREFIX}{repo}",
                snapshot.name[:12],
                True,
                f"cached: {classifier}, {classes} classes",
            )
        )
    return rows
