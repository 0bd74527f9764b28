"""The ``explain`` command: maps for images, files or whole folders.

A run is two steps a reader can follow: the plan (``plan.py``: options checked, inputs
found, output names, what is done already), then its execution (``pipeline.py``), both
around one ``Explainer``. Under torchrun the ranks meet between the two and at the end
(``distributed.py``); each executes its own part of the plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from .. import interrupt
from ..distributed import Ranks, Readiness
from ..errors import UsageError
from ..explainer import Explainer
from ..file_list import STDIN
from ..images import quiet_pillow_bomb_warnings
from ..manifest import MAIN, Manifest, ManifestInUse, error_entry, merge_parts, package_versions
from ..names import shown
from ..report import ImageResult, Report
from ..settings import SettingsError
from .options import ExplainOptions, as_usage_error
from .pipeline import Abort, Pipeline, manifest_failure
from .plan import Plan


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
        ranks = Ranks.from_environment()
        if ranks is None:
            return _run(options, report, progress_factory)
        return _run_ranked(options, report, progress_factory, ranks)


def _run(options: ExplainOptions, report: Report, progress_factory) -> int:
    plan, explainer, manifest = _set_up(options)
    try:
        _say_plan(report, options, plan)
        return _execute(options, report, progress_factory, plan, explainer, manifest)
    finally:
        manifest.close()


def _run_ranked(options: ExplainOptions, report: Report, progress_factory, ranks: Ranks) -> int:
    """One rank of a torchrun job: plan and load like a run on its own, agree with the other
    ranks (``Ranks.agree``), take this rank's part, and hand the results to rank 0."""
    if options.files_from == STDIN:
        raise UsageError(
            "--files-from -: under torchrun the ranks would each read a piece of the one "
            "standard input; give the list in a file"
        )
    ranks.join()
    manifest = None
    try:
        options = dataclasses.replace(options, device=ranks.use_device(options.device))
        try:
            plan, explainer, manifest = _set_up(options, ranks.rank)
            ready = Readiness(
                images=len(plan.todo) + len(plan.skipped),
                fingerprint=plan.fingerprint(),
                parameters=options.parameters(explainer.precision),
            )
        except UsageError as exc:
            ready = Readiness(problem=str(exc))
        ranks.agree(ready)  # from here on every rank has read the manifest: parts may grow
        speaks = ranks.rank == 0  # what concerns the whole job is said once
        if speaks:
            _say_plan(report, options, plan)
        plan = plan.part(ranks.rank, ranks.world)
        _execute(
            options, report, progress_factory if speaks else None, plan, explainer, manifest, speaks
        )
        manifest.close()  # before meeting: rank 0 folds every closed part into one manifest
        ranks.meet_at_end(report)
        if speaks and not (report.interrupted or report.stdout_closed):
            _fold_parts(options, report)  # (a stopped job's parts wait for the next run)
        return report.exit_code
    finally:
        if manifest is not None:
            manifest.close()
        ranks.leave()


def _set_up(options: ExplainOptions, rank: int | None = None) -> tuple[Plan, Explainer, Manifest]:
    """The plan, the model, and the manifest open for appending: everything that can stop a
    run before any work, with a ``UsageError``."""
    plan = Plan.make(options)
    if rank is not None:
        plan.rank = rank  # the part's name; the part's images come after the ranks agree
    quiet_pillow_bomb_warnings()
    try:
        explainer = Explainer.load(options.settings, options.device)
    except SettingsError as exc:
        raise as_usage_error(exc) from None
    plan = plan.without_done(options, explainer.precision)
    common = {
        "parameters": options.parameters(explainer.precision),
        "seed": options.settings.seed,
        "model": explainer.loaded.name,
        "weights": explainer.loaded.weights,
        "device": str(explainer.device),
        "versions": package_versions(),
    }
    path = plan.manifest_path(options)
    if path.name == MAIN:
        merge_parts(options.output)  # a job split before: its parts go first, in order
    else:  # which process of the job made an entry: "shard-2-of-8", "rank-3"
        common["part"] = path.name.removeprefix("manifest.").removesuffix(".jsonl")
    try:
        manifest = Manifest(path, common, part=path.name != MAIN)
    except ManifestInUse:
        who = [f"shard {plan.shard}"] if plan.shard else []
        who += [f"rank {rank}"] if rank is not None else []
        raise UsageError(
            f"{shown(path)} is being written by another process: {' '.join(who)} of this "
            "job is running already (two processes must never explain the same images)"
        ) from None
    except OSError as exc:
        raise UsageError(
            f"{shown(path)}: cannot write the manifest ({exc.strerror or exc})"
        ) from None
    return plan, explainer, manifest


def _say_plan(report: Report, options: ExplainOptions, plan: Plan) -> None:
    for warning in [*options.settings.warnings(), *plan.warnings]:
        report.warn(warning)
    if plan.redone:
        changes = ", ".join(f"{k}: {old} → {new}" for k, (old, new) in plan.changed.items())
        report.warn(
            f"--skip-existing: {len(plan.redone)} image(s) in {shown(options.output)} were "
            f"explained with other settings ({changes}); they are explained again"
        )


def _execute(
    options: ExplainOptions,
    report: Report,
    progress_factory,
    plan: Plan,
    explainer: Explainer,
    manifest: Manifest,
    speaks: bool = True,
) -> int:
    plan.remove_stale_temporaries(options)
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
    if plan.todo:
        try:
            # The chunk size (cached, else a short probe) and --compile, before any image.
            explainer.plan_chunks(
                compile=options.compile,
                say=lambda m: report.err.print(m, markup=False) if speaks else None,
                passes=len(plan.todo) * explainer.passes_per_image,
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


def _fold_parts(options: ExplainOptions, report: Report) -> None:
    """Rank 0, at the end: the ranks' parts (and any other finished ones) into one
    ``manifest.jsonl``; parts that other running processes hold are left and said."""
    try:
        merged = merge_parts(options.output)
    except OSError as exc:
        report.warn(
            f"manifest parts not merged ({exc.strerror or exc}): run `smoothgrad manifest "
            f"merge {shown(options.output)}`"
        )
        return
    if merged.busy:
        names = ", ".join(shown(p.name) for p in merged.busy)
        report.warn(f"manifest parts still being written by other runs were left: {names}")


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
