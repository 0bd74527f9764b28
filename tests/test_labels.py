"""``--labels FILE``: class names for a fine-tuned model's own head, in explain, predict and
check."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from smoothgrad_cli.check import Checker, parse_spec
from smoothgrad_cli.cli import app
from smoothgrad_cli.labels import LabelsError, read_labels

NAMES = ["cat", "dog", "ferret"]


@pytest.mark.parametrize(
    "text",
    [
        "cat\ndog\nferret\n",
        "cat\ndog\nferret",
        " cat \ndog\nferret\n\n",
        json.dumps(NAMES),
        json.dumps({"2": "ferret", "0": "cat", "1": "dog"}),  # id2label's form, any order
    ],
)
def test_names_from_lines_or_json(tmp_path, text):
    path = tmp_path / "labels"
    path.write_text(text)
    assert read_labels(path, 3) == NAMES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat\ndog\n", "2 class names for a model with 3 classes"),
        ("cat\n\nferret\n", "every class needs a non-empty name"),
        ("[1, 2, 3]", "every class needs a non-empty name"),
        ('{"0": "cat", "2": "dog", "3": "x"}', "the class indices must be 0 to 2"),
        ('{"a": "cat"}', "the keys of a labels object are class indices"),
        ("[oops", "not valid JSON"),
    ],
)
def test_bad_labels_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(LabelsError) as info:
        read_labels(path, 3)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    with pytest.raises(LabelsError, match="labels file not found"):
        read_labels(tmp_path / "none.txt", 3)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """A resnet18 with a 3-class head, saved as a user's training script saves it."""
    folder = tmp_path_factory.mktemp("fine-tuned")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    torch.save({"state_dict": model.state_dict()}, folder / "w.pt")
    (folder / "names.txt").write_text("\n".join(NAMES) + "\n")
    return folder


def test_explain_and_predict_name_the_classes(fine_tuned, sample_images, tmp_path):
    common = ["--model", "resnet18", "--weights", str(fine_tuned / "w.pt"), "--labels",
              str(fine_tuned / "names.txt"), "--device", "cpu", "--json"]  # fmt: skip
    result = CliRunner().invoke(
        app,
        ["explain", str(sample_images / "coffee.png"), "-o", str(tmp_path), "-n", "1",
         "--batch-size", "1", "-q", "--target", "ferret", *common],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["maps"][0]["class_name"] == "ferret" and line["maps"][0]["class_index"] == 2
    predicted = CliRunner().invoke(
        app, ["predict", str(sample_images / "coffee.png"), "--top-k", "3", *common]
    )
    assert predicted.exit_code == 0, predicted.output
    names = [p["class_name"] for p in json.loads(predicted.stdout)["predictions"]]
    assert sorted(names) == sorted(NAMES)


def test_a_labels_file_for_another_head_is_a_usage_error(fine_tuned, sample_images, tmp_path):
    wrong = tmp_path / "two.txt"
    wrong.write_text("cat\ndog\n")
    result = CliRunner().invoke(
        app,
        ["predict", str(sample_images / "coffee.png"), "--model", "resnet18", "--weights",
         str(fine_tuned / "w.pt"), "--labels", str(wrong), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr == (
        f"smoothgrad: error: {wrong}: 2 class names for a model with 3 classes\n"
    )


def test_a_spec_names_its_labels_beside_it(fine_tuned, sample_images):
    spec = fine_tuned / "spec.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [defaults]
            model = "resnet18"
            weights = "w.pt"
            labels = "names.txt"
            samples = 1
            [[case]]
            name = "any"
            image = "{sample_images / "coffee.png"}"
            expect_class = ["cat", "dog", "ferret"]
            top_k = 3
            """
        )
    )
    parsed = parse_spec(spec)
    assert parsed.cases[0].settings.labels == str(fine_tuned / "names.txt")
    run = Checker(parsed, device="cpu").run()
    assert run.exit_code == 0, [r.message for r in run.results]
    assert run.results[0].details["class"] in NAMES
