"""Beyond one process, in this process: the splits (``shard.py``), ``--shard`` and
``--files-from``. The manifest's parts are in ``test_scale_parts.py``, torchrun itself in
``test_scale_torchrun.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from smoothgrad_cli import shard
from smoothgrad_cli.cli import app
from smoothgrad_cli.explain import ExplainOptions, Plan
from smoothgrad_cli.manifest import Manifest, read_manifest
from smoothgrad_cli.settings import MapSettings

FAST = ["-n", "2", "--batch-size", "4", "--device", "cpu", "-q"]
ROOT = Path(__file__).resolve().parents[1]

#: names a shell list must carry through untouched
ODD = ["a b/with space.png", "ünï/cödé é.png", "plain/x.png", "plain/y.png", "z.png", "dash -.png"]


def explain(*args: str, input: bytes | None = None):
    return CliRunner().invoke(app, ["explain", *args], input=input, catch_exceptions=False)


def make_images(folder: Path, names: list[str], side: int = 24) -> list[Path]:
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def maps_below(out: Path) -> dict[str, bytes]:
    """Every output below ``out`` (manifests aside), by its place, with its bytes."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith("manifest")
    }


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """A folder of odd names and its clean single-process run: (folder, output)."""
    root = tmp_path_factory.mktemp("odd")
    src, out = root / "in", root / "full"
    make_images(src, ODD)
    result = explain(str(src), "-o", str(out), *FAST)
    assert result.exit_code == 0, result.output
    return src, out


# --- the splits -------------------------------------------------------------------------------


def spread(values: list[float]) -> float:
    """(max − min) / max: how far the slowest part is from the fastest."""
    return (max(values) - min(values)) / max(values)


def test_deal_evens_the_work_left_whatever_bounds_it():
    """Half the images done (the first half by name, as a run killed half-way leaves them),
    sizes from thumbnails to photos in clusters (a folder of each): every rank's share of the
    images to do and of their bytes is within 10 % of the others', so ranks end together
    whether the model or decoding bounds them. A split by count alone is far off."""
    rng = np.random.default_rng(1)
    n = 400
    sizes = [int(rng.integers(2_000, 9_000)) for _ in range(n // 2)]
    sizes += [int(rng.integers(2_000_000, 9_000_000)) for _ in range(n // 2)]
    todo = [i >= n // 4 for i in range(n)]  # the first quarter of thumbnails… and so on: done
    for ranks in (2, 3, 8):
        owner = shard.deal(todo, sizes, ranks)
        count = [sum(1 for i in range(n) if todo[i] and owner[i] == r) for r in range(ranks)]
        size = [sum(sizes[i] for i in range(n) if todo[i] and owner[i] == r) for r in range(ranks)]
        assert max(count) - min(count) <= 1
        for model_share in (0.0, 0.5, 0.9, 1.0):  # time = model part + decode part
            time = [
                model_share * c / sum(count) + (1 - model_share) * s / sum(size)
                for c, s in zip(count, size, strict=True)
            ]
            assert spread(time) < 0.10, (ranks, model_share, time)
        skipped = [sum(1 for i in range(n) if not todo[i] and owner[i] == r) for r in range(ranks)]
        assert max(skipped) - min(skipped) <= 1
    # the split by count, contiguous over the sorted list: rank 0 gets the done quarter
    first = sum(todo[: n // 2])
    assert spread([first, sum(todo) - first]) > 0.3


def test_a_plan_with_half_the_images_done_is_split_within_ten_percent(tmp_path):
    """The real path: a folder of images of very different sizes, half explained already
    (``--files-from`` every other one), planned with ``--skip-existing`` and dealt to 2 and 3
    ranks: the images left and their bytes within 10 % between ranks."""
    src, out = tmp_path / "in", tmp_path / "out"
    names = [f"{i:02d}.png" for i in range(60)]
    for i, name in enumerate(names):  # 16 to 128 pixels a side: 1 to 49 KB
        make_images(src, [name], side=16 + i * 7919 % 113)
    listed = tmp_path / "half.txt"
    listed.write_text("".join(f"{src / name}\n" for name in names[::2]))
    plain = ["--smoothing", "none", "-n", "1", "--batch-size", "4", "--device", "cpu", "-q"]
    assert explain("--files-from", str(listed), "-o", str(out), *plain).exit_code == 0
    options = ExplainOptions(
        inputs=[str(src)],
        settings=MapSettings(smoothing="none", samples=1, batch_size=4),
        output=out,
        device="cpu",
        skip_existing=True,
    )
    plan = Plan.make(options).without_done(options, "fp32")
    assert (len(plan.todo), len(plan.skipped)) == (30, 30)
    for ranks in (2, 3):
        parts = [plan.part(r, ranks) for r in range(ranks)]
        assert sorted(i.relative for p in parts for i in p.todo) == sorted(
            i.relative for i in plan.todo
        )
        assert sum(len(p.skipped) for p in parts) == 30
        assert spread([len(p.todo) for p in parts]) <= 0.10
        assert spread([sum(p.sizes) for p in parts]) <= 0.10
        assert [len(p.missing) for p in parts] == [len(plan.missing)] + [0] * (ranks - 1)


def test_hash_shards_are_even_stable_and_a_partition():
    names = [Path(f"cam{i % 7}/{i:06d}.jpg") for i in range(30_000)]
    owner = [shard.bucket(name, 3) for name in names]
    for done in (0, len(names) // 2):  # and with the first half done, as a killed run leaves it
        left = [sum(1 for o in owner[done:] if o == s) for s in range(3)]
        assert spread(left) < 0.10, left
    # an image's shard is its own: more files, or a list that is sorted otherwise, move none
    more = names + [Path(f"new/{i}.jpg") for i in range(1000)]
    assert [shard.bucket(n, 3) for n in more[: len(names)]] == owner
    assert shard.bucket(Path("cam1/000001.jpg"), 3) == owner[1]


def _slurm(task: int, count: int, first: int, step: int) -> dict[str, str]:
    return {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_COUNT": str(count),
        "SLURM_ARRAY_TASK_MIN": str(first),
        "SLURM_ARRAY_TASK_STEP": str(step),
    }


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, "3/4"),
        (_slurm(task=5, count=3, first=1, step=2), "2/3"),
        ({"RANK": "1", "WORLD_SIZE": "2"}, "1/2"),  # a launcher without a rendezvous
        ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, None),
    ],
)
def test_shard_auto_reads_job_arrays_and_launchers(env, expected):
    found, warning = shard.parse("auto", env)
    assert (str(found) if found else None) == expected
    assert warning is None


def test_shard_auto_outside_any_job_takes_everything_and_says_so():
    found, warning = shard.parse("auto", {})
    assert found is None and "takes all the images" in warning


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b", "0/0"])
def test_bad_shards_are_usage_errors(tmp_path, text):
    result = explain(str(tmp_path), "--shard", text, "-o", str(tmp_path / "o"), *FAST)
    assert result.exit_code == 2
    assert "--shard" in result.stderr


def test_uneven_slurm_array_is_refused():
    with pytest.raises(shard.ShardError, match="evenly spaced"):
        shard.parse("auto", _slurm(task=4, count=3, first=1, step=2))


# --- --shard I/N from the command line --------------------------------------------------------


def test_three_shards_equal_the_full_run_byte_for_byte(odd_folder, tmp_path):
    src, full = odd_folder
    out = tmp_path / "out"
    inputs: list[str] = []
    for i in range(3):
        result = explain(str(src), "-o", str(out), *FAST, "--json", "--shard", f"{i}/3")
        assert result.exit_code == 0, result.output
        inputs += [x["input"] for x in json_lines(result.stdout)]
        assert (out / f"manifest.shard-{i}-of-3.jsonl").exists()
    assert sorted(inputs) == sorted(str(src / name) for name in ODD)  # each once
    assert maps_below(out) == maps_below(full)
    assert not (out / "manifest.jsonl").exists()

    merged = CliRunner().invoke(app, ["manifest", "merge", str(out)])
    assert merged.exit_code == 0, merged.output
    assert "3 parts (6 lines) merged" in merged.stderr
    entries = read_manifest(out / "manifest.jsonl")
    assert sorted(e["relative"] for e in entries) == sorted(ODD)
    assert {e["part"] for e in entries} == {"shard-0-of-3", "shard-1-of-3", "shard-2-of-3"}
    assert not list(out.glob("manifest.*.jsonl"))


def test_a_shard_resumes_from_its_part_and_a_whole_run_folds_the_parts(odd_folder, tmp_path):
    src, full = odd_folder
    out = tmp_path / "out"
    for i in range(2):
        assert explain(str(src), "-o", str(out), *FAST, "--shard", f"{i}/2").exit_code == 0
    again = explain(str(src), "-o", str(out), *FAST, "--json", "--shard", "1/2", "--skip-existing")
    assert {x["status"] for x in json_lines(again.stdout)} == {"skipped"}
    whole = explain(str(src), "-o", str(out), *FAST, "--json", "--skip-existing")
    assert whole.exit_code == 0, whole.output
    assert [x["status"] for x in json_lines(whole.stdout)] == ["skipped"] * len(ODD)
    assert sorted(p.name for p in out.glob("manifest*")) == ["manifest.jsonl"]
    assert len(read_manifest(out / "manifest.jsonl")) == len(ODD)


def test_the_same_shard_twice_at_once_is_refused(odd_folder, tmp_path):
    src, _ = odd_folder
    out = tmp_path / "out"
    held = Manifest(out / "manifest.shard-0-of-2.jsonl", {}, part=True)  # a shard running
    try:
        result = explain(str(src), "-o", str(out), *FAST, "--shard", "0/2")
    finally:
        held.close()
    assert result.exit_code == 2
    assert "is being written by another process: shard 0/2 of this job" in result.stderr
    assert not list(out.rglob("*.map.png"))


# --- --files-from ---------------------------------------------------------------------------


@pytest.mark.parametrize("null", [False, True])
def test_files_from_stdin_with_odd_names_mirrors_below_the_common_root(odd_folder, tmp_path, null):
    src, full = odd_folder
    out = tmp_path / "out"
    sep = b"\0" if null else b"\n"
    listing = b"".join(os.fsencode(src / name) + sep for name in ODD)
    args = ["--files-from", "-", "-o", str(out), *FAST, "--json"] + (["-0"] if null else [])
    result = explain(*args, input=listing + sep)  # an empty entry at the end is passed over
    assert result.exit_code == 0, result.output
    assert sorted(x["input"] for x in json_lines(result.stdout)) == sorted(
        str(src / n) for n in ODD
    )
    assert maps_below(out) == maps_below(full)  # the same names below the same root


def test_files_from_a_file_with_a_newline_in_a_name_needs_dash_0(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    (path,) = make_images(src, ["new\nline.png"])
    listed = tmp_path / "list"
    listed.write_bytes(os.fsencode(path) + b"\0")
    refused = explain("--files-from", str(listed), "-o", str(out), *FAST)
    assert refused.exit_code == 2 and "NUL-separated: add -0" in refused.stderr
    result = explain("--files-from", str(listed), "-0", "-o", str(out), *FAST, "--json")
    assert result.exit_code == 0, result.output
    assert (out / "new\nline.png.map.png").is_file()


def test_files_from_an_empty_list_is_nothing_to_do_and_bad_lists_say_so(tmp_path):
    empty = explain("--files-from", "-", "-o", str(tmp_path / "out"), *FAST, input=b"")
    assert empty.exit_code == 0, empty.output
    assert "0 images explained" in empty.stderr
    missing = explain("--files-from", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), *FAST)
    assert missing.exit_code == 2 and "cannot read" in missing.stderr
    lonely = explain(str(tmp_path), "-0", "-o", str(tmp_path / "o"), *FAST)
    assert lonely.exit_code == 2 and "give --files-from" in lonely.stderr
