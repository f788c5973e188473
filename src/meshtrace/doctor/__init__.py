"""``meshtrace doctor``: the guide's FAQ ("no traces in the console"), automated.

Static checks over the Istio mesh config, Telemetry, Collector config and Kubernetes objects given as files
(``static``), pod checks over a ``kubectl get -o yaml`` dump (``cluster``), and checks against a running
``meshtrace up`` mesh (``live``). Every finding says where, why it stops traces and how to fix it.
"""

from __future__ import annotations

from meshtrace.doctor import cluster, collectors, static
from meshtrace.doctor.findings import Finding, Level, Report
from meshtrace.doctor.inputs import Doc, load


def diagnose(docs: list[Doc], placeholders: dict[str, str] | None = None) -> Report:
    """Every static and cluster-dump check over the documents (none when there are none)."""
    report = Report()
    if not docs:
        return report
    ctx = static.context(docs, placeholders)
    static.check_mesh(ctx, report)
    static.check_telemetry(ctx, report)
    collectors.check_collectors(ctx, report)
    static.check_sidecar_scopes(ctx, report)
    cluster.check_pods(ctx, report)
    return report


def diagnose_files(specs: list[str], placeholders: dict[str, str] | None = None) -> Report:
    return diagnose(load(specs), placeholders)


__all__ = ["Finding", "Level", "Report", "diagnose", "diagnose_files"]
