"""What a check reports: one line (ok / warn / fail), where, why it stops traces, and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Finding:
    """``check`` is a stable id (tests and ``--json`` readers key on it); ``where`` is a file, document
    and path in it (``otel.yaml, document 1: data.…``) or an object (``pod default/reviews-v1-…``)."""

    check: str
    level: Level
    title: str
    where: str = ""
    why: str = ""
    fix: str = ""


@dataclass(slots=True)
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def ok(self, check: str, title: str, where: str = "") -> None:
        self.add(Finding(check, Level.OK, title, where))

    def warn(self, check: str, title: str, where: str = "", why: str = "", fix: str = "") -> None:
        self.add(Finding(check, Level.WARN, title, where, why, fix))

    def fail(self, check: str, title: str, where: str = "", why: str = "", fix: str = "") -> None:
        self.add(Finding(check, Level.FAIL, title, where, why, fix))

    @property
    def failed(self) -> bool:
        return any(f.level is Level.FAIL for f in self.findings)

    def of(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level is not Level.OK]

    def as_json(self) -> dict[str, Any]:
        counts = {level.value: sum(1 for f in self.findings if f.level is level) for level in Level}
        return {"ok": not self.failed, "counts": counts, "findings": [asdict(f) for f in self.findings]}
