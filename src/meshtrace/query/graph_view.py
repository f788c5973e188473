"""The Istio-aware service graph as the console and API show it, built from per-version edges.

Nodes: ``user`` (where requests enter), the ingress gateway (a service that ``user`` calls and whose
name says gateway), services (with their versions as sub-nodes, from ``istio.canonical_revision``), and
destinations that never answered with a span of their own: ``unreached`` when the proxy reported a
connection failure (response flags such as ``UF``, ``NR``, ``UH``), ``external`` otherwise (an
uninstrumented or outside host). Such a destination stays its own node even when a service of the same
name exists, so "details could not be reached" is not folded into the details that answered.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from meshtrace.model.analytics import GraphEdge, Histogram, quantiles
from meshtrace.store.analytics_schema import UNKNOWN, USER, VIRTUAL

_NS_PER_MS = 1_000_000


def latency_ms(h: Histogram) -> dict[str, float | None]:
    return {k: (round(v / _NS_PER_MS, 3) if v is not None else None) for k, v in quantiles(h).items()}


def red_fields(
    calls: int, errors: int, seconds: float, h: Histogram | None, *, errors_key: str = "errors"
) -> dict[str, Any]:
    """Rate, errors, duration: the figures every graph element, series point and operation carries
    (``h`` None: the caller reports latencies its own way, as edges do for each side)."""
    fields: dict[str, Any] = {
        "calls": calls,
        errors_key: errors,
        "rate": calls / seconds,
        "errorRate": errors / calls if calls else 0.0,
    }
    if h is not None:
        fields["latencyMs"] = latency_ms(h)
    return fields


@dataclass(slots=True)
class _Node:
    id: str
    name: str
    type: str
    calls: int = 0
    errors: int = 0
    histogram: Histogram = field(default_factory=Histogram)
    versions: dict[str, list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Edge:
    source: str
    target: str
    calls: int = 0
    failed: int = 0
    client: Histogram = field(default_factory=Histogram)
    server: Histogram = field(default_factory=Histogram)
    flags: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    versions: dict[tuple[str, str], list[int]] = field(default_factory=dict)


def _target_id(edge: GraphEdge) -> tuple[str, str]:
    """Node id and type of an edge's server side."""
    if edge.connection_type != VIRTUAL or edge.client in (USER, UNKNOWN):
        return edge.server, "service"
    kind = "unreached" if edge.flags else "external"
    return f"{edge.server} ({kind})", kind


def service_graph(edges: list[GraphEdge], window_s: float) -> dict[str, Any]:
    nodes: dict[str, _Node] = {}
    links: dict[tuple[str, str], _Edge] = {}

    def node(node_id: str, name: str, kind: str) -> _Node:
        if node_id not in nodes:
            nodes[node_id] = _Node(node_id, name, kind)
        return nodes[node_id]

    for e in edges:
        source_type = "user" if e.client == USER else "unknown" if e.client == UNKNOWN else "service"
        source = node(e.client, e.client, source_type)
        target_id, target_type = _target_id(e)
        target = node(target_id, e.server, target_type)
        if source_type == "user" and "gateway" in e.server:
            target.type = "gateway"
        target.calls += e.calls
        target.errors += e.failed
        target.histogram.merge(e.server_histogram if e.server_histogram.total else e.client_histogram)
        if e.server_version and target_type == "service":
            counts = target.versions.setdefault(e.server_version, [0, 0])
            counts[0] += e.calls
            counts[1] += e.failed
        if e.client_version and source_type == "service":
            source.versions.setdefault(e.client_version, [0, 0])
        link = links.setdefault((source.id, target.id), _Edge(source.id, target.id))
        link.calls += e.calls
        link.failed += e.failed
        link.client.merge(e.client_histogram)
        link.server.merge(e.server_histogram)
        if e.flags:
            link.flags[e.flags] += e.calls
        pair = link.versions.setdefault((e.client_version, e.server_version), [0, 0])
        pair[0] += e.calls
        pair[1] += e.failed
    seconds = max(window_s, 1.0)
    return {
        "nodes": [
            {
                "id": n.id,
                "name": n.name,
                "type": n.type,
                **red_fields(n.calls, n.errors, seconds, n.histogram),
                "versions": [{"version": v, "calls": c, "errors": f} for v, (c, f) in sorted(n.versions.items())],
            }
            for n in sorted(nodes.values(), key=lambda n: n.id)
        ],
        "edges": [
            {
                "source": link.source,
                "target": link.target,
                **red_fields(link.calls, link.failed, seconds, None, errors_key="failed"),
                "clientLatencyMs": latency_ms(link.client),
                "serverLatencyMs": latency_ms(link.server),
                "responseFlags": dict(sorted(link.flags.items())),
                "versions": [
                    {"sourceVersion": sv, "targetVersion": tv, "calls": c, "failed": f}
                    for (sv, tv), (c, f) in sorted(link.versions.items())
                ],
            }
            for link in sorted(links.values(), key=lambda link: (link.source, link.target))
        ],
    }
