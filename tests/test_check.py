"""Tests of ``smoothgrad check``: metrics on hand-made arrays, the spec parser, verdicts and
exit codes on the sample photos, JUnit/JSON output, golden maps and the sanity check."""

from __future__ import annotations

import hashlib
import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from smoothgrad_cli import check, engine
from smoothgrad_cli.check import (
    Checker,
    SpecError,
    check_main,
    distance_to_region,
    junit_xml,
    mass_in_region,
    parse_spec,
    peak_point,
    pool_map,
    randomisable_layers,
    randomised_copy,
    rankdata,
    region_weights,
    spearman,
)
from smoothgrad_cli.cli import app
from smoothgrad_cli.models import EMBEDDED, embedded_weights_file, load_model

ROOT = Path(__file__).resolve().parents[1]
COFFEE = ROOT / "sample_images" / "coffee.png"  # 600×400, espresso
CHELSEA = ROOT / "sample_images" / "chelsea.png"  # 451×300, a cat
EXAMPLE = ROOT / "examples" / "sample_checks.toml"

# ---------------------------------------------------------------------------------------------
# metrics on hand-made arrays


def _brute_ranks(values):
    """Average ranks by counting: 1 + (number smaller) + (number equal − 1) / 2."""
    a = np.ravel(values)
    return np.array([1 + (a < v).sum() + ((a == v).sum() - 1) / 2 for v in a])


def test_rankdata_averages_ties():
    assert rankdata(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]
    rng = np.random.default_rng(0)
    values = rng.integers(0, 7, size=200).astype(float)  # many ties
    np.testing.assert_array_equal(rankdata(values), _brute_ranks(values))


def test_spearman_against_reference():
    rng = np.random.default_rng(1)
    a = rng.random((12, 9))
    b = a + 0.5 * rng.random((12, 9))
    b[0, :4] = b[0, 0]  # ties
    ra, rb = _brute_ranks(a), _brute_ranks(b)
    expected = np.corrcoef(ra, rb)[0, 1]
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert spearman(a, np.exp(3 * a)) == pytest.approx(1.0)  # any increasing function
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.ones_like(a)))
    # hand-computed: ranks (1,2,3,4) vs (2,1,4,3): d² = 4, rho = 1 − 6·4 / (4·15) = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)


def test_pool_map_blocks_and_partial_edges():
    m = np.arange(16, dtype=float).reshape(4, 4)
    np.testing.assert_allclose(pool_map(m, 2), [[2.5, 4.5], [10.5, 12.5]])
    m5 = np.arange(25, dtype=float).reshape(5, 5)
    pooled = pool_map(m5, 2)
    assert pooled.shape == (3, 3)
    assert pooled[2, 2] == 24.0  # a 1×1 corner tile
    assert pooled[0, 2] == pytest.approx((4 + 9) / 2)
    np.testing.assert_array_equal(pool_map(m, 1), m)


def test_region_weights_box_identity_geometry():
    # map pixel = photo pixel: an integer box is an exact indicator
    w = region_weights((4, 6), (0, 0, 6, 4), box=(1, 1, 3, 4))
    expected = np.zeros((4, 6))
    expected[1:4, 1:3] = 1
    np.testing.assert_array_equal(w, expected)
    # half-pixel edges count half
    w = region_weights((4, 6), (0, 0, 6, 4), box=(0.5, 0, 1, 1))
    assert w[0, 0] == 0.5 and w.sum() == 0.5


def test_region_weights_scaled_view():
    # 4×4 map over photo region x 100–300, y 50–250: each map pixel is 50×50 photo pixels
    view = (100, 50, 300, 250)
    w = region_weights((4, 4), view, box=(100, 50, 200, 150))
    np.testing.assert_array_equal(w[:2, :2], 1)
    assert w.sum() == 4
    w = region_weights((4, 4), view, box=(125, 50, 200, 100))
    assert w[0, 0] == 0.5 and w[0, 1] == 1.0 and w.sum() == 1.5
    # a box outside the view weighs nothing
    assert region_weights((4, 4), view, box=(0, 0, 90, 40)).sum() == 0


def test_region_weights_mask_equals_box():
    view = (10.0, 5.0, 290.0, 185.0)  # not a whole number of photo pixels per map pixel
    mask = np.zeros((200, 300), dtype=bool)
    mask[40:120, 60:200] = True
    from_mask = region_weights((7, 9), view, mask=mask)
    from_box = region_weights((7, 9), view, box=(60, 40, 200, 120))
    np.testing.assert_allclose(from_mask, from_box, atol=1e-12)
    assert 0 < from_box.sum() < 63


def test_mass_in_region_by_hand():
    m = np.zeros((4, 4))
    m[0, 0], m[3, 3] = 3.0, 1.0
    w = region_weights((4, 4), (0, 0, 4, 4), box=(0, 0, 2, 2))
    assert mass_in_region(m, w) == pytest.approx(0.75)
    assert np.isnan(mass_in_region(np.zeros((4, 4)), w))


def test_peak_point_and_distance():
    m = np.zeros((4, 4))
    m[1, 2] = 5.0
    # 4×4 map over x 100–300, y 50–250: pixel (row 1, col 2) centred at (225, 125)
    assert peak_point(m, (100, 50, 300, 250)) == (225.0, 125.0)
    assert distance_to_region((225, 125), box=(200, 100, 250, 150)) == 0
    assert distance_to_region((225, 125), box=(230, 130, 260, 160)) == pytest.approx(np.hypot(5, 5))
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 5:7] = True  # photo pixels x 5–7, y 2–4
    assert distance_to_region((6.0, 3.0), mask=mask) == 0
    assert distance_to_region((9.0, 3.0), mask=mask) == pytest.approx(2.0)


class _SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_randomised_copy_only_touches_the_copy_and_the_top_layers():
    torch.manual_seed(0)
    net = _SmallNet().eval()
    before = _state(net)
    assert [n for n, _ in randomisable_layers(net)] == ["conv1", "conv2", "fc"]
    clone, names = randomised_copy(net, 2, seed=3)
    assert names == ["conv2", "fc"]
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # the original is untouched
    after = clone.state_dict()
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert torch.equal(after["bn.weight"], before["bn.weight"])
    for key in ("conv2.weight", "conv2.bias", "fc.weight", "fc.bias"):
        assert not torch.allclose(after[key], before[key]), key
        # same scale as the original layer
        assert after[key].std() == pytest.approx(before[key].std(), rel=0.5)
    again, _ = randomised_copy(net, 2, seed=3)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in after.items())
    other, _ = randomised_copy(net, 2, seed=4)
    assert not torch.equal(other.state_dict()["fc.weight"], after["fc.weight"])


# ---------------------------------------------------------------------------------------------
# the spec parser


def _write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _spec(tmp_path: Path, case: str, defaults: str = "samples = 2") -> Path:
    return _write(
        tmp_path,
        f"[defaults]\n{defaults}\n\n[[case]]\n{textwrap.dedent(case)}",
    )


def test_parse_valid_spec_with_overrides(tmp_path):
    path = _spec(
        tmp_path,
        f"""
        name = "coffee-cup"
        image = "{COFFEE}"
        expect_class = ["espresso", 967]
        top_k = 2
        region = [170, 15, 410, 310]
        min_mass = 0.6
        pointing = true
        pointing_tolerance = 15
        golden = "golden/coffee.npy"
        pool = 8
        sanity = {{ layers = "cascade" }}
        samples = 7
        method = "input-x-gradient"
        """,
        defaults='samples = 3\nseed = 5\nnoise = 10\ndevice = "cpu"',
    )
    spec = parse_spec(path)
    assert spec.device == "cpu"
    (case,) = spec.cases
    assert case.settings.samples == 7 and case.settings.seed == 5 and case.settings.noise == 10
    assert case.settings.method == "input-x-gradient" and case.settings.precision == "fp32"
    assert case.image_size == (600, 400)
    assert case.region.box == (170, 15, 410, 310)
    assert case.golden == tmp_path / "golden" / "coffee.npy"
    assert case.min_rank_correlation == check.DEFAULT_GOLDEN_RANK_CORRELATION
    assert case.sanity.layers == "cascade" and case.sanity.max_rank_correlation == 0.5
    assert case.check_names() == [
        "expect_class", "min_mass", "pointing", "min_rank_correlation", "sanity",
    ]  # fmt: skip


def test_image_path_is_relative_to_the_spec(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "c.png").write_bytes(COFFEE.read_bytes())
    path = _write(tmp_path / "sub", '[[case]]\nname = "a"\nimage = "../pics/c.png"\nsanity = true')
    assert parse_spec(path).cases[0].image == tmp_path / "sub" / ".." / "pics" / "c.png"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "region = [1, 2, 3]\nmin_mass = 0.5",
            r'case "coffee-cup": region: expected 4 numbers \[x0, y0, x1, y1\], got 3$',
        ),
        ('region = "cup"\nmin_mass = 0.5', r'case "coffee-cup": region: expected 4 numbers'),
        (
            "region = [300, 10, 200, 50]\nmin_mass = 0.5",
            r'case "coffee-cup": region: box .* needs x0 < x1 and y0 < y1',
        ),
        (
            "region = [10, 10, 700, 50]\nmin_mass = 0.5",
            r'case "coffee-cup": region: box .* goes outside the 600×400 image',
        ),
        ("region = [1, 2, 30, 40]", r'case "coffee-cup": region: needs min_mass and/or pointing'),
        ("min_mass = 0.5", r'case "coffee-cup": min_mass: needs a region'),
        ("region = [1, 2, 30, 40]\nmin_mass = 1.5", r'case "coffee-cup": min_mass: must be in'),
        (
            'region = [1, 2, 30, 40]\npointing = "yes"',
            r'case "coffee-cup": pointing: expected true',
        ),
        ("expect_class = 3\ncolour = 1", r"case \"coffee-cup\": colour: unknown key$"),
        ("expect_class = 3\nmin_mas = 1", r"min_mas: unknown key; did you mean 'min_mass'\?"),
        (
            'expect_class = 3\nsamples = "ten"',
            r'case "coffee-cup": samples: expected an integer, got a string',
        ),
        ("expect_class = 3\nsamples = 0", r'case "coffee-cup": samples: must be >= 1'),
        ('expect_class = 3\nmethod = "magic"', r'case "coffee-cup": method: unknown value'),
        ("expect_class = 3.5", r'case "coffee-cup": expect_class: expected a class index or name'),
        ("top_k = 3", r'case "coffee-cup": top_k: needs expect_class'),
        ("min_rank_correlation = 0.9", r'case "coffee-cup": min_rank_correlation: needs golden'),
        ('sanity = { layers = "first" }', r'case "coffee-cup": sanity.layers: expected "last"'),
        ("sanity = { layer = 1 }", r'case "coffee-cup": sanity.layer: unknown key'),
        ("sanity = 3", r'case "coffee-cup": sanity: expected a table'),
        ("pointing_tolerance = 3", r'case "coffee-cup": pointing_tolerance: needs pointing'),
        ("", r'case "coffee-cup": no checks'),
    ],
)
def test_invalid_case_names_case_and_key(tmp_path, case, message):
    path = _spec(tmp_path, f'name = "coffee-cup"\nimage = "{COFFEE}"\n{case}')
    with pytest.raises(SpecError, match=message) as info:
        parse_spec(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_invalid_spec_structure(tmp_path):
    with pytest.raises(SpecError, match=r'case "cup": image: file not found: .*nothere\.png'):
        parse_spec(_spec(tmp_path, 'name = "cup"\nimage = "nothere.png"\nsanity = true'))
    with pytest.raises(SpecError, match=r"case #1: name: missing"):
        parse_spec(_spec(tmp_path, f'image = "{COFFEE}"\nsanity = true'))
    with pytest.raises(SpecError, match=r'case "cup": image: missing'):
        parse_spec(_spec(tmp_path, 'name = "cup"\nsanity = true'))
    with pytest.raises(SpecError, match=r"defaults: colour: unknown key"):
        parse_spec(_spec(tmp_path, f'name = "a"\nimage = "{COFFEE}"\nsanity = true', "colour=1"))
    with pytest.raises(SpecError, match=r"defaults: noise: expected a number"):
        parse_spec(_spec(tmp_path, f'name = "a"\nimage = "{COFFEE}"\nsanity = true', 'noise="x"'))
    two = f'name = "a"\nimage = "{COFFEE}"\nsanity = true\n[[case]]\n' + (
        f'name = "a"\nimage = "{COFFEE}"\nsanity = true'
    )
    with pytest.raises(SpecError, match=r'case "a": name: used by an earlier case'):
        parse_spec(_spec(tmp_path, two))
    two = f'name = "a"\nimage = "{COFFEE}"\ngolden = "g.npy"\n[[case]]\n' + (
        f'name = "b"\nimage = "{CHELSEA}"\ngolden = "./g.npy"'
    )
    with pytest.raises(SpecError, match=r'case "b": golden: ./g.npy is also the golden of'):
        parse_spec(_spec(tmp_path, two))
    with pytest.raises(SpecError, match=r"spec: cases: unknown key"):
        parse_spec(_write(tmp_path, "[[cases]]\nname = 'a'"))
    with pytest.raises(SpecError, match=r"spec: case: no \[\[case\]\]"):
        parse_spec(_write(tmp_path, "[defaults]\nsamples = 3"))
    with pytest.raises(SpecError, match=r"not valid TOML"):
        parse_spec(_write(tmp_path, "[[case]\nname = "))
    with pytest.raises(SpecError, match=r"spec file not found"):
        parse_spec(tmp_path / "missing.toml")


def test_invalid_mask(tmp_path):
    from PIL import Image

    Image.new("L", (60, 40), 255).save(tmp_path / "small.png")
    Image.new("L", (600, 400), 0).save(tmp_path / "empty.png")
    for mask, message in (
        ("small.png", r'case "m": mask: .*small\.png is 60×40 but the image is 600×400'),
        ("empty.png", r'case "m": mask: .*empty\.png is empty'),
        ("nope.png", r'case "m": mask: file not found'),
    ):
        path = _spec(tmp_path, f'name = "m"\nimage = "{COFFEE}"\nmask = "{mask}"\npointing = true')
        with pytest.raises(SpecError, match=message):
            parse_spec(path)
    path = _spec(
        tmp_path, f'name = "m"\nimage = "{COFFEE}"\nmask = "small.png"\nregion = [0, 0, 1, 1]'
    )
    with pytest.raises(SpecError, match=r'case "m": mask: give region .* or mask, not both'):
        parse_spec(path)


def test_cli_invalid_spec_exits_2_with_one_line(tmp_path):
    path = _spec(tmp_path, f'name = "coffee-cup"\nimage = "{COFFEE}"\nregion = [1, 2, 3]')
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f'smoothgrad: error: {path}: case "coffee-cup": region: '
        "expected 4 numbers [x0, y0, x1, y1], got 3"
    ]
    result = CliRunner().invoke(app, ["check", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "spec file not found" in result.stderr
    path = _spec(tmp_path, f'name = "c"\nimage = "{COFFEE}"\nexpect_class = 1')
    result = CliRunner().invoke(app, ["check", str(path), "--device", "gpu9"])
    assert result.exit_code == 2
    assert result.stderr.startswith("smoothgrad: error: --device: unknown device 'gpu9'")


# ---------------------------------------------------------------------------------------------
# running cases on the sample photos (the embedded model, loaded once)


@pytest.fixture(scope="module")
def check_model():
    """The embedded model for this module only: the checker prepares it in place, so it is
    not conftest's shared ``lite0``."""
    return load_model(EMBEDDED)


@pytest.fixture()
def loader(check_model):
    def load(name, weights):
        assert (name, weights) == (EMBEDDED, None)
        return check_model

    return load


def _by(run):
    return {(r.case, r.check): r for r in run.results}


def test_verdicts_pass_and_fail(tmp_path, loader, capsys):
    from PIL import Image

    cup = np.zeros((400, 600), dtype=np.uint8)
    cup[15:310, 170:410] = 255  # the same pixels as the box [170, 15, 410, 310]
    Image.fromarray(cup).save(tmp_path / "cup.png")
    # coffee view (the 224 crop) is x 125–475, y 25–375 of the 600×400 photo
    path = _write(
        tmp_path,
        f"""
        [defaults]
        samples = 3
        [[case]]
        name = "cup"
        image = "{COFFEE}"
        expect_class = "espresso"
        min_probability = 0.5
        region = [170, 15, 410, 310]
        min_mass = 0.6
        pointing = true
        [[case]]
        name = "corner"
        image = "{COFFEE}"
        region = [430, 330, 475, 375]
        min_mass = 0.2
        pointing = true
        [[case]]
        name = "cup-mask"
        image = "{COFFEE}"
        mask = "cup.png"
        min_mass = 0.6
        pointing = true
        [[case]]
        name = "near-corner"
        image = "{COFFEE}"
        region = [430, 330, 475, 375]
        pointing = true
        pointing_tolerance = 400
        [[case]]
        name = "outside"
        image = "{COFFEE}"
        region = [0, 0, 100, 20]
        min_mass = 0.1
        [[case]]
        name = "wrong-class"
        image = "{COFFEE}"
        expect_class = "goldfish"
        top_k = 5
        [[case]]
        name = "cat"
        image = "{CHELSEA}"
        expect_class = ["tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"]
        top_k = 3
        """,
    )
    spec = parse_spec(path)
    run = Checker(spec, device="cpu", loader=loader).run()
    by = _by(run)
    assert [(r.case, r.check, r.passed) for r in run.results] == [
        ("cup", "expect_class", True),
        ("cup", "min_probability", True),
        ("cup", "min_mass", True),
        ("cup", "pointing", True),
        ("corner", "min_mass", False),
        ("corner", "pointing", False),
        ("cup-mask", "min_mass", True),
        ("cup-mask", "pointing", True),
        ("near-corner", "pointing", True),
        ("outside", "min_mass", False),
        ("wrong-class", "expect_class", False),
        ("cat", "expect_class", True),
    ]
    assert by["cup", "expect_class"].value == 1
    assert by["cup", "min_probability"].value > 0.9
    assert by["cup", "min_mass"].value > 0.65  # the box is 56 % of the view
    assert by["cup", "min_mass"].details["area_share"] == pytest.approx(0.558, abs=1e-3)
    assert by["corner", "min_mass"].value < 0.05
    assert by["corner", "pointing"].value > 50  # px from the box
    assert by["cup-mask", "min_mass"].value == pytest.approx(by["cup", "min_mass"].value)
    assert by["near-corner", "pointing"].value == by["corner", "pointing"].value
    assert by["outside", "min_mass"].value == 0
    assert "0% of the region is in the model's view" in by["outside", "min_mass"].message
    assert "expected 'goldfish' within the top 5" in by["wrong-class", "expect_class"].message
    assert "'espresso'" in by["wrong-class", "expect_class"].message
    assert by["cat", "expect_class"].value <= 3
    assert run.exit_code == 1


def test_one_map_per_image_and_settings(tmp_path, loader, monkeypatch):
    calls = []
    original = engine.SmoothGrad.attribute

    def counting(self, model, x, target, **kw):
        calls.append(int(torch.as_tensor(target).reshape(-1)[0]))
        return original(self, model, x, target, **kw)

    monkeypatch.setattr(engine.SmoothGrad, "attribute", counting)
    path = _write(
        tmp_path,
        f"""
        [defaults]
        samples = 1
        [[case]]
        name = "a"
        image = "{COFFEE}"
        region = [170, 15, 410, 310]
        min_mass = 0.1
        pointing = true
        [[case]]
        name = "b"
        image = "{COFFEE}"
        region = [0, 0, 600, 400]
        min_mass = 0.99
        [[case]]
        name = "c"
        image = "{COFFEE}"
        region = [0, 0, 600, 400]
        min_mass = 0.99
        samples = 2
        """,
    )
    run = Checker(parse_spec(path), device="cpu", loader=loader).run()
    assert run.exit_code == 0
    assert len(calls) == 2  # a and b share one map; c has other settings
    assert _by(run)["b", "min_mass"].value == pytest.approx(1.0)


def test_image_that_fails_to_load_fails_its_case(tmp_path, loader):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    path = _write(
        tmp_path,
        f"""
        [defaults]
        samples = 1
        [[case]]
        name = "broken"
        image = "broken.png"
        expect_class = "espresso"
        sanity = true
        [[case]]
        name = "fine"
        image = "{COFFEE}"
        expect_class = "espresso"
        """,
    )
    run = Checker(parse_spec(path), device="cpu", loader=loader).run()
    by = _by(run)
    assert not by["broken", "expect_class"].passed and not by["broken", "sanity"].passed
    assert "image could not be loaded" in by["broken", "sanity"].message
    assert by["fine", "expect_class"].passed
    assert run.exit_code == 1


def test_unknown_class_name_is_a_spec_error(tmp_path, loader):
    path = _spec(tmp_path, f'name = "c"\nimage = "{COFFEE}"\nexpect_class = "expresso"')
    with pytest.raises(SpecError, match=r"case \"c\": expect_class: unknown class name 'expresso'"):
        Checker(parse_spec(path), device="cpu", loader=loader).run()
    path = _spec(tmp_path, f'name = "c"\nimage = "{COFFEE}"\nsanity = true', 'target = "nope"')
    with pytest.raises(SpecError, match=r"defaults: target: unknown class name"):
        Checker(parse_spec(path), device="cpu", loader=loader).run()
    path = _spec(tmp_path, f'name = "c"\nimage = "{COFFEE}"\nsanity = {{ layers = 999 }}')
    with pytest.raises(SpecError, match=r'case "c": sanity.layers: 999 asked for, but'):
        Checker(parse_spec(path), device="cpu", loader=loader).run()
    path = _spec(tmp_path, f'name = "c"\nimage = "{COFFEE}"\nsanity = true', 'device = "tpu"')
    with pytest.raises(SpecError, match=r"defaults: device: unknown device 'tpu'"):
        Checker(parse_spec(path), loader=loader).run()


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_sanity_randomises_a_copy_never_the_model(tmp_path, check_model, loader):
    weights_file = embedded_weights_file()
    file_before = _digest(weights_file)
    Checker(
        parse_spec(_spec(tmp_path, f'name = "p"\nimage = "{COFFEE}"\nexpect_class = 1')),
        device="cpu",
        loader=loader,
    ).prepare()  # fold BatchNorm etc. before comparing
    params_before = _state(check_model.model)
    path = _write(
        tmp_path,
        f"""
        [defaults]
        samples = 2
        target = "espresso"
        [[case]]
        name = "last"
        image = "{COFFEE}"
        sanity = {{ layers = "last", max_rank_correlation = 0.9 }}
        [[case]]
        name = "cascade"
        image = "{COFFEE}"
        sanity = {{ layers = "cascade", max_rank_correlation = 0.5 }}
        [[case]]
        name = "impossible"
        image = "{COFFEE}"
        sanity = {{ layers = 1, max_rank_correlation = -1 }}
        """,
    )
    run = Checker(parse_spec(path), device="cpu", loader=loader).run()
    by = _by(run)
    # randomising the classifier changes the map: far from the rank correlation of 1 that
    # the same model, seed and noise give
    assert by["last", "sanity"].passed and by["last", "sanity"].value < 0.8
    assert by["cascade", "sanity"].passed and by["cascade", "sanity"].value < 0.3
    assert by["cascade", "sanity"].value < by["last", "sanity"].value
    assert not by["impossible", "sanity"].passed
    assert "not explaining this model" in by["impossible", "sanity"].message
    assert by["impossible", "sanity"].value == pytest.approx(by["last", "sanity"].value)
    # nothing was written back into the user's model or its file
    for key, value in check_model.model.state_dict().items():
        assert torch.equal(value.cpu(), params_before[key].cpu()), key
    assert _digest(weights_file) == file_before
    assert run.exit_code == 1


def test_update_golden_then_check(tmp_path, loader, capsys):
    path = _write(
        tmp_path,
        f"""
        [defaults]
        samples = 1
        [[case]]
        name = "coffee"
        image = "{COFFEE}"
        golden = "golden/coffee.npy"
        min_rank_correlation = 0.99
        max_mean_abs_diff = 0.001
        [[case]]
        name = "cat"
        image = "{CHELSEA}"
        target = "tiger cat"
        golden = "golden/cat.npy"
        """,
    )
    golden = tmp_path / "golden" / "coffee.npy"
    # a normal check never writes goldens: a missing one fails and says what to run
    assert check_main(path, device="cpu", loader=loader) == 1
    captured = capsys.readouterr()
    assert not golden.exists()
    assert "--update-golden" in captured.out

    assert check_main(path, device="cpu", update_golden=True, loader=loader) == 0
    captured = capsys.readouterr()
    assert f"updated golden: {golden}" in captured.err
    saved = np.load(golden)
    assert saved.shape == (3, 224, 224) and saved.dtype == np.float32
    assert not list(golden.parent.glob(".*.tmp"))  # atomic write leaves no temp files

    # same device and seed: the map is reproduced exactly
    assert check_main(path, device="cpu", json_lines=True, loader=loader) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    values = {(r["case"], r["check"]): r["value"] for r in rows}
    assert values["coffee", "min_rank_correlation"] == pytest.approx(1.0)
    assert values["coffee", "max_mean_abs_diff"] == 0.0
    assert values["cat", "min_rank_correlation"] == pytest.approx(1.0)
    assert all(r["passed"] for r in rows)

    # a golden map from another image fails
    (tmp_path / "golden" / "coffee.npy").write_bytes((tmp_path / "golden" / "cat.npy").read_bytes())
    run = Checker(parse_spec(path), device="cpu", loader=loader).run()
    by = _by(run)
    assert not by["coffee", "min_rank_correlation"].passed
    assert by["coffee", "min_rank_correlation"].value < 0.5
    assert not by["coffee", "max_mean_abs_diff"].passed
    assert by["cat", "min_rank_correlation"].passed

    # a golden of the wrong shape fails with a clear message
    np.save(golden, np.zeros((3, 10, 10), dtype=np.float32))
    run = Checker(parse_spec(path), device="cpu", loader=loader).run()
    assert "has shape (3, 10, 10)" in _by(run)["coffee", "min_rank_correlation"].message


def test_junit_and_json_reports(tmp_path, loader, capsys):
    path = _write(
        tmp_path,
        f"""
        [defaults]
        samples = 1
        [[case]]
        name = "cup"
        image = "{COFFEE}"
        expect_class = "espresso"
        region = [170, 15, 410, 310]
        pointing = true
        [[case]]
        name = "wrong"
        image = "{COFFEE}"
        expect_class = "goldfish"
        min_probability = 0.5
        """,
    )
    report = tmp_path / "reports" / "junit.xml"
    assert check_main(path, junit=report, json_lines=True, device="cpu", loader=loader) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["case"], r["check"], r["passed"]) for r in rows] == [
        ("cup", "expect_class", True),
        ("cup", "pointing", True),
        ("wrong", "expect_class", False),
        ("wrong", "min_probability", False),
    ]
    assert rows[0]["class"] == "espresso" and rows[0]["threshold"] == 1

    root = ET.parse(report).getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    assert root.get("tests") == "4" and root.get("failures") == "2"
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("cup", "expect_class"), ("cup", "pointing"),
        ("wrong", "expect_class"), ("wrong", "min_probability"),
    ]  # fmt: skip
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("classname") for c in failed] == ["wrong", "wrong"]
    assert "goldfish" in failed[0].find("failure").get("message")


def test_junit_xml_escapes_names():
    run = check.CheckRun(
        results=[check.CheckResult('a "<b>" & c', "pointing", False, "x", "y", message="<&>")],
        seconds=1.0,
        device="cpu",
    )
    root = ET.fromstring(junit_xml(run))
    case = root.find("testsuite/testcase")
    assert case.get("classname") == 'a "<b>" & c'
    assert case.find("failure").get("message") == "<&>"


def test_example_spec_passes_through_the_cli(tmp_path):
    report = tmp_path / "junit.xml"
    result = CliRunner().invoke(app, ["check", str(EXAMPLE), "--junit", str(report)])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    suite = ET.parse(report).getroot().find("testsuite")
    assert int(suite.get("tests")) >= 8 and suite.get("failures") == "0"
    names = {c.get("name") for c in suite.findall("testcase")}
    assert {"expect_class", "min_mass", "pointing", "sanity"} <= names


def test_explain_save_raw_serves_as_golden(tmp_path, loader):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["explain", str(COFFEE), "-n", "2", "--seed", "4", "--save-raw", "--batch-size", "3",
         "--precision", "fp32", "-o", str(out), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    path = _write(
        tmp_path,
        f"""
        [defaults]
        samples = 2
        seed = 4
        [[case]]
        name = "coffee"
        image = "{COFFEE}"
        golden = "out/coffee.png.raw.npy"
        min_rank_correlation = 0.999
        max_mean_abs_diff = 1e-4
        """,
    )
    run = Checker(parse_spec(path), device="cpu", loader=loader).run()
    assert run.exit_code == 0, [r.message for r in run.results]
    assert _by(run)["coffee", "min_rank_correlation"].value > 0.999
