"""Class names for a fine-tuned model's own head (``--labels FILE``), instead of ``class 0 …
class K−1``: one name per line, or JSON (a list of names, or an ``{index: name}`` object as
Hugging Face's ``id2label``)."""

from __future__ import annotations

import json
from pathlib import Path

from .names import one_line, shown


class LabelsError(ValueError):
    """The file cannot give the names; the message is one line naming it."""


def read_labels(path: str | Path, classes: int) -> list[str]:
    """The ``classes`` names in ``path``, in class order."""
    file = Path(path)
    where = shown(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelsError(f"{where}: labels file not found") from None
    except UnicodeDecodeError:
        raise LabelsError(f"{where}: labels file is not UTF-8 text") from None
    except OSError as exc:
        raise LabelsError(f"{where}: cannot read labels ({exc.strerror or exc})") from None
    names = _from_json(text, where) if text.lstrip()[:1] in ("[", "{") else _from_lines(text)
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise LabelsError(f"{where}: every class needs a non-empty name")
    names = [one_line(n.strip()) for n in names]
    if len(names) != classes:
        raise LabelsError(
            f"{where}: {len(names)} class name{'s' if len(names) != 1 else ''} for a model "
            f"with {classes} classes"
        )
    return names


def _from_lines(text: str) -> list[str]:
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing blank line is the file's end, not a class
    return lines


def _from_json(text: str, where: str) -> list:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LabelsError(f"{where}: not valid JSON ({exc})") from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        try:
            by_index = {int(k): v for k, v in data.items()}
        except (TypeError, ValueError):
            raise LabelsError(f"{where}: the keys of a labels object are class indices") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise LabelsError(f"{where}: the class indices must be 0 to {len(by_index) - 1}")
        return [by_index[i] for i in range(len(by_index))]
    raise LabelsError(f"{where}: expected a list of names or an {{index: name}} object")
