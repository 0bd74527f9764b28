"""Finding input images and decoding them into RGB photos, whatever their format quirks.

Inputs are files, folders, globs and ``http(s)://`` URLs (``remote.py``: their names and
download); files and downloaded bytes are decoded by the same code, with the same checks.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import os
import re
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import jpeg, remote
from .names import shown

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif",
)  # fmt: skip

#: Transparent pixels are composited onto white, the background most photos of objects
#: with cut-out backgrounds (product shots, icons) were made to be seen on.
BACKGROUND = (255, 255, 255)

#: Pillow's own decompression-bomb limit, applied before any pixel is decoded.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageError(Exception):
    """An input that cannot be used; the message is the one-line reason."""


@dataclass(frozen=True)
class InputImage:
    #: the file, or for a URL the URL as given (a ``str``: a ``Path`` would fold its ``//``),
    #: which is what reports and the manifest show
    path: Path | str
    #: where its outputs go below the output folder: its place below the common root of the
    #: local inputs, or ``urls/<host>/<path>`` for a URL (``remote.output_relative``)
    relative: Path
    #: the URL to download, for an ``http(s)://`` input
    url: str | None = None


@dataclass(frozen=True)
class MissingInput:
    path: str
    reason: str


def discover(
    inputs: Iterable[str],
    patterns: Iterable[str] | None = None,
    exclude: Iterable[str | os.PathLike] = (),
) -> tuple[list[InputImage], list[MissingInput]]:
    """Files, folders (recursively), globs and URLs → images in a stable, sorted order.

    Outputs mirror the inputs below their common root, so ``a/cat.jpg`` and ``b/cat.jpg``
    never collide. Symlinked folders are followed once each, so a link loop cannot hang.
    Folders in ``exclude`` (the output folder) are never searched. A folder named like an
    image (``x.jpg``) is listed too, so that it is reported, and searched like any other.
    Folders that cannot be read come back in the second list with the reason.

    An input starting with ``http://`` or ``https://`` is a URL, taken whatever its
    extension, named by ``remote.output_relative`` and downloaded only when it is decoded.
    Another ``scheme://`` is refused, unless a file or folder of that name exists. An input
    whose outputs would have the same names as an earlier one's (two URLs that differ only in
    their query, a local ``urls/<host>/`` folder) is refused with the reason, not overwritten.
    """
    patterns = [p.lower() for p in patterns] if patterns else None
    # (file, root it was found under), or (URL, its outputs' place) for a URL
    found: list[tuple[Path, Path] | tuple[str, Path]] = []
    urls: set[str] = set()
    missing: list[MissingInput] = []
    seen: set[Path] = set()
    excluded = {os.path.realpath(folder) for folder in exclude}

    def wanted(path: Path) -> bool:
        name = path.name.lower()
        if patterns is None:
            return name.endswith(IMAGE_EXTENSIONS)
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    def add(file: Path, root: Path) -> None:
        key = Path(os.path.abspath(file))
        if key not in seen:
            seen.add(key)
            found.append((file, root))

    def unreadable(error: OSError) -> None:
        missing.append(
            MissingInput(str(error.filename), f"cannot read folder ({error.strerror or error})")
        )

    for spec in inputs:
        path = Path(spec)
        scheme = remote.scheme_of(spec)
        if scheme in remote.SCHEMES:
            try:
                relative = remote.output_relative(spec)
            except ValueError as exc:
                missing.append(MissingInput(spec, str(exc)))
                continue
            if spec not in urls:
                urls.add(spec)
                found.append((spec, relative))
        elif scheme is not None and not (path.exists() or path.is_symlink()):
            missing.append(MissingInput(spec, remote.unsupported_scheme(scheme)))
        elif path.is_dir():
            for file in _walk(path, excluded, wanted, unreadable):
                add(file, path)
        elif path.exists() or path.is_symlink():
            add(path, path.parent)  # named explicitly: taken whatever its extension
        elif glob.has_magic(spec):
            matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True))]
            files = [m for m in matches if wanted(m) and not _inside(os.path.realpath(m), excluded)]
            if not files:
                missing.append(MissingInput(spec, "no image matches this pattern"))
            root = Path(_glob_root(spec))
            for file in files:
                add(file, root)
        else:
            missing.append(MissingInput(spec, "no such file or folder"))

    if not found:
        return [], missing
    roots = {os.path.abspath(root) for file, root in found if not isinstance(file, str)}
    common = Path(os.path.commonpath(sorted(roots))) if roots else None
    images = [
        InputImage(file, where, url=file)
        if isinstance(file, str)
        else InputImage(file, Path(os.path.relpath(os.path.abspath(file), common)))
        for file, where in found
    ]
    return _apart(images, missing)


def _apart(
    images: list[InputImage], missing: list[MissingInput]
) -> tuple[list[InputImage], list[MissingInput]]:
    """``images`` without those whose outputs would overwrite an earlier one's, which go to
    ``missing`` with the reason. Local files never clash with each other (each has its own
    place below their common root): only a URL can clash, with a URL or a local file."""
    if not any(image.url for image in images):
        return images, missing
    first: dict[Path, InputImage] = {}
    kept = []
    for image in images:
        earlier = first.setdefault(image.relative, image)
        if earlier is image:
            kept.append(image)
            continue
        missing.append(
            MissingInput(
                os.fspath(image.path),
                f"not explained: its outputs would overwrite those of {shown(earlier.path)} "
                f"(both named {shown(image.relative.as_posix())})",
            )
        )
    return kept, missing


def _inside(real: str, folders: set[str]) -> bool:
    return any(real == f or real.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def _glob_root(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _walk(folder: Path, excluded: set[str], wanted, onerror) -> list[Path]:
    """Files below ``folder`` that ``wanted`` accepts, sorted by their path. A sub-folder
    that ``wanted`` accepts by name is listed as well (it is no image: the run reports it),
    and searched."""
    files: list[Path] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited or _inside(real, excluded):
            # a symlink loop, a second link to a folder already walked, or the output folder
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames.sort()
        here = Path(dirpath)
        entries = [name for name in filenames if wanted(here / name)]
        entries += [
            name
            for name in dirnames
            if wanted(here / name) and not _inside(os.path.realpath(here / name), excluded)
        ]
        files.extend(here / name for name in entries)
    # Sorted by path components: a/z.jpg, b/a.jpg, c.jpg, whatever order os.walk went in.
    return sorted(files, key=lambda path: path.parts)


#: the reason for bytes that are no image Pillow knows (a download adds its Content-Type)
NOT_AN_IMAGE = "not an image file Pillow can read"


def load_image(
    source: InputImage | str | os.PathLike,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    stop: threading.Event | None = None,
) -> Image.Image:
    """Decode ``source`` into an 8-bit RGB photo, upright: a file, or an ``http(s)://``
    URL (an ``InputImage`` with ``url``, or a ``str``; a ``Path`` is always a file).

    Handles grayscale, palette, RGBA/LA (composited on ``BACKGROUND``), CMYK, 16-bit, EXIF
    orientation and animated images (first frame). Raises ``ImageError`` with the reason,
    for a JPEG whose data ends early or is corrupt too (libjpeg would pad it with grey), and
    for a download that fails (``remote.fetch``: its status, a timeout, too large, …).
    Images of more than ``max_pixels`` pixels (``None``: no limit) are refused from their
    header, before any pixel is decoded. A download is given up once ``stop`` is set.
    """
    if isinstance(source, InputImage):
        url, path = source.url, source.path
    else:
        url = source if isinstance(source, str) and remote.is_url(source) else None
        path = source
    if url is not None:
        return _load_url(url, max_pixels, stop)
    return _load_file(Path(path), max_pixels)


def _load_url(url: str, max_pixels: int | None, stop: threading.Event | None) -> Image.Image:
    # Here, in the thread that decodes it: a list of URLs is not fetched before the first map.
    try:
        download = remote.fetch(url, stop)
    except remote.DownloadError as exc:
        raise ImageError(str(exc)) from None
    try:
        return _decode(io.BytesIO(download.data), max_pixels)
    except ImageError as exc:
        if str(exc) == NOT_AN_IMAGE and download.content_type:
            raise ImageError(f"{exc} (the server sent {download.content_type})") from None
        raise


def _load_file(path: Path, max_pixels: int | None) -> Image.Image:
    if path.is_dir():
        raise ImageError("is a folder, not an image")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError("broken symbolic link") from None
        raise ImageError("file vanished before it could be read") from None
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        handle = open(path, "rb")
    except PermissionError:
        raise ImageError("permission denied") from None
    except FileNotFoundError:
        raise ImageError("file vanished before it could be read") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image") from None
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from None
    with handle:
        return _decode(handle, max_pixels)


def _decode(handle: BinaryIO, max_pixels: int | None) -> Image.Image:
    """The one decoding path, for files and downloads alike: the header's size checked
    against ``max_pixels``, JPEG scans checked whole (``jpeg.load``), then RGB."""
    _allow_pillow_pixels(max_pixels)
    try:
        image = Image.open(handle)
        # The header gives the size before any pixel is decoded: refuse bombs here.
        pixels = image.width * image.height
        if max_pixels is not None and pixels > max_pixels:
            raise ImageError(_bomb_message(pixels, max_pixels))
        image.seek(0)  # animated GIF/PNG/WebP: the first frame
        if image.format in ("JPEG", "MPO"):
            jpeg.load(image, handle)
        else:
            image.load()
        return _to_rgb(image)
    except ImageError:
        raise
    except jpeg.DamagedJpeg as exc:
        raise ImageError(f"truncated or corrupt image ({exc})") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check, in Image.open (the warning when a filter makes it an error).
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
        raise ImageError(_bomb_message(pixels, max_pixels)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc) or type(exc).__name__
        if "truncated" in message.lower() or isinstance(exc, EOFError):
            raise ImageError(f"truncated or corrupt image ({message})") from None
        raise ImageError(f"cannot decode image ({message})") from None


def _bomb_message(pixels: int | None, max_pixels: int | None) -> str:
    size = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    limit = f" (--max-pixels {max_pixels:,})" if max_pixels is not None else ""
    return f"refused before decoding: {size} exceeds the limit{limit}, possible decompression bomb"


_pillow_lock = threading.Lock()


def _allow_pillow_pixels(max_pixels: int | None) -> None:
    """Let Pillow open what ``max_pixels`` allows: its own limit only ever goes up, so it
    never refuses an image below ours (ours is checked right after ``Image.open``)."""
    with _pillow_lock:
        current = Image.MAX_IMAGE_PIXELS
        if current is None:
            return
        if max_pixels is None:
            Image.MAX_IMAGE_PIXELS = None
        elif max_pixels > current:
            Image.MAX_IMAGE_PIXELS = max_pixels


def quiet_pillow_bomb_warnings() -> None:
    """Pillow warns on stderr about images just over its limit; ``load_image`` refuses them
    itself with a one-line reason, so a command-line run silences the warning (once, from
    the main thread: ``warnings.catch_warnings`` is not thread-safe)."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit integer grayscale: Pillow's convert("L") would clip at 255, so rescale.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "La"):
        image = image.convert("RGBA")
    mode = image.mode
    if mode in ("RGBA", "LA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a grey half
