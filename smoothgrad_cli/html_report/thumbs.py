"""The report's thumbnails: what one is (``_Thumb``), whether it is still fresh, and making
them, on a few threads, as small JPEGs in ``OUT/.thumbs/``.

Each is written atomically and stamped with its source's modification time, so a second
report makes only those whose source changed since.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ..files import atomic_write
from ..images import DEFAULT_MAX_PIXELS

THUMBS = ".thumbs"
#: the longest side of a thumbnail, in pixels (cards show them at about 110 CSS pixels)
THUMB_SIZE = 160


@dataclass
class _Thumb:
    source: str
    target: str
    href: str  # from the page
    ready: bool = False


def _fresh(thumb: _Thumb) -> bool:
    """Whether the thumbnail exists and was made from the source as it is now (it carries the
    source's modification time)."""
    try:
        source = os.stat(thumb.source).st_mtime_ns
        made = os.stat(thumb.target).st_mtime_ns
    except OSError:
        return False
    thumb.ready = made == source
    return thumb.ready


def _make_thumbs(todo: list[_Thumb], progress_factory, workers: int) -> tuple[int, int]:
    """Make ``todo``'s thumbnails on ``workers`` threads; (made, failed)."""
    if not todo:
        return 0, 0
    lock = threading.Lock()
    counts = [0, 0]
    bar = progress_factory(len(todo)) if progress_factory is not None else None

    def one(thumb: _Thumb) -> None:
        made = _make_thumb(thumb)
        with lock:
            counts[0 if made else 1] += 1
            if bar is not None:
                bar.advance(1)

    with bar if bar is not None else contextlib.nullcontext():
        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="thumbs")
        try:
            for future in [pool.submit(one, t) for t in todo]:
                future.result()
        except BaseException:  # Ctrl-C: the thumbnails being written finish, no more start
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return counts[0], counts[1]


def _make_thumb(thumb: _Thumb) -> bool:
    """Write one thumbnail; ``False`` (and no thumbnail) when its source cannot be read as an
    image. Errors writing it are raised: the report cannot be written either."""
    try:
        mtime = os.stat(thumb.source).st_mtime_ns
        data = thumbnail_bytes(thumb.source)
    except Exception:
        with contextlib.suppress(OSError):
            os.unlink(thumb.target)  # an older thumbnail would show a source that has changed
        return False
    atomic_write(Path(thumb.target), data)
    os.utime(thumb.target, ns=(mtime, mtime))
    thumb.ready = True
    return True


def thumbnail_bytes(source: str | os.PathLike, size: int = THUMB_SIZE) -> bytes:
    """A JPEG of ``source`` at most ``size`` pixels on its longest side, upright, on white
    where it was transparent. Images over the default ``--max-pixels`` are refused from
    their header (``ValueError``), as inputs are."""
    with Image.open(source) as image:
        if image.width * image.height > DEFAULT_MAX_PIXELS:
            raise ValueError("too many pixels for a thumbnail")
        image.seek(0)
        image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a fraction of the size
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info
        ):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        elif image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85, optimize=True)
        return out.getvalue()
