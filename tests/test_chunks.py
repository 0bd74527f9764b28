"""Full chunks across image boundaries, and maps that do not depend on where chunks fall.

- the pipeline never runs a partial chunk except the run's last: the chunk sizes the base
  method sees over a CLI run are counted;
- the engine's stream (``SmoothGrad.stream``) gives every image the same map however its
  images are fed (one at a time, in pairs, all at once): bitwise, as the chunks are the same;
- every chunk size gives the same map: bitwise for a model whose per-row arithmetic does not
  depend on the batch size (an elementwise one: what is left to differ is the reduction, and
  it is in a fixed order), to float tolerance for a convolutional network, whose CPU kernels
  round differently at different batch sizes (measured: up to 5e-7 of the map's scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from smoothgrad_cli import engine
from smoothgrad_cli.cli import app
from smoothgrad_cli.engine import stream as stream_module

SMOOTHINGS = ("smoothgrad", "smoothgrad-sq", "vargrad")


class _Counting(engine.Gradient):
    """The plain gradient, counting the rows of every chunk it is given."""

    calls: list[int] = []

    def attribute(self, model, x, target, precision="fp32"):
        type(self).calls.append(x.shape[0])
        return super().attribute(model, x, target, precision)


class Elementwise(nn.Module):
    """Scores whose input gradient is elementwise in x (cos and a product with fixed weights):
    each row's gradient is the same arithmetic whatever the batch around it."""

    def __init__(self, shape=(3, 6, 6), classes: int = 3):
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.w = nn.Parameter(torch.randn((classes, *shape), generator=generator))

    def forward(self, x):
        return torch.stack(
            [(torch.sin(x) * w + x * x * w.abs()).flatten(1).sum(1) for w in self.w], dim=1
        )


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    return engine.prepare_model(net, "cpu", input_shape=(3, 6, 6))


def inputs(n: int = 4, seed: int = 2) -> torch.Tensor:
    scale = 0.5 + torch.arange(n, dtype=torch.float32)[:, None, None, None]
    return torch.randn((n, 3, 6, 6), generator=torch.Generator().manual_seed(seed)) * scale


def smoother(smoothing="smoothgrad", samples=5, batch_size=None, base=None):
    return engine.SmoothGrad(
        base or engine.Gradient(),
        smoothing=smoothing,
        samples=samples,
        seed=4,
        batch_size=batch_size,
    )


def streamed(sg: engine.SmoothGrad, model, x, target, groups) -> torch.Tensor:
    """Maps from feeding ``x`` in groups of the given sizes, then finishing."""
    stream = sg.stream(model)
    out, at = [], 0
    for size in groups:
        out.append(stream.feed(x[at : at + size], target[at : at + size]))
        at += size
    out.append(stream.finish())
    assert stream.pending == 0
    return torch.cat(out)


def layouts(rows: int, images: int) -> list[int]:
    """Chunk sizes that cut the rows every way: one row, a few, a prime, one image, more
    than two images, everything at once."""
    return sorted({1, 2, 3, 7, rows, 2 * rows + 1, rows * images})


# --- the engine: layouts ----------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("exact", [True, False], ids=["elementwise-bitwise", "conv-rounding"])
def test_every_chunk_layout_gives_the_same_map(smoothing, exact):
    """Bitwise on the elementwise model; to float rounding on the conv net, whose kernels
    round differently at different batch sizes."""
    model, samples = (Elementwise(), 5) if exact else (conv_net(), 6)
    x, target = inputs(), torch.tensor([0, 2, 1, 0])
    maps = {
        chunk: smoother(smoothing, samples, chunk).attribute(model, x, target)
        for chunk in layouts(samples, x.shape[0])
    }
    first = maps[1]
    scale = float(first.abs().max())
    for chunk, got in maps.items():
        if exact:
            assert torch.equal(got, first), f"chunk {chunk}"
        else:
            torch.testing.assert_close(
                got, first, rtol=1e-5, atol=1e-6 * scale, msg=f"chunk {chunk}"
            )


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 20])
def test_how_images_are_fed_never_changes_a_map(chunk):
    """The same chunk size, images fed one by one, in pairs, unevenly or all at once: the
    chunks are the same rows, so the maps are the same bits, and they come out in order."""
    model, x, target = conv_net(), inputs(5), torch.tensor([0, 1, 2, 0, 1])
    sg = smoother("vargrad", 4, chunk)
    together = sg.attribute(model, x, target)
    for groups in ([1] * 5, [2, 2, 1], [3, 2], [1, 4], [5]):
        assert torch.equal(streamed(sg, model, x, target, groups), together), groups


def test_an_image_gets_its_map_whatever_came_before_it():
    """Other images before it shift where chunks cut its rows; on an elementwise model that
    changes no bit, on a conv net nothing beyond rounding."""
    x, target = inputs(4), torch.tensor([1, 0, 2, 1])
    for model, exact in ((Elementwise(), True), (conv_net(), False)):
        sg = smoother("smoothgrad", 5, 3)
        alone = sg.attribute(model, x[3:], target[3:])[0]
        for before in range(1, 4):
            got = sg.attribute(model, x[3 - before :], target[3 - before :])[-1]
            if exact:
                assert torch.equal(got, alone)
            else:
                scale = float(alone.abs().max())
                torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-6 * scale)


def test_maps_come_out_as_their_last_row_runs(monkeypatch):
    model, x, target = Elementwise(), inputs(3), torch.tensor([0, 1, 2])
    _Counting.calls = []
    stream = smoother("smoothgrad", 5, 4, base=_Counting()).stream(model)
    assert stream.feed(x[:1], target[:1]).shape[0] == 0  # 5 rows: one chunk of 4, 1 left
    assert _Counting.calls == [4] and stream.pending == 1
    first = stream.feed(x[1:2], target[1:2])  # 1 + 5 rows: a chunk finishes image 0
    assert first.shape == (1, 3, 6, 6) and stream.pending == 1
    assert stream.feed(x[2:], target[2:]).shape[0] == 1  # 2 + 5 rows: chunk 4 ends image 1
    assert _Counting.calls == [4, 4, 4]
    last = stream.finish()
    assert _Counting.calls == [4, 4, 4, 3] and last.shape[0] == 1 and stream.pending == 0
    assert stream.finish().shape[0] == 0


def test_blocks_of_rows_when_an_image_rows_do_not_fit_the_store(monkeypatch):
    """Many samples of a large input: the fixed-order sum goes block by block, still the same
    whatever the chunk."""
    model, x, target = Elementwise(), inputs(2), torch.tensor([0, 1])
    whole = {s: smoother(s, 7, 5).attribute(model, x, target) for s in SMOOTHINGS}
    row_bytes = 4 * 3 * 6 * 6
    monkeypatch.setattr(stream_module, "_ROW_STORE_BYTES", 3 * row_bytes)  # blocks of 3 rows
    for s in SMOOTHINGS:
        blocks = [smoother(s, 7, chunk).attribute(model, x, target) for chunk in (1, 2, 5, 14)]
        for got in blocks[1:]:
            assert torch.equal(got, blocks[0])
        torch.testing.assert_close(blocks[0], whole[s], rtol=1e-5, atol=1e-6)


def test_a_stream_takes_one_input_shape():
    stream = smoother().stream(Elementwise())
    stream.feed(inputs(1), [0])
    with pytest.raises(ValueError, match="one shape"):
        stream.feed(torch.zeros(1, 3, 5, 5), [0])


# --- the pipeline: full chunks only, but the run's last ---------------------------------------


def _folder(tmp_path: Path, count: int, broken: tuple[int, ...] = ()) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(count):
        if i in broken:
            (src / f"{i:02d}.png").write_bytes(b"not a png")
            continue
        pixels = np.random.default_rng(i).integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src / f"{i:02d}.png")
    return src


@pytest.mark.parametrize(
    ("extra", "rows_per_image", "chunk"),
    [
        ([], 5, 4),  # one image per engine call: 5 rows = 4 + 1 before
        (["--top-k", "2"], 10, 4),  # two classes: 10 rows an image
        ([], 5, 12),  # three images per call (a GPU's case): 15 rows = 12 + 3 before
    ],
)
def test_a_cli_run_has_full_chunks_but_the_last(
    tmp_path, monkeypatch, extra, rows_per_image, chunk
):
    src = _folder(tmp_path, 8, broken=(3,))  # 7 images and a broken file among them
    monkeypatch.setitem(engine.BASE_METHODS, "gradient", _Counting)
    _Counting.calls = []
    args = ["explain", str(src), "-o", str(tmp_path / "out"), "-n", "5", "-q"]
    result = CliRunner().invoke(app, [*args, "--batch-size", str(chunk), *extra])
    assert result.exit_code == 1, result.output  # the broken file
    total = 7 * rows_per_image
    assert sum(_Counting.calls) == total
    assert _Counting.calls[:-1] == [chunk] * (len(_Counting.calls) - 1)
    assert _Counting.calls[-1] == total - chunk * (len(_Counting.calls) - 1)
    assert len(list((tmp_path / "out").glob("*.map.png"))) == total // 5  # a map per class


def test_cli_maps_are_the_engines_whatever_the_chunk(tmp_path):
    """Raw maps saved by runs at chunk sizes that cut images differently agree."""
    src = _folder(tmp_path, 4)
    saved = {}
    for chunk in (1, 3, 5, 11):
        out = tmp_path / f"out{chunk}"
        args = ["explain", str(src), "-o", str(out), "-n", "5", "-q", "--save-raw"]
        result = CliRunner().invoke(app, [*args, "--batch-size", str(chunk)])
        assert result.exit_code == 0, result.output
        saved[chunk] = [np.load(out / f"{i:02d}.png.raw.npy") for i in range(4)]
    for maps in saved.values():
        for got, want in zip(maps, saved[5], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
