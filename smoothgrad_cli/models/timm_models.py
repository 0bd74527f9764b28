"""timm models by name: ``timm:convnext_tiny`` (its default pretrained tag) or
``timm:convnext_tiny.fb_in22k``, with weights from the local cache or ``--weights FILE``.

Preprocessing is the tag's pretrained config (input size, interpolation, crop_pct, crop mode,
mean/std) as ``timm.data.create_transform`` applies it at evaluation; class names are timm's
ImageNet metadata when the head has one of ImageNet's class counts.

timm 1.0 fetches weights with ``hf_hub_download`` into the Hugging Face cache (repository
``timm/ARCH.TAG``, ``model.safetensors`` preferred to ``pytorch_model.bin``) and, for the few
configs with only a URL, into the torch hub cache. The files are found there without the
network, downloaded only when absent and allowed, and read by the one safe loader; timm's own
loading, which may unpickle, is never called on a file.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from collections import Counter
from pathlib import Path

import torch

from ..errors import did_you_mean
from ..model_names import TIMM
from . import hub
from .base import LoadedModel, ModelError, ModelInfo, check_scores, numbered_classes
from .checkpoints import CACHE_REMEDY, checkpoint_path, fetch_checkpoint, fit_state, read_state_dict
from .checkpoints import num_classes as head_size
from .preprocess import Preprocess

PREFIX = TIMM  # the prefix of its --model names
#: the file timm asks the hub for, and the safe alternative it tries first
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def split_name(name: str) -> tuple[str, str]:
    """``timm:ARCH[.TAG]`` → (arch, tag); ``ModelError`` for an unknown architecture."""
    import timm
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(name.removeprefix(PREFIX))
    if not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models(), show=lambda n: f"{PREFIX}{n}")
        raise ModelError(
            f"unknown timm model {arch!r}{hint} (`smoothgrad models 'timm:PATTERN'` lists them)"
        )
    return arch, tag


def pretrained_cfg(arch: str, tag: str):
    """timm's ``PretrainedCfg`` of ``arch.tag`` (its default tag when ``tag`` is empty)."""
    import timm
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(f"{arch}.{tag}" if tag else arch, allow_unregistered=False)
    except RuntimeError:  # "Invalid pretrained tag"
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        choices = ", ".join(tags) if tags else "none: it has no pretrained weights"
        raise ModelError(
            f"unknown pretrained tag {tag!r} for {PREFIX}{arch}{did_you_mean(tag, tags)} "
            f"(its tags: {choices}), or pass a local file with --weights FILE"
        ) from None


def load(name: str, weights: str | None, is_file: bool) -> LoadedModel:
    import timm

    arch, tag = split_name(name)
    if weights is not None and not is_file and weights.upper() != "DEFAULT":
        if tag and tag != weights:
            raise ModelError(f"{name} names the tag {tag!r} and --weights another: give one")
        tag = weights  # --weights TAG is timm:ARCH.TAG
    cfg = pretrained_cfg(arch, tag)
    variant = f"{arch}.{cfg.tag}" if cfg.tag else arch
    if weights is not None and is_file:
        where, label = weights, str(Path(weights))
        state = read_state_dict(weights)
        classifiers = (cfg.classifier,) if isinstance(cfg.classifier, str) else cfg.classifier
        classes = head_size(state, cfg.num_classes, classifiers or ())
    else:
        classes = cfg.num_classes
    if not classes:
        raise ModelError(
            f"{PREFIX}{variant} has no classification head (num_classes 0: its output is "
            "features, not class scores); use a classifier's tag or --weights FILE with a head"
        )
    if weights is None or not is_file:
        file = _weights_file(cfg, variant)
        where, label = str(file), cfg.tag
        state = read_state_dict(file, remedy=f"; {CACHE_REMEDY}")
    model = timm.create_model(variant, pretrained=False, num_classes=classes)
    _fit(model, state, where, arch, variant)
    transform = preprocess(model.pretrained_cfg, variant)
    model.eval()
    check_scores(model, (3, *transform.size), classes, f"{PREFIX}{variant}")
    return LoadedModel(name, label, model, transform, categories(cfg, classes))


def _fit(model: torch.nn.Module, state: dict, where: str, arch: str, variant: str) -> None:
    """Load ``state`` as saved from timm; failing that, converted by the checkpoint filter of
    the architecture's module (``checkpoint_filter_fn``, which timm's own loader applies to
    the original layouts of some architectures), and loaded as strictly."""
    from timm.models import model_entrypoint

    try:
        fit_state(model, state, where, f"{PREFIX}{variant}")
        return
    except ModelError as direct:
        module = sys.modules.get(model_entrypoint(arch).__module__)
        convert = getattr(module, "checkpoint_filter_fn", None)
        if convert is None:
            raise
        try:
            converted = convert(dict(state), model)
        except Exception:  # the filter does not know this layout either
            raise direct from None
    fit_state(model, converted, where, f"{PREFIX}{variant}")


def _weights_file(cfg, variant: str) -> Path:
    """The cached file of a pretrained config, downloaded when absent and allowed."""
    if cfg.custom_load:
        raise ModelError(
            f"{PREFIX}{variant}: its weights are in a format timm converts with its own "
            "loader (custom_load), which smoothgrad does not run; pass a state dict saved "
            "from the timm model with --weights FILE"
        )
    if not cfg.hf_hub_id and not cfg.url:
        raise ModelError(
            f"{PREFIX}{variant} has no pretrained weights in timm: pass a state dict with "
            "--weights FILE"
        )
    found = cached_weights(cfg)
    if found is not None:
        return found
    if not cfg.hf_hub_id:  # a URL only: timm fetches it as torch.hub does (no hash in names)
        return fetch_checkpoint(cfg.url, f"{PREFIX}{variant}", cfg.tag, check_hash=False)
    repo, revision = hub.split_revision(cfg.hf_hub_id)
    names = _hub_names(cfg)
    if hub.offline():
        raise ModelError(
            f"weights of {PREFIX}{variant} are not cached: need {names[0]} of {repo} in "
            f"{hub.where()}, or pass a local state dict with --weights FILE"
        )
    try:
        for filename in names:  # safetensors first; a repository without it, the .bin
            found = hub.download_file(repo, filename, revision)
            if found is not None:
                return found
        problem = f"{repo} has none of {', '.join(names)}"
    except Exception as exc:  # no network, proxy, a repository that is gone
        problem = type(exc).__name__
    raise ModelError(
        f"weights of {PREFIX}{variant} are not cached and could not be downloaded "
        f"({problem}): need {names[0]} of {repo} in {hub.where()}, or pass a local state "
        "dict with --weights FILE"
    )


def _hub_names(cfg) -> list[str]:
    """The files timm would ask the hub for, safetensors first, as its loader does."""
    if not cfg.hf_hub_filename:
        return list(_HUB_FILES)
    name = cfg.hf_hub_filename
    stem = name.rsplit(".", 1)[0]
    safe = [] if name.endswith(".safetensors") else [f"{stem}.safetensors"]
    return [*safe, name]


def cached_weights(cfg) -> Path | None:
    """Where timm 1.0 finds a config's weights without the network: the hub cache, or the
    torch hub cache (URL-only configs, and files fetched by older timm versions)."""
    if cfg.hf_hub_id:
        repo, revision = hub.split_revision(cfg.hf_hub_id)
        for filename in _hub_names(cfg):
            found = hub.cached_file(repo, filename, revision)
            if found is not None:
                return found
    if cfg.url and checkpoint_path(cfg.url).is_file():
        return checkpoint_path(cfg.url)
    return None


def preprocess(cfg: dict, variant: str) -> Preprocess:
    """timm's evaluation transform (``transforms_imagenet_eval``) of a pretrained config."""
    from timm.data import resolve_data_config
    from timm.data.transforms import str_to_interp_mode

    data = resolve_data_config({}, pretrained_cfg=cfg)
    _, height, width = data["input_size"]
    crop_pct, mode = data["crop_pct"], data["crop_mode"]
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if mode == "squash":  # both sides to size / crop_pct, then the centred crop
        resize: int | tuple[int, int] = scale
    elif mode == "center" and scale[0] == scale[1]:  # the shorter side, as Resize(int)
        resize = scale[0]
    else:
        raise ModelError(
            f"{PREFIX}{variant}: its preprocessing (crop_mode {mode!r}, input "
            f"{height}×{width}) is not one smoothgrad reproduces (center or squash)"
        )
    return Preprocess(
        size=(height, width),
        resize=resize,
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        interpolation=str_to_interp_mode(data["interpolation"]),
    )


def categories(cfg, classes: int) -> list[str]:
    """The config's own label names, else timm's ImageNet metadata for ImageNet's class
    counts (1k, 12k, 21k, 22k), else ``class 0 … class K−1``."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    own = cfg.label_descriptions or cfg.label_names
    if own and len(own) == classes:
        return [str(n) for n in own]
    subset = infer_imagenet_subset({"num_classes": classes})
    if subset is None:
        return numbered_classes(classes)
    info = ImageNetInfo(subset)
    # The first lemma is the usual name ("tabby", not "tabby, tabby cat"); where two classes
    # share it (ImageNet-1k's two cranes and maillots), the synset tells them apart.
    first = [d.split(",")[0].strip() for d in info.label_descriptions()]
    shared = Counter(first)
    return [
        f"{n} ({synset})" if shared[n] > 1 else n
        for n, synset in zip(first, info.label_names(), strict=True)
    ]


def infos(pattern: str) -> list[ModelInfo]:
    """``smoothgrad models 'timm:PATTERN'``: one row per architecture (its default tag), or
    per tag when the pattern has a dot; offline when the weights are cached. No model is
    built: this reads timm's registry and the caches only."""
    import timm
    from timm.models import get_pretrained_cfg

    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    if "." in pattern:
        names = [n for n in timm.list_pretrained() if fnmatch.fnmatch(n, glob)]
    else:
        names = timm.list_models(glob)
    rows = []
    for name in names:
        cfg = get_pretrained_cfg(name)
        has_weights = bool(cfg.hf_hub_id or cfg.url) and cfg.tag != "untrained"
        cached = has_weights and cached_weights(cfg) is not None
        if not has_weights:
            note = "no pretrained weights: --weights FILE"
        elif not cfg.num_classes:
            note = "features only (no classifier head)"
        elif cfg.custom_load:
            note = "weights timm converts itself: --weights FILE"
        else:
            note = "cached" if cached else "download on first use"
        tag = cfg.tag if has_weights else "none"
        rows.append(ModelInfo(f"{PREFIX}{name}", tag, cached, note))
    return rows
