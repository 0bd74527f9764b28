"""Where ``--update-golden`` may write: the rules on a spec's golden paths.

``--update-golden`` writes only inside the spec's folder (``golden_target``): a golden whose
path, symlinks resolved, leaves the spec's folder is a spec error unless
``--allow-outside-spec-folder`` is given (and even then its folder must exist; missing
sub-folders are made only inside the spec's folder), and a file that is not a ``.npy`` map
loading without pickle is never overwritten (a spec error). Both are found before any model
is loaded, so a refused spec writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import names
from .values import Where, case_label

if TYPE_CHECKING:
    from .spec import Case, Spec


def resolved_golden(where: Where, golden: Path, text: str) -> Path:
    """``golden`` with ``../``, symlinks and an absolute path resolved; a spec error naming
    ``text`` (the path as the spec wrote it) when it cannot be (a symlink loop, say)."""
    try:
        return golden.resolve()
    except (OSError, RuntimeError) as exc:
        raise where.error("golden", f"cannot resolve {names.shown(text)} ({exc})") from None


def is_golden_npy(path: Path) -> bool:
    """Whether ``path`` holds a ``.npy`` array that loads without pickle, as goldens do."""
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                return False  # np.load would also take a .npz or a pickle
        return isinstance(np.load(path, allow_pickle=False), np.ndarray)
    except Exception:
        return False


def golden_target(spec: Spec, case: Case, *, allow_outside_spec_folder: bool = False) -> Path:
    """The file ``--update-golden`` writes for ``case``: its golden path with symlinks
    resolved. A spec error when the spec may not make the tool write there: outside the
    spec's folder (unless allowed), into a missing folder outside it, or over anything but a
    golden ``.npy`` map."""
    where = Where(names.shown(spec.path), case_label(case.name))
    shown = names.shown(case.golden_text)
    target = resolved_golden(where, case.golden, case.golden_text)
    if not target.is_relative_to(spec.path.parent.resolve()):
        if not allow_outside_spec_folder:
            raise where.error(
                "golden",
                f"{shown} is outside the spec's folder ({names.shown(target)}); pass "
                "--allow-outside-spec-folder to let --update-golden write there",
            )
        if not target.parent.is_dir():
            # Missing folders are made only inside the spec's folder.
            raise where.error("golden", f"folder {names.shown(target.parent)} does not exist")
    if target.exists():
        if not target.is_file():
            raise where.error("golden", f"{shown} exists and is not a file")
        if not is_golden_npy(target):
            raise where.error(
                "golden", f"{shown} exists and is not a .npy golden map: not overwriting it"
            )
    return target


__all__ = ["golden_target", "is_golden_npy", "resolved_golden"]
