"""The ``explain`` command: maps for images, files or whole folders.

A run is two steps a reader can follow: the plan (``plan.py``: options checked, inputs
found, output names, what is done already), then its execution (``pipeline.py``), both
around one ``Explainer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .. import interrupt
from ..errors import UsageError
from ..explainer import Explainer
from ..images import quiet_pillow_bomb_warnings
from ..manifest import Manifest, error_entry, package_versions
from ..names import shown
from ..report import ImageResult, Report
from ..settings import SettingsError
from .options import ExplainOptions, as_usage_error
from .pipeline import Abort, Pipeline, manifest_failure
from .plan import Plan, manifest_path


def run_explain(
    options: ExplainOptions,
    report: Report,
    progress_factory: Callable[[int], Any] | None = None,
) -> int:
    """Explain every input; return the exit code. Usage problems raise ``UsageError``.

    Ctrl-C or ``kill`` (SIGTERM) during the work: the writes in flight finish, the exit code
    is 130 and the report has what was done; before the work starts, ``KeyboardInterrupt``.
    """
    with interrupt.stop_once(), _warnings_to(report):
        return _run(options, report, progress_factory)


def _run(options: ExplainOptions, report: Report, progress_factory) -> int:
    plan = Plan.make(options)
    for warning in options.settings.warnings():
        report.warn(warning)
    quiet_pillow_bomb_warnings()
    try:
        explainer = Explainer.load(options.settings, options.device)
    except SettingsError as exc:
        raise as_usage_error(exc) from None

    common = {
        "parameters": options.parameters(explainer.precision),
        "seed": options.settings.seed,
        "model": explainer.loaded.name,
        "weights": explainer.loaded.weights,
        "device": str(explainer.device),
        "versions": package_versions(),
    }
    path = manifest_path(options)
    try:
        manifest = Manifest(path, common)
    except OSError as exc:
        raise UsageError(
            f"{shown(path)}: cannot write the manifest ({exc.strerror or exc})"
        ) from None
    try:
        try:
            for item in plan.missing:
                report.failed(item.path, item.reason)
                manifest.record(error_entry(item.path, item.reason))
        except OSError as exc:
            report.failed(manifest.path, manifest_failure(exc), exc)
            return report.exit_code
        if plan.missing and options.fail_fast:
            return report.exit_code
        for image in plan.skipped:
            report.done(ImageResult(str(image.path), skipped=True))
        if plan.redone:
            changes = ", ".join(f"{k}: {old} → {new}" for k, (old, new) in plan.changed.items())
            report.warn(
                f"--skip-existing: {len(plan.redone)} image(s) in {shown(options.output)} were "
                f"explained with other settings ({changes}); they are explained again"
            )
        if plan.todo:
            try:
                # The chunk size (cached, else a short probe) and --compile, before any image.
                explainer.plan_chunks(
                    compile=options.compile, say=lambda m: report.err.print(m, markup=False)
                )
            except KeyboardInterrupt:
                report.interrupted = True
                return report.exit_code
        try:
            Pipeline(options, report, manifest, explainer).run(plan.todo, progress_factory)
        except Abort:
            pass  # already reported; the failures make the exit code 1
        except KeyboardInterrupt:
            report.interrupted = True
        return report.exit_code
    finally:
        manifest.close()


@contextlib.contextmanager
def _warnings_to(report: Report) -> Iterator[None]:
    """Library warnings (Pillow, torch) become one ``warning:`` line each through the report,
    not Python's two-line format with a source line; each distinct one once."""
    import warnings

    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = f"{category.__name__}: {message}"
        if text not in seen:
            seen.add(text)
            report.warn(text)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


__all__ = [
    "ExplainOptions", "Plan", "UsageError", "as_usage_error", "run_explain",
]  # fmt: skip
