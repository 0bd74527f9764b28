"""``smoothgrad check``: expectations on what a model looks at, for CI.

A TOML spec names images and what must hold for each: the predicted class, where the saliency
lies (a box or a mask), how close the map stays to a saved golden map, and whether the map
passes the model-randomisation sanity check of Adebayo et al. (2018). Each case's map is
computed once and shared by all its checks; cases are grouped by model and each model is
loaded once. The user's model and its files are never touched.

* ``spec``: the spec, read and validated (``parse_spec``);
* ``golden_paths``: where ``--update-golden`` may write;
* ``checks``: one function per check kind, with what each measures;
* ``metrics``: the measures themselves (rank correlation, mass in a region, pointing);
* ``runner``: ``Checker``, which sets up every model and explainer, then runs the cases;
* ``reports``: results, the table, JSON lines and JUnit XML.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import names
from ..errors import EXIT_FAILED, EXIT_USAGE
from ..files import atomic_write
from . import reports
from .checks import CHECK_NAMES
from .metrics import (
    distance_to_region,
    mass_in_region,
    peak_point,
    pool_map,
    rankdata,
    region_weights,
    spearman,
)
from .reports import CheckResult, CheckRun, junit_xml, results_table, summary
from .spec import (
    DEFAULT_GOLDEN_RANK_CORRELATION,
    Case,
    Region,
    Sanity,
    Spec,
    SpecError,
    parse_spec,
    spec_from_dict,
)

if TYPE_CHECKING:
    from ..explainer import Loader

#: what needs torch, imported when first used: a spec is read and refused in a blink, before
#: the seconds torch takes to import
_RUNNER = ("Checker", "randomisable_layers", "randomised_copy")


def __getattr__(name: str):
    if name in _RUNNER:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_main(
    spec_path: Path,
    *,
    junit: Path | None = None,
    json_lines: bool = False,
    update_golden: bool = False,
    allow_outside_spec_folder: bool = False,
    device: str | None = None,
    verbose: bool = False,
    loader: Loader | None = None,
) -> int:
    """The ``smoothgrad check`` command; returns the exit code. ``loader``: how models are
    loaded (``models.load_model`` unless given)."""
    from rich.console import Console

    from ..report import print_table, stdout_console

    out = stdout_console()  # CI logs: each check on one line, its paths never folded
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    def log(message: str) -> None:
        err.print(message, markup=False)

    try:
        spec = parse_spec(spec_path)  # before torch loads: a bad spec is refused at once
        from ..models import load_model
        from .runner import Checker

        run = Checker(
            spec,
            device=device,
            update_golden=update_golden,
            allow_outside_spec_folder=allow_outside_spec_folder,
            log=log,
            verbose=verbose,
            loader=loader or load_model,
        ).run()
    except SpecError as exc:
        err.print(f"smoothgrad: error: {exc}", markup=False)
        return EXIT_USAGE
    # The JUnit file first: a reader of stdout that goes away early (`| head -1`) ends the
    # command at its next write, and CI still wants the report.
    junit_error = None
    if junit is not None:
        try:
            atomic_write(junit, junit_xml(run))
        except OSError as exc:
            junit_error = (
                f"smoothgrad: error: cannot write {names.shown(junit)} "
                f"({names.one_line(exc.strerror or exc)})"
            )
    if json_lines:
        for line in reports.json_lines(run):
            out.print(line, markup=False)
    else:
        print_table(out, results_table(run))
    if junit_error is not None:
        err.print(junit_error, markup=False)
        return EXIT_FAILED
    for path in run.written:
        log(f"updated golden: {names.shown(path)}")
    log(summary(run))
    return run.exit_code


__all__ = [
    "CHECK_NAMES", "Case", "CheckResult", "CheckRun", "Checker", "DEFAULT_GOLDEN_RANK_CORRELATION",
    "Region", "Sanity", "Spec", "SpecError", "check_main", "distance_to_region", "junit_xml",
    "mass_in_region", "parse_spec", "peak_point", "pool_map", "randomisable_layers",
    "randomised_copy", "rankdata", "region_weights", "results_table", "spearman",
    "spec_from_dict", "summary",
]  # fmt: skip
