"""The doctor's report for people: one line per check, and for each problem where, why and the fix."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from meshtrace.doctor.findings import Level, Report

_MARK = {Level.OK: ("✓", "green"), Level.WARN: ("!", "yellow"), Level.FAIL: ("✗", "red")}


def show(report: Report, console: Console, *, verbose: bool = False) -> None:
    for finding in report.findings:
        if finding.level is Level.OK and not verbose:
            continue
        mark, colour = _MARK[finding.level]
        console.print(f"[{colour}]{mark} {finding.level.value:4}[/] {escape(finding.title)}  [dim]({finding.check})[/]")
        if finding.level is Level.OK:
            continue
        if finding.where:
            console.print(Text(f"       where: {finding.where}", style="dim"))
        if finding.why:
            console.print(Text(f"       why:   {finding.why}"))
        if finding.fix:
            lines = finding.fix.splitlines()
            console.print(Text(f"       fix:   {lines[0]}", style="cyan"))
            for line in lines[1:]:
                console.print(Text(f"              {line}", style="cyan"))
    counts = {level: sum(1 for f in report.findings if f.level is level) for level in Level}
    summary = f"{counts[Level.OK]} ok, {counts[Level.WARN]} warnings, {counts[Level.FAIL]} failures"
    console.print(f"[{'red' if report.failed else 'green'}]{summary}[/]")
