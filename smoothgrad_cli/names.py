"""File names as the tool shows and records them.

On Linux a file name is bytes, not text: it may hold a newline, a terminal escape sequence or
bytes that are not UTF-8. Python decodes such bytes to lone surrogates (``os.fsdecode``), so
every name is a ``str`` inside the tool; these helpers are the only places that turn one into
output:

* ``shown(name)`` for a line on a terminal or in a log: printable, on one line, and
  unambiguous (anything unprintable is written as a Python escape, ``\\n``, ``\\x1b``,
  ``\\udcff`` for a byte that is not UTF-8, and the whole name is then quoted);
* ``json_line(obj)`` for JSON written to stdout or the manifest: valid UTF-8 always; a byte
  that is not UTF-8 stays a ``\\udcXX`` escape, so ``os.fsencode(json.loads(line)["input"])``
  gives back the exact bytes of the name.
"""

from __future__ import annotations

import json
import os
from typing import Any


def shown(name: str | os.PathLike) -> str:
    """``name`` fit for one line of text: as it is when every character is printable,
    else quoted with its unprintable characters escaped (``'bad\\nname.jpg'``)."""
    text = os.fspath(name)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.isprintable():
        return text
    return repr(text)


def one_line(text: str) -> str:
    """A message on one line: runs of white space (newlines included) become one space and
    other control characters are escaped, so nothing a file or a library said can start a
    new line or drive the terminal."""
    text = " ".join(str(text).split())
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def json_line(obj: Any) -> str:
    """One JSON object on one line, safe to encode as UTF-8 whatever names it holds.

    ``ensure_ascii=False`` keeps readable names readable; the lone surrogates that stand for
    bytes which are not UTF-8 (only they cannot be encoded) are written as JSON ``\\udcXX``
    escapes, which decode back to the same surrogates. NaN and infinities are refused
    (``allow_nan=False``): they are not JSON.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    # backslashreplace writes a lone surrogate as the six characters \udcXX: inside a JSON
    # string that is exactly its escape. Every other character encodes as itself.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
