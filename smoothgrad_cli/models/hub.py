"""The Hugging Face hub cache, where timm 1.0 keeps its pretrained weights and transformers
its models: ``$HF_HUB_CACHE``, by default ``$HF_HOME/hub`` (``~/.cache/huggingface/hub``),
one folder per repository (``models--timm--resnet18.a1_in1k/snapshots/COMMIT/…``).

Read without the network first; a download is tried only when a file is not cached and
``HF_HUB_OFFLINE`` is not set. Paths and the offline switch are read when asked, not when
this module is imported, so that a test (or a caller) can point them elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .base import ModelError, stderr_is_a_terminal


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def where() -> str:
    """The cache, as messages name it, with the variables that move it or keep it offline."""
    state = "set: nothing is downloaded" if offline() else "unset"
    return f"the Hugging Face cache {hub_cache()} (set HF_HOME to move it; HF_HUB_OFFLINE {state})"


def split_revision(repo: str) -> tuple[str, str | None]:
    """``org/name@rev`` → (``org/name``, ``rev``), as timm and the hub write a revision."""
    name, _, revision = repo.partition("@")
    return name, revision or None


def cached_file(repo: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of ``repo`` in the cache, or ``None``; never the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache(), revision=revision)
    return Path(found) if isinstance(found, str) else None


@contextlib.contextmanager
def _bars_on_a_terminal_only() -> Iterator[None]:
    """The hub's download bars on a terminal, none in a log, unless the user chose with
    ``HF_HUB_DISABLE_PROGRESS_BARS``."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    chosen = "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ
    if chosen or stderr_is_a_terminal() or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def download_file(repo: str, filename: str, revision: str | None = None) -> Path | None:
    """``filename`` of ``repo``, downloaded into the cache; ``None`` when the repository has
    no such file. Raises the hub's errors for anything else (no network, no repository)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        with _bars_on_a_terminal_only():
            found = hf_hub_download(repo, filename, revision=revision, cache_dir=hub_cache())
        return Path(found)
    except EntryNotFoundError as exc:
        if isinstance(exc, LocalEntryNotFoundError):  # not cached, and the hub not reached
            raise
        return None


def cached_snapshot(repo: str, revision: str | None = None) -> Path | None:
    """The cached folder of ``repo`` at ``revision`` (default: the ``main`` it was fetched
    at), or ``None``; never the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo, revision=revision, cache_dir=hub_cache(), local_files_only=True
        )
    except (LocalEntryNotFoundError, ValueError):  # not cached, or not a valid repo id
        return None
    return Path(folder)


def download_snapshot(repo: str, revision: str | None, patterns: list[str]) -> Path:
    """The files of ``repo`` matching ``patterns``, downloaded into the cache."""
    from huggingface_hub import snapshot_download

    with _bars_on_a_terminal_only():
        folder = snapshot_download(
            repo, revision=revision, cache_dir=hub_cache(), allow_patterns=patterns
        )
    return Path(folder)


def cached_repos() -> Iterator[tuple[str, Path]]:
    """Every model repository in the cache, with the folder of its ``main`` snapshot (else
    its newest), without the network: what ``smoothgrad models hf:`` lists."""
    cache = hub_cache()
    if not cache.is_dir():
        return
    for folder in sorted(cache.glob("models--*")):
        repo = folder.name.removeprefix("models--").replace("--", "/")
        ref = folder / "refs" / "main"
        snapshots = folder / "snapshots"
        snapshot = snapshots / ref.read_text().strip() if ref.is_file() else None
        if snapshot is None or not snapshot.is_dir():
            found = sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime)
            if not found:
                continue
            snapshot = found[-1]
        yield repo, snapshot


def read_json(file: Path, what: str) -> dict:
    """A JSON object from ``file``; ``ModelError`` naming ``what`` it was meant to be."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file}: not a readable {what} ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{file}: not a {what} (a JSON {type(data).__name__})")
    return data
