"""What a check run reports: its results, the table on the terminal, the summary line,
JSON lines and the JUnit XML report."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import names
from ..errors import EXIT_FAILED, EXIT_OK


def as_line(text: str) -> str:
    """``text`` for one line of output: as written when printable (so the spaces of a file
    name survive), else through ``names.one_line``."""
    return text if text.isprintable() else names.one_line(text)


@dataclass
class CheckResult:
    case: str
    check: str
    passed: bool
    measured: str  # for people
    threshold: str
    value: float | str | None = None  # for machines
    limit: float | str | bool | None = None
    message: str = ""
    #: for a check that cannot tell a good map from a bad one (it passes either way)
    warning: str = ""
    seconds: float = 0.0
    image: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        return {
            "case": self.case,
            "check": self.check,
            "passed": self.passed,
            "value": value,
            "threshold": self.limit,
            "measured": self.measured,
            "message": self.message,
            "warning": self.warning,
            "image": self.image,
            **self.details,
        }


@dataclass
class CheckRun:
    results: list[CheckResult] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failures else EXIT_OK


def json_lines(run: CheckRun) -> list[str]:
    """One JSON object per check, in the order of the results."""
    return [json.dumps(r.to_json(), ensure_ascii=False) for r in run.results]


#: What XML 1.0 cannot hold, even as a character reference: C0 controls but tab, newline and
#: carriage return, U+FFFE, U+FFFF and lone surrogates (a file name byte that is not UTF-8).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """``text`` with each character XML 1.0 forbids written as its Python escape (``\\x1b``,
    ``\\ufffe``, ``\\udcff``): the report stays well-formed and names stay recognisable."""
    return _NOT_XML.sub(lambda m: repr(m.group())[1:-1], text)


def _xml_element(parent: ET.Element | None, tag: str, text: str | None = None, **attrib: str):
    attrib = {key: _xml_text(value) for key, value in attrib.items()}
    element = ET.Element(tag, attrib) if parent is None else ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = _xml_text(text)
    return element


def junit_xml(run: CheckRun, suite: str = "smoothgrad check") -> bytes:
    """One <testcase> per case × check (classname = case, name = check). Characters XML
    cannot hold are escaped (see ``_xml_text``)."""
    failures = len(run.failures)
    root = _xml_element(
        None,
        "testsuites",
        tests=str(len(run.results)),
        failures=str(failures),
        errors="0",
        time=f"{run.seconds:.3f}",
    )
    suite_el = _xml_element(
        root,
        "testsuite",
        name=suite,
        tests=str(len(run.results)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{run.seconds:.3f}",
    )
    props = _xml_element(suite_el, "properties")
    _xml_element(props, "property", name="device", value=run.device)
    for r in run.results:
        case_el = _xml_element(
            suite_el, "testcase", classname=r.case, name=r.check, time=f"{r.seconds:.3f}"
        )
        detail = f"measured {r.measured}, threshold {r.threshold}".strip(", ")
        if not r.passed:
            _xml_element(
                case_el,
                "failure",
                f"{r.image}\n{detail}\n{r.message}".strip(),
                message=r.message or detail,
                type="CheckFailed",
            )
        else:
            _xml_element(case_el, "system-out", detail)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def results_table(run: CheckRun):
    """Case, check, measured value, threshold, pass/fail (and why, for failures)."""
    from rich.markup import escape
    from rich.table import Table

    notes = any(not r.passed or r.warning for r in run.results)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("case", overflow="fold")
    table.add_column("check", no_wrap=True)
    table.add_column("measured", justify="right", no_wrap=True)
    table.add_column("threshold", no_wrap=True)
    table.add_column("result", no_wrap=True)
    if notes:
        table.add_column("note", overflow="fold", ratio=1)
    last = None
    for r in run.results:
        row = [
            escape(names.shown(r.case)) if r.case != last else "",
            r.check,
            escape(r.measured),
            escape(r.threshold),
            ("[yellow]pass?[/yellow]" if r.warning else "[green]pass[/green]")
            if r.passed
            else "[bold red]FAIL[/bold red]",
        ]
        if notes:
            row.append(escape(as_line(r.message if not r.passed else r.warning)))
        table.add_row(*row)
        last = r.case
    return table


def summary(run: CheckRun) -> str:
    cases = len({r.case for r in run.results})
    failed = run.failures
    text = (
        f"{len(run.results)} check(s) in {cases} case(s) on {run.device}: "
        f"{len(run.results) - len(failed)} passed, {len(failed)} failed in {run.seconds:.1f} s"
    )
    if failed:
        shown = ", ".join(f"{names.shown(r.case)}/{r.check}" for r in failed[:5])
        text += f" ({shown}{', …' if len(failed) > 5 else ''})"
    warned = [r for r in run.results if r.passed and r.warning]
    if warned:
        shown = ", ".join(f"{names.shown(r.case)}/{r.check}" for r in warned[:5])
        text += f"; {len(warned)} passed without telling maps apart ({shown}: see the note)"
    return text


__all__ = [
    "CheckResult",
    "CheckRun",
    "as_line",
    "json_lines",
    "junit_xml",
    "results_table",
    "summary",
]
