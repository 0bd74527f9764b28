"""Checkpoints never run code: a pickle planted in (or downloaded into) the torch hub cache is
refused, by the hash in its file name or by ``weights_only=True``, before anything in it runs.
Nothing here touches the network: downloads are served from memory."""

from __future__ import annotations

import email.message
import hashlib
import io
import os
import shlex
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights
from typer.testing import CliRunner

from smoothgrad_cli.cli import app
from smoothgrad_cli.models import ModelError, load_model

RESNET18 = ResNet18_Weights.IMAGENET1K_V1  # resnet18's DEFAULT
URL_FOLDER = os.path.dirname(RESNET18.url)


class _Evil:
    """Pickles into ``os.system("touch MARKER")``: the planted checkpoint of the attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _evil_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _Evil(marker)}, buffer)
    return buffer.getvalue()


def _state_bytes(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.is_dir():
        return {}
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """``TORCH_HOME`` in a temporary folder (``torch.hub.get_dir`` prefers a ``set_dir`` value
    to the variable: both point there, and the previous value comes back afterwards), and a
    network served by ``hub.serve``: by default every request fails. Yields the cache folder."""
    real_hub = Path(torch.hub.get_dir())
    before = _snapshot(real_hub)
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)
    torch.hub.set_dir(home / "hub")
    served: dict[str, bytes] = {}
    requests: list[str] = []

    def urlopen(request, *args, **kwargs):
        url = getattr(request, "full_url", request)
        requests.append(url)
        if url not in served:
            raise urllib.error.URLError("network is unreachable (test)")
        response = io.BytesIO(served[url])
        response.info = email.message.Message  # no Content-Length
        return response

    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    yield checkpoints, served, requests
    assert _snapshot(real_hub) == before, "a file outside the temporary folder changed"


@pytest.fixture
def loads(monkeypatch) -> list[bool]:
    """The ``weights_only`` of every ``torch.load`` call, whoever makes it."""
    calls: list[bool] = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def _name_weights_after(monkeypatch, data: bytes) -> str:
    """Give resnet18's DEFAULT weights a URL whose file name carries the SHA-256 of ``data``,
    as torchvision's names do; the file name it now expects is returned."""
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    monkeypatch.setattr(RESNET18.value, "url", f"{URL_FOLDER}/{name}")
    return name


def _one_line_error(info, file: Path) -> str:
    message = str(info.value)
    assert "\n" not in message
    assert str(file) in message
    return message


def test_planted_pickle_with_a_wrong_hash_is_refused_before_it_is_read(hub, loads, tmp_path):
    checkpoints, _, requests = hub
    marker = tmp_path / "MARKER"
    file = checkpoints / os.path.basename(RESNET18.url)  # resnet18-f37072fd.pth
    file.write_bytes(_evil_bytes(marker))
    with pytest.raises(ModelError) as info:
        load_model("resnet18")
    assert not marker.exists(), "the planted pickle ran"
    message = _one_line_error(info, file)
    assert "does not match the hash in its name" in message
    assert "delete it" in message and "--weights FILE" in message
    assert loads == [] and requests == []  # not unpickled at all, not downloaded again
    assert file.is_file()  # left for the user to look at


def test_planted_pickle_with_a_matching_hash_is_refused_by_the_safe_loader(
    hub, monkeypatch, loads, tmp_path
):
    checkpoints, _, requests = hub
    marker = tmp_path / "MARKER"
    data = _evil_bytes(marker)
    file = checkpoints / _name_weights_after(monkeypatch, data)
    file.write_bytes(data)
    with pytest.raises(ModelError) as info:
        load_model("resnet18")
    assert not marker.exists(), "the planted pickle ran"
    message = _one_line_error(info, file)
    assert "may hold code" in message and "not loaded" in message
    assert "GLOBAL posix.system" in message or "GLOBAL nt.system" in message
    assert "--weights FILE" in message
    assert loads == [True] and requests == []


def test_legitimate_cached_weights_load_through_the_safe_loader(
    hub, monkeypatch, loads, resnet18_state
):
    checkpoints, _, requests = hub
    data = _state_bytes(resnet18_state)
    (checkpoints / _name_weights_after(monkeypatch, data)).write_bytes(data)
    loaded = load_model("resnet18")
    assert loads == [True] and requests == []
    assert loaded.weights == "IMAGENET1K_V1"
    assert len(loaded.categories) == 1000
    state = loaded.model.state_dict()
    assert set(state) == set(resnet18_state)
    for key, value in resnet18_state.items():
        assert torch.equal(state[key], value), key


def test_downloaded_weights_are_hash_checked_and_loaded_safely(
    hub, monkeypatch, loads, resnet18_state
):
    checkpoints, served, requests = hub
    data = _state_bytes(resnet18_state)
    name = _name_weights_after(monkeypatch, data)
    served[RESNET18.url] = data
    loaded = load_model("resnet18")
    assert requests == [RESNET18.url]
    assert loads == [True]
    assert (checkpoints / name).read_bytes() == data
    assert [p.name for p in checkpoints.iterdir()] == [name]  # no .partial left behind
    assert torch.equal(loaded.model.fc.weight, resnet18_state["fc.weight"])


@pytest.mark.parametrize("terminal", [True, False])
def test_a_download_shows_its_progress_on_a_terminal_only(
    hub, monkeypatch, capsys, resnet18_state, terminal
):
    """On a terminal, torch.hub's bar (bytes, rate) redraws one line; in a log it is left out
    rather than written a line per update."""
    checkpoints, served, requests = hub
    data = _state_bytes(resnet18_state)
    _name_weights_after(monkeypatch, data)
    served[RESNET18.url] = data
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
    load_model("resnet18")
    err = capsys.readouterr().err
    if terminal:
        assert "MB" in err or "kB" in err, err  # tqdm's byte count
    else:
        assert err == ""


def test_download_with_a_wrong_hash_is_not_saved_nor_read(hub, loads, tmp_path):
    checkpoints, served, requests = hub
    marker = tmp_path / "MARKER"
    served[RESNET18.url] = _evil_bytes(marker)
    with pytest.raises(ModelError) as info:
        load_model("resnet18")
    message = str(info.value)
    assert "\n" not in message
    assert RESNET18.url in message and str(checkpoints / os.path.basename(RESNET18.url)) in message
    assert "do not match the hash in their name" in message and "--weights FILE" in message
    assert requests == [RESNET18.url]
    assert loads == [] and not marker.exists()
    assert list(checkpoints.iterdir()) == []


def test_downloaded_pickle_with_code_is_refused(hub, monkeypatch, tmp_path):
    checkpoints, served, _ = hub
    marker = tmp_path / "MARKER"
    data = _evil_bytes(marker)
    file = checkpoints / _name_weights_after(monkeypatch, data)
    served[RESNET18.url] = data
    with pytest.raises(ModelError) as info:
        load_model("resnet18")
    assert not marker.exists(), "the downloaded pickle ran"
    assert "may hold code" in _one_line_error(info, file)


def test_weights_file_with_code_is_refused(tmp_path, loads):
    marker = tmp_path / "MARKER"
    file = tmp_path / "evil.pth"
    file.write_bytes(_evil_bytes(marker))
    with pytest.raises(ModelError) as info:
        load_model("resnet18", weights=str(file))
    assert not marker.exists(), "the pickle ran"
    assert "may hold code" in _one_line_error(info, file)
    assert loads == [True]


def test_builder_is_restored_after_loading(hub, monkeypatch, resnet18_state):
    """The state-dict seam is replaced only while the builder runs, also when it fails."""
    checkpoints, _, _ = hub
    data = _state_bytes({"fc.weight": torch.zeros(2, 2)})  # hash matches, network does not
    (checkpoints / _name_weights_after(monkeypatch, data)).write_bytes(data)
    with pytest.raises(ModelError, match="cannot be loaded .*Missing key"):
        load_model("resnet18")
    assert "get_state_dict" not in vars(ResNet18_Weights)
    assert ResNet18_Weights.get_state_dict is torchvision.models.WeightsEnum.get_state_dict


def test_cli_refuses_the_planted_pickle_with_one_line(hub, tmp_path, sample_images):
    checkpoints, _, _ = hub
    marker = tmp_path / "MARKER"
    file = checkpoints / os.path.basename(RESNET18.url)
    file.write_bytes(_evil_bytes(marker))
    out = tmp_path / "out"
    args = ["explain", str(sample_images / "coffee.png"), "--model", "resnet18", "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "-n", "2", "-q"], catch_exceptions=False)
    assert not marker.exists(), "the planted pickle ran"
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("smoothgrad: error: ") and str(file) in lines[0]
    assert "does not match the hash in its name" in lines[0]
    assert not out.exists() or not list(out.rglob("*.png"))


# --- safetensors, timm's hub cache and transformers folders -----------------------------------


@pytest.fixture
def hf_hub(tmp_path, monkeypatch) -> Path:
    from hub_cache import offline_hub

    return offline_hub(tmp_path, monkeypatch)


def test_safetensors_weights_load_without_torch_load(tmp_path, loads, resnet18_state):
    from safetensors.torch import save_file

    file = tmp_path / "r18.safetensors"
    save_file(dict(resnet18_state), file)
    loaded = load_model("resnet18", weights=str(file))
    assert torch.equal(loaded.model.fc.weight, resnet18_state["fc.weight"])
    assert loads == []  # no unpickler involved at all
    # told by its content, whatever its name says
    renamed = tmp_path / "r18.pth"
    renamed.write_bytes(file.read_bytes())
    assert torch.equal(load_model("resnet18", str(renamed)).model.fc.weight, loaded.model.fc.weight)
    assert loads == []


def test_damaged_safetensors_is_one_line(tmp_path):
    file = tmp_path / "cut.safetensors"
    file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelError, match="not a safetensors file that can be read") as info:
        load_model("resnet18", weights=str(file))
    _one_line_error(info, file)


def test_timm_cached_pickle_with_code_is_refused(hf_hub, loads, tmp_path):
    from hub_cache import plant

    marker = tmp_path / "MARKER"
    snapshot = plant(hf_hub, "timm/resnet18.a1_in1k", {"pytorch_model.bin": _evil_bytes(marker)})
    with pytest.raises(ModelError) as info:
        load_model("timm:resnet18")
    assert not marker.exists(), "the cached pickle ran"
    assert "may hold code" in _one_line_error(info, snapshot / "pytorch_model.bin")
    assert loads == [True]


def test_transformers_folder_with_a_pickle_with_code_is_refused(tmp_path, loads):
    pytest.importorskip("transformers")
    from hub_cache import save_tiny_vit

    folder = tmp_path / "vit"
    save_tiny_vit(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "MARKER"
    (folder / "pytorch_model.bin").write_bytes(_evil_bytes(marker))
    with pytest.raises(ModelError) as info:
        load_model(f"hf:{folder}")
    assert not marker.exists(), "the pickle in the folder ran"
    assert "may hold code" in _one_line_error(info, folder / "pytorch_model.bin")
    assert loads == [True]  # ours: transformers never opened the file


def test_transformers_folder_with_its_own_code_never_runs_it(tmp_path):
    pytest.importorskip("transformers")
    import json

    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "MARKER"
    code = f"open({str(marker)!r}, 'w').write('code from the folder ran')\n"
    for module in ("configuration_evil.py", "modeling_evil.py"):
        (folder / module).write_text(code)
    config = {
        "model_type": "evil",
        "architectures": ["EvilForImageClassification"],
        "auto_map": {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForImageClassification": "modeling_evil.EvilForImageClassification",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="config.json cannot be used .*never run") as info:
        load_model(f"hf:{folder}")
    _one_line_error(info, folder)
    assert not marker.exists(), "code from the folder ran"
