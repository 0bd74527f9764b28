"""Checkpoint files: the one loader every file of weights goes through, fitting a state dict
to a network (or saying in one line how it does not fit), and the torch hub cache.

No checkpoint can run code: ``.safetensors`` files hold tensors and a JSON header only, and
everything else is read by ``torch.load(weights_only=True)``, whose unpickler refuses objects.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .base import ModelError, first_line, stderr_is_a_terminal

CACHE_REMEDY = "delete it to download it again, or pass a local state dict with --weights FILE"
#: names shown for each kind of difference in a state dict that does not fit
_SHOWN_KEYS = 3


def is_safetensors(file: Path) -> bool:
    """By its name, or by its content: an 8-byte little-endian header length, then the JSON
    header's ``{`` (a torch file starts with a zip or pickle signature instead)."""
    if file.suffix == ".safetensors":
        return True
    try:
        with file.open("rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] < file.stat().st_size


def read_state_dict(path: str | Path, remedy: str = "") -> dict[str, torch.Tensor]:
    """The one loader of every checkpoint: safetensors, or ``torch.load(weights_only=True)``;
    neither ever runs code from the file."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"{path}: weights file not found")
    if is_safetensors(file):
        from safetensors.torch import load_file

        try:
            loaded = load_file(file, device="cpu")
        except Exception as exc:  # SafetensorError: a damaged header or truncated data
            raise ModelError(
                f"{path}: not a safetensors file that can be read ({first_line(exc)[:160]}){remedy}"
            ) from exc
        return OrderedDict((k.removeprefix("module."), v) for k, v in loaded.items())
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # what the restricted unpickler refuses
        raise ModelError(
            f"{path}: refused, it may hold code and was not loaded "
            f"(weights_only=True: {first_line(exc)[:160]}){remedy}"
        ) from exc
    except Exception as exc:
        raise ModelError(
            f"{path}: not a state dict that loads safely with weights_only=True "
            f"({first_line(exc)[:160]}){remedy}"
        ) from exc
    # Training scripts often wrap the state dict; accept the usual wrappers.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise ModelError(f"{path}: file holds a {type(loaded).__name__}, not a state dict{remedy}")
    # DistributedDataParallel saves every key under "module."
    state = OrderedDict((k.removeprefix("module."), v) for k, v in loaded.items())
    metadata = getattr(loaded, "_metadata", None)
    if metadata is not None:  # module versions, by which BatchNorm and ViT upgrade old files
        state._metadata = OrderedDict((k.removeprefix("module."), v) for k, v in metadata.items())
    return state


def num_classes(
    state: Mapping[str, torch.Tensor],
    default: int,
    classifiers: Sequence[str] = (),
    order: Sequence[str] = (),
) -> int:
    """The class count of a state dict: the rows of its classifier's weight when its name is
    known, else the output size of its last weight of 2 or more dimensions (a linear layer,
    or squeezenet's 1×1 convolution), last in the network's ``order`` of keys when given:
    a safetensors file keeps its keys sorted by name, not in the network's order."""
    for name in classifiers:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.dim() >= 2:
            return int(weight.shape[0])
    keys = [k for k in order if k in state] + [k for k in state if k not in set(order)]
    matrices = [state[k] for k in keys if k.endswith("weight") and state[k].dim() >= 2]
    return int(matrices[-1].shape[0]) if matrices else default


def fit_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: str, arch: str) -> None:
    """Load ``state`` into ``model``, every parameter and buffer, or raise one line saying
    which keys differ (a state dict saved from another architecture, or another head)."""
    own = model.state_dict()
    shapes = [
        f"{k}: {_shape(state[k])} in the file, {_shape(v)} in the model"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:  # load_state_dict would raise; name the other differences with them
        # a missing num_batches_tracked is no difference: BatchNorm fills it in
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        raise ModelError(
            f"{where}: {misfit(arch, missing, [k for k in state if k not in own], shapes)}"
        )
    # strict=False so that the keys are reported here in one line, not in torch's paragraphs
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{where}: {misfit(arch, result.missing_keys, result.unexpected_keys, [])}"
        )


def misfit(
    arch: str, missing: Sequence[str], unexpected: Sequence[str], shapes: Sequence[str]
) -> str:
    """``state dict does not fit resnet18: 3 keys missing (…), 2 unexpected (…), …``."""
    parts = []
    for count, what, keys in (
        (len(missing), "missing", missing),
        (len(unexpected), "unexpected", unexpected),
        (len(shapes), "of another shape", shapes),
    ):
        if count:
            shown = ", ".join(list(keys)[:_SHOWN_KEYS]) + (", …" if count > _SHOWN_KEYS else "")
            parts.append(f"{count} key{'s' if count != 1 else ''} {what} ({shown})")
    return (
        f"state dict does not fit {arch}: {'; '.join(parts)} "
        "(saved from another architecture or head?)"
    )


def _shape(tensor: torch.Tensor) -> str:
    return "×".join(str(n) for n in tensor.shape) or "scalar"


# --- the torch hub cache -------------------------------------------------------------------


def torch_home() -> Path:
    return Path(torch.hub.get_dir()).parent


def checkpoint_path(url: str) -> Path:
    """Where torch.hub keeps the file of ``url``: ``$TORCH_HOME/hub/checkpoints/NAME``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def fetch_checkpoint(url: str, name: str, weights: str, check_hash: bool = True) -> Path:
    """The cache file of ``url`` (``weights`` for model ``name``), downloaded as torch.hub does
    when absent; with ``check_hash``, its SHA-256 checked against the prefix in its name
    (torch.hub checks only what it downloads; timm's names carry no such prefix)."""
    path = checkpoint_path(url)
    found = torch.hub.HASH_REGEX.search(path.name) if check_hash else None
    prefix = found.group(1) if found and found.group(1) else None
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Writes a .partial file beside ``path``, renamed to it only if its hash matches.
            # Its progress bar (bytes, rate, time left: up to gigabytes) only on a terminal,
            # where it redraws one line; in a log it would be a line per update.
            torch.hub.download_url_to_file(url, str(path), prefix, progress=stderr_is_a_terminal())
        except Exception as exc:  # no network, proxy, disk full, a bad download
            if isinstance(exc, RuntimeError) and "invalid hash value" in str(exc):
                raise ModelError(
                    f"weights downloaded from {url} for {name} do not match the hash in their "
                    f"name ({prefix}) and were not saved as {path}: try again later, or pass a "
                    "local state dict with --weights FILE"
                ) from exc
            raise ModelError(
                f"weights {weights} for {name} are not cached and could not be downloaded "
                f"({type(exc).__name__}): need {path.name} in {path.parent} "
                f"(TORCH_HOME={torch_home()}), or pass a local state dict with --weights FILE"
            ) from exc
    if prefix is not None:
        digest = hashlib.sha256()
        try:
            with path.open("rb") as file:
                while chunk := file.read(1 << 20):  # up to gigabytes: never all in memory
                    digest.update(chunk)
        except OSError as exc:
            raise ModelError(f"cached weights {path} cannot be read ({exc.strerror})") from exc
        if not digest.hexdigest().startswith(prefix):
            raise ModelError(
                f"cached weights {path} for {name} cannot be loaded: its SHA-256 does not "
                f"match the hash in its name ({prefix}); {CACHE_REMEDY}"
            )
    return path
