"""Test helpers for the Hugging Face hub cache (tests/test_model_families.py,
tests/test_weights_safety.py): an empty, offline cache in a temporary folder, and files
planted in it in the layout the hub writes, so timm and transformers models load from it as
from a real cache, without the network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LABELS = {0: "cat", 1: "dog", 2: "cup"}


def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache and torch hub in ``tmp_path``, offline: for a ``hub``
    fixture of the test module."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return cache


def plant(cache: Path, repo: str, files: dict[str, bytes | Path]) -> Path:
    """``repo``'s files in the hub cache's layout: refs/main → snapshots/COMMIT/…"""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data.read_bytes() if isinstance(data, Path) else data)
    return snapshot


def tiny_vit_config(**overrides):
    """A ViT classifier of 3 classes on 32×32 inputs: one layer, 32 wide."""
    import transformers

    values = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        image_size=32, patch_size=8, num_labels=3, id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    return transformers.ViTConfig(**{**values, **overrides})


def save_tiny_vit(folder: Path, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random tiny ViT classifier and its image processor, as ``save_pretrained`` saves."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(tiny_vit_config(**overrides)).eval()
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model
