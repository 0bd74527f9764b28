"""JPEG files whose data ends early or is corrupt, refused rather than decoded grey.

libjpeg only *warns* when a scan's data runs out before its last block (a file cut short,
with or without an end-of-image marker after the cut): it pads the rest with grey, and
Pillow drops the warning. But given the data piece by piece, as Pillow gives it, the
decoder waits for more wherever a scan's data is missing, and reads past a scan only once
it is complete. So each scan's data goes in without the marker after it (a marker would
end the scan, padded), and the decoder is asked where it waits before the marker follows.
"""

from __future__ import annotations

import re

from PIL import Image

#: A marker (after fill bytes, its last 0xFF): a plain first byte lets re search at C speed.
_MARKER = re.compile(rb"\xff([^\x00\xff])")
#: One byte of entropy-coded data, all ones (0xFF, stuffed): no Huffman code is all ones, so
#: a decoder inside a cut scan gets next to nothing out of it.
_ONES = b"\xff\x00"
#: libjpeg has 57 bits in hand before it decodes a block: a scan's last block needs that
#: many after it before the decoder gets to the end of the scan.
_PAD = _ONES * 8
#: A scan complete this many bytes before its data ends is corrupt ("N extraneous bytes");
#: fewer are let through: some encoders leave a stray byte or two.
_TAIL = 8


class DamagedJpeg(Exception):
    """A JPEG whose data ends early or goes on after a complete scan: ``kind: why``."""


def _jpeg_damage(kind: str, why: str) -> DamagedJpeg:
    return DamagedJpeg(f"{kind}: {why}")


def load(image: Image.Image, handle) -> None:
    """``image.load()`` for a JPEG, refusing one whose data ends inside a scan, or goes on
    after a scan is complete. The pixels are Pillow's: its own decoder, run once."""
    name, extents, offset, args = image.tile[0] if len(image.tile) == 1 else (None,) * 4
    handle.seek(offset or 0)
    data = handle.read()
    layout = _jpeg_layout(data) if name == "jpeg" else None
    if layout is None:
        image.load()  # arithmetic, lossless, hierarchical, 12-bit: left to Pillow
        return
    scans, buffered, missing = layout
    view = memoryview(data)  # pieces without copies
    image.load_prepare()
    decoder = Image._getdecoder(image.mode, name, args, image.decoderconfig)
    try:
        decoder.setimage(image.im, extents)
        fed, start = _FedDecoder(decoder), 0
        for end, last_interval in scans:
            # Its last bytes held back, a sound scan cannot be complete yet.
            split = end - _TAIL
            while split > last_interval and data[split - 1] == 0xFF:
                split -= 1  # never between 0xFF and the byte after it
            if split > last_interval:
                fed.feed(view[start:split])
                start = split
                if not fed.inside_scan():
                    raise _jpeg_damage("corrupt JPEG data", "extraneous bytes in a scan")
            fed.feed(view[start:end])
            fed.feed(_PAD)
            start = end
            # A lone sequential scan is decoded row by row: done with no end marker needed.
            if fed.inside_scan() or not (buffered or fed.done):
                raise _jpeg_damage("JPEG data truncated", "premature end of data segment")
        fed.feed(view[start:])
        if missing or not fed.done:
            raise _jpeg_damage("JPEG data truncated", missing or "premature end of data segment")
    finally:
        decoder.cleanup()
    image.tile, image.readonly = [], 0  # as ImageFile.load leaves it


class _FedDecoder:
    """Pillow's JPEG decoder given the data piece by piece, as ``ImageFile.load`` does."""

    def __init__(self, decoder) -> None:
        self.decoder, self.pending, self.done = decoder, b"", False

    def feed(self, data) -> None:
        if self.done:
            return
        buffer = bytes(self.pending) + data if self.pending else data
        consumed, error = self.decoder.decode(buffer)
        if consumed < 0:
            if error < 0:
                raise OSError(f"{Image.core.getcodecstatus(error)} when reading image file")
            self.pending, self.done = b"", True
        else:
            self.pending = buffer[consumed:]

    def inside_scan(self) -> bool:
        """Whether the decoder waits for more of a scan's data, rather than for a marker.

        Waiting for a marker, libjpeg has read all it was given (it skips stray bytes one by
        one). Inside a scan it keeps back the bytes of a block it could not finish, and reads
        on only with 57 bits in hand: stopped there with nothing kept back, it had fewer than
        17, so one more byte cannot do: that byte stays unread, and is taken back.
        """
        if self.done:
            return False
        if not self.pending:
            self.feed(_ONES)
            if not self.pending:
                return False
            self.pending = b""
        return True


def _jpeg_layout(data: bytes) -> tuple[list[tuple[int, int]], bool, str | None] | None:
    """From the structure of the stream: each scan's (end of its entropy-coded data, start of
    its last restart interval), whether libjpeg buffers the scans (progressive, or several),
    and what is missing at the end, if anything. None where the decoder is left to Pillow: not
    Huffman-coded 8-bit sequential or progressive, or too odd. Raises ``DamagedJpeg`` for
    damage seen here."""
    pos, frame, interval, scans, ended = 2, None, 0, [], False
    while (marker := _MARKER.search(data, pos)) is not None:  # libjpeg skips stray bytes too
        code, pos = marker.group(1)[0], marker.end()
        if code == 0xD9:  # EOI
            ended = True
            break
        if code == 0x01 or 0xD0 <= code <= 0xD7:
            continue  # markers without a segment
        length = int.from_bytes(data[pos : pos + 2], "big")
        if pos + max(length, 2) > len(data):
            raise _jpeg_damage("JPEG data truncated", "a header segment is cut short")
        body, pos = data[pos + 2 : pos + length], pos + length
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):  # SOFn
            count = 3 * body[5] if len(body) >= 6 else 0
            if code > 0xC2 or frame or not count or len(body) < 6 + count or body[0] != 8:
                return None
            parts = {body[i]: (body[i + 1] >> 4, body[i + 1] & 15) for i in range(6, 6 + count, 3)}
            if not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in parts.values()):
                return None
            frame = int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big"), parts
            progressive = code == 0xC2
            # per component and coefficient, the bit the last scan brought it down to
            precision = {i: [None] * 64 for i in parts}
        elif code == 0xDD and len(body) >= 2:  # DRI
            interval = int.from_bytes(body[:2], "big")
        elif code == 0xDA:  # SOS: the entropy-coded data follows
            ids = body[1 : 1 + 2 * body[0] : 2] if body else b""
            if not frame or not frame[1] or not ids or any(i not in frame[2] for i in ids):
                return None
            first, last, shift = body[1 + 2 * len(ids) :][:3].ljust(3, b"\0")
            for i in ids:
                for k in range(first, min(last, 63) + 1) if progressive else range(64):
                    precision[i][k] = shift & 15 if progressive else 0
            scans.append(_scan_extent(data, pos, interval, frame, ids))
            pos = scans[-1][0]
    if not scans:
        return None
    # Scans left out (a cut just before one, or in one the padding then completed): libjpeg
    # says nothing of a component without its DC, or of coefficients short of their last bits.
    if any(bits[0] is None or any(bits) for bits in precision.values()):
        missing = "scans missing"
    else:
        missing = None if ended else "no end-of-image marker"
    return scans, progressive or len(scans) > 1, missing


def _scan_extent(data: bytes, start: int, interval: int, frame, ids: bytes) -> tuple[int, int]:
    """Where a scan's entropy-coded data from ``start`` ends (at the first marker but RSTn),
    and where its last restart interval starts. Restart markers end every ``interval`` MCUs
    but the last, numbered 0 to 7 in turn (an MCU: a block of the scan's one component, or a
    group of blocks of all, interleaved); more of them is an encoder's habit (some scanners):
    their tail is let be."""
    codes, last, end = bytearray(), start, len(data)
    for marker in _MARKER.finditer(data, start):
        if not 0xD0 <= marker.group(1)[0] <= 0xD7:
            end = marker.start()
            break
        codes.append(marker.group(1)[0])
        last = marker.end()
    while end > last and data[end - 1] == 0xFF:
        end -= 1  # fill bytes before the marker
    if codes and not interval:
        raise _jpeg_damage("corrupt JPEG data", "a restart marker where none belongs")
    if codes != bytes(0xD0 + i % 8 for i in range(len(codes))):
        raise _jpeg_damage("corrupt JPEG data", "restart markers out of sequence")
    if interval:
        width, height, parts = frame
        h_max, v_max = max(h for h, _ in parts.values()), max(v for _, v in parts.values())
        h, v = parts[ids[0]] if len(ids) == 1 else (1, 1)
        mcus = -(-width * h // (8 * h_max)) * -(-height * v // (8 * v_max))
        if len(codes) < -(-mcus // interval) - 1:
            raise _jpeg_damage("JPEG data truncated", "restart markers missing")
        if len(codes) > -(-mcus // interval) - 1:
            last = end
    return end, last
