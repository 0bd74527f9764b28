"""timm and transformers classifiers: built small from their configs with random weights,
saved as users' files look (a state dict, a safetensors file, a ``save_pretrained`` folder,
the hub cache's layout), loaded back through the real loading code, and their preprocessing
compared with what the library itself applies, pixel for pixel. Nothing touches the network:
the hub cache is a temporary folder and ``HF_HUB_OFFLINE`` is set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch
from hub_cache import COMMIT, offline_hub, plant, save_tiny_vit, tiny_vit_config
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from timm.models import get_pretrained_cfg
from typer.testing import CliRunner

from smoothgrad_cli.check.spec import parse_spec
from smoothgrad_cli.cli import app
from smoothgrad_cli.models import ModelError, list_models, load_model, model_beside
from smoothgrad_cli.models import timm_models as tm
from smoothgrad_cli.models.base import check_scores
from smoothgrad_cli.models.hf_models import Logits
from smoothgrad_cli.models.hf_processors import preprocess_of
from smoothgrad_cli.models.preprocess import Preprocess

transformers = pytest.importorskip("transformers")


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    return offline_hub(tmp_path, monkeypatch)


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def photos(sample_images) -> list[Image.Image]:
    """coffee.png, and an odd-sized portrait crop of it (so crop offsets round)."""
    with Image.open(sample_images / "coffee.png") as photo:
        coffee = photo.convert("RGB")
    return [coffee, coffee.crop((13, 5, 274, 400))]  # 261×395


@pytest.fixture(scope="module")
def r18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False).state_dict()


def _assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key


# --- timm: preprocessing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",  # center crop, crop_pct 0.95, bicubic
        "vit_tiny_patch16_224",  # crop_pct 0.9, mean/std 0.5
        "cspresnet50.ra_in1k",  # bilinear, 256, crop_pct 0.887
        "convnext_base.fb_in22k_ft_in1k_384",  # squash, crop_pct 1.0
        "volo_d4_448.sail_in1k",  # crop_pct 1.15: the crop is larger than the resize (padded)
        "vit_base_patch16_sapiens2.fb",  # a non-square input, 1024×768
    ],
)
def test_timm_transform_is_timms_eval_transform_pixel_for_pixel(name, photos):
    cfg = get_pretrained_cfg(name).to_dict()
    ours = tm.preprocess(cfg, name)
    theirs = create_transform(**resolve_data_config({}, pretrained_cfg=cfg), is_training=False)
    for photo in photos:
        assert torch.equal(ours(photo), theirs(photo)), photo.size


def test_timm_crop_box_is_what_the_transform_keeps():
    """A photo white exactly inside the box and black outside becomes an all-white input."""
    transform = tm.preprocess(get_pretrained_cfg("resnet18").to_dict(), "resnet18")
    box = transform.crop_box(600, 400)
    # 600×400 → 352×235 (shorter side 224 / 0.95); crop 224 at (64, 6), ×600/352 and ×400/235
    assert box == pytest.approx((64 * 600 / 352, 6 * 400 / 235, 288 * 600 / 352, 230 * 400 / 235))
    photo = Image.new("RGB", (600, 400))
    left, top, right, bottom = (round(v) for v in box)
    photo.paste((255, 255, 255), (left, top, right, bottom))
    x = transform(photo)
    white = (1 - torch.tensor(transform.mean)) / torch.tensor(transform.std)
    assert torch.allclose(x[:, 2:-2, 2:-2], white.view(3, 1, 1), atol=0.05)


def test_timm_class_names_are_timms_imagenet_metadata():
    names = tm.categories(get_pretrained_cfg("resnet18"), 1000)
    assert names[967] == "espresso" and names[281] == "tabby" and names[0] == "tench"
    # the two "crane"s and "maillot"s of ImageNet-1k, told apart by their synsets
    assert names[134] == "crane (n02012849)" and names[517] == "crane (n03126707)"
    assert len(set(names)) == 1000
    names_22k = tm.categories(get_pretrained_cfg("resnet18"), 21841)
    assert len(names_22k) == len(set(names_22k)) == 21841
    assert tm.categories(get_pretrained_cfg("resnet18"), 10) == [f"class {i}" for i in range(10)]


# --- timm: weights ---------------------------------------------------------------------------


def test_timm_model_from_a_safetensors_file(tmp_path, r18_state, photos):
    file = tmp_path / "r18.safetensors"
    save_file(r18_state, file)
    loaded = load_model("timm:resnet18", str(file))
    assert (loaded.name, loaded.weights) == ("timm:resnet18", str(file))
    assert not loaded.model.training
    _assert_same_state(loaded.model, r18_state)
    assert loaded.categories[967] == "espresso"
    assert loaded.input_shape == (3, 224, 224)
    reference = timm.create_model("resnet18", pretrained=False)
    theirs = create_transform(**resolve_data_config(model=reference))
    assert torch.equal(loaded.transform(photos[0]), theirs(photos[0]))


def test_timm_model_from_a_wrapped_state_dict_with_ten_classes(tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict()
    file = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, file)
    loaded = load_model("timm:resnet18", str(file))
    _assert_same_state(loaded.model, state)
    assert loaded.categories == [f"class {i}" for i in range(10)]


def test_timm_cached_weights_load_offline_and_are_listed(hub, r18_state, tmp_path):
    file = tmp_path / "model.safetensors"
    save_file(r18_state, file)
    assert {i.name: i.offline for i in list_models("timm:resnet18")}["timm:resnet18"] is False
    plant(hub, "timm/resnet18.a1_in1k", {"model.safetensors": file})
    loaded = load_model("timm:resnet18")
    assert loaded.weights == "a1_in1k"
    _assert_same_state(loaded.model, r18_state)
    rows = {i.name: i for i in list_models("timm:resnet1*")}
    assert rows["timm:resnet18"].offline and rows["timm:resnet18"].note == "cached"
    assert rows["timm:resnet18"].default_weights == "a1_in1k"
    assert not rows["timm:resnet101"].offline
    tagged = {i.name: i.offline for i in list_models("timm:resnet18.*")}
    assert tagged["timm:resnet18.a1_in1k"] and not tagged["timm:resnet18.tv_in1k"]


def test_timm_cached_pytorch_model_bin_and_a_tag_by_weights(hub, r18_state, tmp_path):
    file = tmp_path / "pytorch_model.bin"
    torch.save(r18_state, file)
    plant(hub, "timm/resnet18.tv_in1k", {"pytorch_model.bin": file})
    for loaded in (load_model("timm:resnet18.tv_in1k"), load_model("timm:resnet18", "tv_in1k")):
        assert loaded.weights == "tv_in1k"
        _assert_same_state(loaded.model, r18_state)
        # tv_in1k's own preprocessing: bilinear, crop_pct 0.875
        assert loaded.transform.resize == 256 and loaded.transform.interpolation.value == "bilinear"


def test_timm_weights_not_cached_offline_say_where_they_belong(hub):
    with pytest.raises(ModelError) as info:
        load_model("timm:resnet18")
    message = _one_line(info)
    assert "timm/resnet18.a1_in1k" in message and "model.safetensors" in message
    assert str(hub) in message and "HF_HUB_OFFLINE set" in message
    assert "--weights FILE" in message


@pytest.mark.parametrize("terminal, env, shown", [
    (True, None, True), (False, None, False), (False, "0", True),
])  # fmt: skip
def test_hub_download_bars_show_on_a_terminal_only(monkeypatch, tmp_path, terminal, env, shown):
    """In a log the hub's bars would be a carriage return per update: off there, unless the
    user chose with HF_HUB_DISABLE_PROGRESS_BARS; as they were after the download."""
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled

    from smoothgrad_cli.models import hub as our_hub

    seen = []

    def download(repo, filename, revision=None, cache_dir=None):
        seen.append(not are_progress_bars_disabled())
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
    if env is None:
        monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", env)
    before = are_progress_bars_disabled()
    assert our_hub.download_file("org/name", "model.safetensors") == tmp_path / "model.safetensors"
    assert seen == [shown and not before]
    assert are_progress_bars_disabled() == before


def test_timm_weights_are_downloaded_into_the_hub_cache_when_online(
    hub, r18_state, tmp_path, monkeypatch
):
    """A repository without safetensors: the .bin is fetched next, as timm does."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RemoteEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    bin_file = tmp_path / "pytorch_model.bin"
    torch.save(r18_state, bin_file)
    asked = []

    def download(repo, filename, revision=None, cache_dir=None):
        asked.append((repo, filename))
        if filename == "model.safetensors":
            raise RemoteEntryNotFoundError.__new__(RemoteEntryNotFoundError)
        return str(plant(Path(cache_dir), repo, {filename: bin_file}) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    loaded = load_model("timm:resnet18")
    assert asked == [
        ("timm/resnet18.a1_in1k", "model.safetensors"),
        ("timm/resnet18.a1_in1k", "pytorch_model.bin"),
    ]
    _assert_same_state(loaded.model, r18_state)


@pytest.mark.parametrize(
    ("name", "weights", "pattern"),
    [
        ("timm:resnt18", None, r"unknown timm model 'resnt18'; did you mean timm:resnet18"),
        ("timm:resnet18.nope", None, r"unknown pretrained tag 'nope' for timm:resnet18 \(.*a1"),
        ("timm:resnet18", "nope", r"unknown pretrained tag 'nope' for timm:resnet18"),
        ("timm:resnet18.a1_in1k", "tv_in1k", r"names the tag 'a1_in1k' and --weights another"),
        ("timm:convnext_tiny.dinov3_lvd1689m", None, r"no classification head \(num_classes 0"),
        ("timm:beit3_giant_patch14_224", None, r"has no pretrained weights in timm"),
        ("resnet18.a1_in1k", None, r"did you mean 'timm:resnet18.a1_in1k'\?"),
    ],
)
def test_timm_name_errors_are_one_line(hub, name, weights, pattern):
    with pytest.raises(ModelError, match=pattern) as info:
        load_model(name, weights)
    _one_line(info)


def test_state_dict_of_another_architecture_says_which_keys_differ(tmp_path, r18_state):
    file = tmp_path / "r18.safetensors"
    save_file(r18_state, file)
    with pytest.raises(ModelError) as info:
        load_model("timm:resnet34", str(file))
    message = _one_line(info)
    assert message.startswith(f"{file}: state dict does not fit timm:resnet34.a1_in1k: ")
    assert "keys missing (layer1.2.conv1.weight, " in message
    assert "unexpected" not in message and "saved from another architecture" in message


def test_state_dict_with_other_shapes_names_them(tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    file = tmp_path / "bad.safetensors"
    save_file(state, file)
    with pytest.raises(ModelError) as info:
        load_model("timm:resnet18", str(file))
    assert "1 key of another shape (conv1.weight: 64×3×5×5 in the file, 64×3×7×7 in the model)" in (
        _one_line(info)
    )


def test_timm_state_dict_in_another_layout_goes_through_timms_checkpoint_filter(tmp_path):
    """An OpenCLIP-style file (the ViT under ``visual.trunk.``), which timm's own loader
    converts with the architecture's ``checkpoint_filter_fn``: so does this one, strictly."""
    torch.manual_seed(0)
    state = timm.create_model("test_vit", pretrained=False).state_dict()
    file = tmp_path / "open_clip.pt"
    torch.save({f"visual.trunk.{k}": v for k, v in state.items()}, file)
    _assert_same_state(load_model("timm:test_vit", str(file)).model, state)


def test_an_output_that_is_not_class_scores_is_refused():
    class Features(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    class Pair(torch.nn.Module):
        def forward(self, x):
            return x.mean((1, 2, 3)), x

    wrong = r"returns shape \(2, 3\) .*not class scores of shape \(N, 10\)"
    with pytest.raises(ModelError, match=wrong):
        check_scores(Features(), (3, 8, 8), 10, "features")
    with pytest.raises(ModelError, match=r"returns tuple for 2 images"):
        check_scores(Pair(), (3, 8, 8), 10, "pair")
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    check_scores(linear, (3, 8, 8), 10, "ok")

    class NoLogits(torch.nn.Module):  # a transformers model without a classification output
        def forward(self, pixel_values):
            return {"last_hidden_state": pixel_values}

    with pytest.raises(ModelError, match=r"fails on a 8×8 input \(TypeError: NoLogits returned"):
        check_scores(Logits(NoLogits()), (3, 8, 8), 10, "hf:x")


# --- transformers: preprocessing -------------------------------------------------------------


def _processors():
    t = transformers
    crop = {"height": 224, "width": 224}
    return [
        ("ViTImageProcessor", {"size": {"height": 224, "width": 224}}),
        ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.875}),
        ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}}),  # no crop at 384
        ("BitImageProcessor", {}),  # shorter side 224, centre crop 224, bicubic
        ("DeiTImageProcessor", {"size": {"height": 256, "width": 256}, "crop_size": crop}),
        ("ViTImageProcessor", {"do_normalize": False, "size": {"height": 64, "width": 48}}),
    ], t


@pytest.mark.parametrize("backend", ["", "Pil"])
@pytest.mark.parametrize("index", range(6))
def test_hf_transform_is_the_processors_pixel_for_pixel(index, backend, photos):
    """Both of transformers' backends: torchvision's (the default) and PIL's; exactly equal,
    float32 bit for bit."""
    processors, t = _processors()
    cls_name, kwargs = processors[index]
    processor = getattr(t, cls_name + backend)(**kwargs)
    ours = preprocess_of(processor, "test")
    for photo in photos:
        theirs = processor(images=photo, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(ours(photo), theirs), (cls_name, backend, photo.size)


def test_hf_crop_box_truncates_the_offset_as_transformers_does():
    """transformers truncates (n − c) / 2 where torchvision rounds: 227 − 224 = 3 → 1, not 2."""
    processor = transformers.BitImageProcessor(size={"shortest_edge": 227})
    transform = preprocess_of(processor, "test")
    assert transform.crop_box(227, 300) == pytest.approx((1.0, 38.0, 225.0, 262.0))
    assert Preprocess((224, 224), 227, (0,) * 3, (1,) * 3).crop_box(227, 300)[0] == 2.0


def test_hf_processors_that_do_more_are_refused_by_name():
    flips = transformers.MobileViTImageProcessor()  # BGR: flips the channels
    with pytest.raises(ModelError, match="MobileViTImageProcessor sets do_flip_channel_order"):
        preprocess_of(flips, "m")
    keeps = transformers.ViTImageProcessor(size={"shortest_edge": 224})
    with pytest.raises(ModelError, match="keeps the aspect ratio without cropping"):
        preprocess_of(keeps, "m")


# --- transformers: models --------------------------------------------------------------------


@pytest.fixture(scope="module")
def my_vit(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("hf") / "my-vit"
    return folder, save_tiny_vit(folder)


def test_hf_folder_loads_with_its_labels_processor_and_logits(my_vit, photos):
    folder, reference = my_vit
    loaded = load_model(f"hf:{folder}")
    assert (loaded.name, loaded.weights) == (f"hf:{folder}", str(folder))
    assert loaded.categories == ["cat", "dog", "cup"]
    assert loaded.input_shape == (3, 32, 32)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    x = processor(images=photos[0], return_tensors="pt")["pixel_values"]
    assert torch.equal(loaded.transform(photos[0]), x[0])
    with torch.no_grad():
        assert torch.equal(loaded.model(x), reference(pixel_values=x).logits)
    _assert_same_state(loaded.model.model, reference.state_dict())


def test_hf_sharded_folder_and_weights_file(tmp_path, my_vit):
    reference = save_tiny_vit(tmp_path / "sharded", seed=1)
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _assert_same_state(load_model(f"hf:{tmp_path / 'sharded'}").model.model, reference.state_dict())
    # --weights FILE: the folder's config and processor, another state dict
    file = tmp_path / "finetuned.pt"
    torch.save(reference.state_dict(), file)
    loaded = load_model(f"hf:{my_vit[0]}", str(file))
    assert loaded.weights == str(file)
    _assert_same_state(loaded.model.model, reference.state_dict())


def test_hf_repository_from_the_hub_cache_offline(hub, my_vit):
    folder, reference = my_vit
    plant(hub, "org/tiny-vit", {f.name: f for f in folder.iterdir()})
    loaded = load_model("hf:org/tiny-vit")
    assert loaded.weights == f"org/tiny-vit@{COMMIT[:12]}"
    _assert_same_state(loaded.model.model, reference.state_dict())
    (row,) = list_models("hf:")
    assert (row.name, row.offline) == ("hf:org/tiny-vit", True)
    assert row.note == "cached: ViTForImageClassification, 3 classes"
    assert list_models("hf:google/*") == []
    with pytest.raises(ModelError) as info:
        load_model("hf:org/other-vit")
    message = _one_line(info)
    assert "org/other-vit is not in the Hugging Face cache" in message and str(hub) in message


def test_hf_repository_is_downloaded_when_online(hub, my_vit, monkeypatch):
    """Configs and safetensors only: no code, no other files of the repository."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    folder, reference = my_vit
    asked = []

    def snapshot(repo, *, revision=None, cache_dir=None, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        asked.append((repo, kwargs["allow_patterns"]))
        return str(plant(Path(cache_dir), repo, {f.name: f for f in folder.iterdir()}))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    loaded = load_model("hf:org/tiny-vit")
    ((repo, patterns),) = asked
    assert repo == "org/tiny-vit" and "config.json" in patterns and "model.safetensors" in patterns
    assert not [p for p in patterns if p.endswith((".py", ".bin"))]
    _assert_same_state(loaded.model.model, reference.state_dict())


def test_hf_folders_that_are_not_saved_classifiers(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="not a saved transformers model \\(no config.json"):
        load_model(f"hf:{empty}")
    backbone = tmp_path / "backbone"
    transformers.ViTModel(tiny_vit_config()).save_pretrained(backbone)
    with pytest.raises(ModelError, match="a saved ViTModel, not an image classifier .*backbone"):
        load_model(f"hf:{backbone}")
    bert = tmp_path / "bert"
    config = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    config.save_pretrained(bert)
    with pytest.raises(ModelError, match="a saved bert, not an image classifier"):
        load_model(f"hf:{bert}")
    with pytest.raises(ModelError, match="no such folder, and not a hub repository"):
        load_model(f"hf:{tmp_path / 'nowhere'}")
    no_processor = tmp_path / "no-processor"
    transformers.ViTForImageClassification(tiny_vit_config()).save_pretrained(no_processor)
    with pytest.raises(ModelError, match="no preprocessor_config.json"):
        load_model(f"hf:{no_processor}")


def test_hf_weights_of_another_architecture_say_which_keys_differ(tmp_path):
    folder = tmp_path / "vit"
    save_tiny_vit(folder)
    save_tiny_vit(tmp_path / "wide", hidden_size=64, intermediate_size=64)
    wide = (tmp_path / "wide" / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(wide)
    with pytest.raises(ModelError) as info:
        load_model(f"hf:{folder}")
    message = _one_line(info)
    assert message.startswith(f"{folder}: state dict does not fit ViTForImageClassification: ")
    assert "of another shape (" in message and "32 in the model" in message


def test_hf_labels_placeholders_and_control_characters(tmp_path):
    folder = tmp_path / "vit"
    save_tiny_vit(folder, id2label={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, label2id=None)
    assert load_model(f"hf:{folder}").categories == ["class 0", "class 1", "class 2"]
    save_tiny_vit(folder, id2label={0: "a\nb", 1: "c\x1b[31m", 2: " d "}, label2id=None)
    assert load_model(f"hf:{folder}").categories == ["a b", "c\\x1b[31m", "d"]


def test_hf_without_transformers_names_the_extra(monkeypatch, my_vit):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelError) as info:
        load_model(f"hf:{my_vit[0]}")
    message = "hf: models need the transformers package: pip install 'smoothgrad[hf]'"
    assert _one_line(info) == message


# --- the command line and check specs --------------------------------------------------------


def _explain(tmp_path, *args):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["explain", *map(str, args), "-o", str(out), "-n", "2", "--batch-size", "2",
         "--device", "cpu", "-q"],
        catch_exceptions=False,
    )  # fmt: skip
    return result, out


def test_cli_explains_with_timm_resnet18_from_safetensors(tmp_path, sample_images, r18_state):
    weights = tmp_path / "r18.safetensors"
    save_file(r18_state, weights)
    coffee = sample_images / "coffee.png"
    result, out = _explain(tmp_path, coffee, "--model", "timm:resnet18", "--weights", weights)
    assert result.exit_code == 0, result.output
    (png,) = out.rglob("*.map.png")
    with Image.open(png) as image:
        assert image.size == (224, 224)


@pytest.mark.parametrize(
    "method", ["gradient", "input-x-gradient", "integrated-gradients", "guided-backprop"]
)
def test_cli_explains_with_a_saved_vit_folder(tmp_path, sample_images, my_vit, monkeypatch, method):
    folder, _ = my_vit
    monkeypatch.chdir(folder.parent)
    args = [sample_images / "coffee.png", "--model", "hf:./my-vit", "--method", method]
    steps = ["--ig-steps", "2"] if "integrated" in method else []
    result, out = _explain(tmp_path, *args, *steps)
    if method == "guided-backprop":  # a ViT: GELU, which guided backprop cannot guide
        assert result.exit_code == 2
        (line,) = result.stderr.splitlines()
        assert line.startswith("smoothgrad: error: ") and "guided-backprop" in line
        assert "GELUActivation" in line
        return
    assert result.exit_code == 0, result.output
    (png,) = out.rglob("*.map.png")
    with Image.open(png) as image:
        assert image.size == (32, 32)


def test_cli_refuses_guided_backprop_for_a_timm_vit_naming_gelu(tmp_path, sample_images):
    torch.manual_seed(0)
    weights = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), weights)  # tiny
    args = ["--model", "timm:test_vit", "--weights", weights, "--method", "guided-backprop"]
    result, _ = _explain(tmp_path, sample_images / "coffee.png", *args)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert "guided-backprop" in line and "GELU" in line


def test_cli_lists_timm_models_with_the_hub_cache(hub, tmp_path, r18_state):
    file = tmp_path / "model.safetensors"
    save_file(r18_state, file)
    plant(hub, "timm/resnet18.a1_in1k", {"model.safetensors": file})
    result = CliRunner().invoke(app, ["models", "timm:resnet1*"], catch_exceptions=False)
    assert result.exit_code == 0
    (row,) = [line for line in result.stdout.splitlines() if "timm:resnet18 " in line]
    assert "a1_in1k" in row and "yes" in row and "cached" in row
    assert f"weights cache: {hub} (set HF_HOME to move it)" in result.stderr
    result = CliRunner().invoke(app, ["models", "timm:resnt18"], catch_exceptions=False)
    assert result.exit_code == 1 and "did you mean timm:resnet18" in result.stderr


def test_check_specs_name_timm_and_hf_models(tmp_path, sample_images, r18_state, my_vit):
    save_file(r18_state, tmp_path / "r18.safetensors")
    spec = tmp_path / "spec.toml"
    coffee = sample_images / "coffee.png"
    spec.write_text(
        f'[defaults]\nsamples = 2\n\n[[case]]\nname = "timm"\nimage = "{coffee}"\n'
        'model = "timm:resnet18"\nweights = "r18.safetensors"\nexpect_class = 967\n\n'
        f'[[case]]\nname = "hf"\nimage = "{coffee}"\n'
        f'model = "hf:{my_vit[0]}"\nexpect_class = "cup"\n'
    )
    timm_case, hf_case = parse_spec(spec).cases
    assert timm_case.settings.model == "timm:resnet18"
    assert timm_case.settings.weights == str(tmp_path / "r18.safetensors")
    assert hf_case.settings.model == f"hf:{my_vit[0]}"
    # a folder relative to the spec is the spec's, as its images are
    assert model_beside("hf:my-vit", my_vit[0].parent) == f"hf:{my_vit[0]}"
    assert model_beside("hf:org/name", tmp_path) == "hf:org/name"
    assert model_beside("timm:resnet18", tmp_path) == "timm:resnet18"
