// The service map: the Istio-aware graph laid out top to bottom (dagre), nodes coloured by health,
// edges labelled with rate, error % and p95; click a node or an edge for its RED charts and traces.
import { get } from "../api.js";
import dagre from "../vendor/dagre.esm.js";
import { el, ms, percent, query, setQuery, svg, windowSelect } from "../util.js";
import { edgeCharts, redCharts, traceList } from "./charts.js";

function health(errorRate) {
  return errorRate >= 0.05 ? "bad" : errorRate >= 0.01 ? "warn" : "good";
}

function nodeLabel(n) {
  return n.type === "user" ? "user (entry)" : n.name;
}


// Past this many calls, edge labels would crowd the layout: they move into tooltips (and the side panel).
const LABELLED_EDGES = 40;

function layout(graph) {
  const labelled = graph.edges.length <= LABELLED_EDGES;
  const g = new dagre.graphlib.Graph({ multigraph: false });
  g.setGraph({ rankdir: "TB", nodesep: 40, ranksep: 60, edgesep: 20, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of graph.nodes) {
    const width = Math.max(120, nodeLabel(n).length * 7.4 + 24);
    const height = n.versions.length > 1 ? 62 : 40;
    g.setNode(n.id, { width, height });
  }
  for (const e of graph.edges) {
    g.setEdge(e.source, e.target, labelled ? { width: 190, height: 16, labelpos: "c" } : { width: 0, height: 0 });
  }
  dagre.layout(g);
  return g;
}

export async function render(view) {
  const q = query();
  const lookback = q.lookback || "1h";
  const graph = await get("/meshtrace/v1/servicegraph", { lookback });
  const panel = el("aside", { class: "side map-side" }, el("p", { class: "muted" }, "Select a service or a call."));
  view.append(el("h1", {}, "Service map"),
    el("div", { class: "row tools" }, windowSelect(lookback, (e) => { setQuery({ lookback: e.target.value }); view.replaceChildren(); render(view); }),
      el("span", { class: "legend" }, el("span", { class: "dot-good" }), "healthy ", el("span", { class: "dot-warn" }),
        "≥1% errors ", el("span", { class: "dot-bad" }), "≥5% errors")));
  if (!graph.edges.length) {
    view.append(el("p", { class: "muted" }, "No calls in this window."));
    view.dataset.ready = "true";
    return;
  }
  const g = layout(graph);
  const { width, height } = g.graph();
  const nodes = new Map(graph.nodes.map((n) => [n.id, n]));
  const seconds = (BigInt(graph.end) - BigInt(graph.start)) / 1000000000n;

  const showNode = async (n) => {
    panel.replaceChildren(el("h2", {}, nodeLabel(n)), el("p", { class: "muted" }, `${n.type} · ${n.calls} calls in, ${percent(n.errorRate)} errors, p95 ${ms(n.latencyMs.p95)}`));
    if (n.versions.length) {
      panel.append(el("table", { class: "kv" }, n.versions.map((v) => el("tr", {}, el("th", {}, v.version),
        el("td", {}, `${v.calls} calls, ${v.errors} errors`)))));
    }
    if (n.type === "service" || n.type === "gateway") {
      panel.append(await redCharts(n.name, lookback), await traceList({ service: n.name, lookback, limit: 5 }));
    }
  };
  const showEdge = async (e) => {
    const source = nodes.get(e.source), target = nodes.get(e.target);
    panel.replaceChildren(el("h2", {}, `${nodeLabel(source)} → ${nodeLabel(target)}`),
      el("p", {}, `${e.calls} calls (${e.rate.toFixed(2)}/s), ${e.failed} failed (${percent(e.errorRate)})`),
      el("table", { class: "kv" },
        el("tr", {}, el("th", {}, "client p50 / p95 / p99"), el("td", {}, [e.clientLatencyMs.p50, e.clientLatencyMs.p95, e.clientLatencyMs.p99].map(ms).join(" / "))),
        el("tr", {}, el("th", {}, "server p50 / p95 / p99"), el("td", {}, [e.serverLatencyMs.p50, e.serverLatencyMs.p95, e.serverLatencyMs.p99].map(ms).join(" / "))),
        Object.entries(e.responseFlags).map(([f, n]) => el("tr", {}, el("th", {}, `response flags ${f}`), el("td", {}, n)))),
      el("table", { class: "results" }, el("tr", {}, el("th", {}, "from version"), el("th", {}, "to version"), el("th", {}, "calls"), el("th", {}, "failed")),
        e.versions.map((v) => el("tr", {}, el("td", {}, v.sourceVersion || "–"), el("td", {}, v.targetVersion || "–"), el("td", { class: "num" }, v.calls), el("td", { class: "num" }, v.failed)))));
    const virtual = source.type === "user" || source.type === "unknown" || target.type === "unreached" || target.type === "external";
    panel.append(await edgeCharts(source.name, target.name, virtual ? "virtual_node" : "", lookback));
    if (source.type === "service" || source.type === "gateway") {
      const q2 = `{ resource.service.name = "${source.name}" && kind = client } > { resource.service.name = "${target.name}" }`;
      panel.append(await traceList({ q: q2, lookback, limit: 5 }));
    }
  };

  const edges = graph.edges.map((e) => {
    const points = g.edge(e.source, e.target).points;
    const d = points.map((p, i) => `${i ? "L" : "M"}${p.x},${p.y}`).join(" ");
    const mid = points[Math.floor(points.length / 2)];
    const label = g.edge(e.source, e.target);
    const text = `${e.rate >= 0.1 ? e.rate.toFixed(1) : e.rate.toFixed(3)}/s · ${percent(e.errorRate)} · p95 ${ms(e.clientLatencyMs.p95)}`;
    return svg("g", { class: `edge ${health(e.errorRate)}`, tabindex: 0, role: "button", "data-source": e.source,
      "data-target": e.target, "data-calls": e.calls, onclick: () => showEdge(e),
      onkeydown: (ev) => { if (ev.key === "Enter") showEdge(e); } },
    svg("path", { d, "marker-end": "url(#arrow)" }),
    graph.edges.length <= LABELLED_EDGES ? svg("text", { x: label.x ?? mid.x, y: (label.y ?? mid.y) + 4, "text-anchor": "middle" }, text) : null,
    svg("title", {}, `${e.source} → ${e.target}: ${text}; ${e.calls} calls, ${e.failed} failed`));
  });
  const nodeShapes = graph.nodes.map((n) => {
    const box = g.node(n.id);
    const x = box.x - box.width / 2, y = box.y - box.height / 2;
    const group = svg("g", { class: `node ${n.type} ${health(n.errorRate)}`, tabindex: 0, role: "button",
      "data-node-id": n.id, "data-calls": n.calls, "data-type": n.type, onclick: () => showNode(n),
      onkeydown: (ev) => { if (ev.key === "Enter") showNode(n); } },
    svg("rect", { x, y, width: box.width, height: box.height, rx: n.type === "user" ? box.height / 2 : 8 }),
    svg("text", { x: box.x, y: y + 17, "text-anchor": "middle", class: "name" }, nodeLabel(n)),
    svg("title", {}, `${n.calls} calls in · ${percent(n.errorRate)} errors · p95 ${ms(n.latencyMs.p95)}`));
    if (n.versions.length > 1) {
      const w = (box.width - 12) / n.versions.length;
      n.versions.forEach((v, i) => {
        group.append(svg("g", { class: `version ${health(v.calls ? v.errors / v.calls : 0)}`, "data-version": v.version, "data-calls": v.calls },
          svg("rect", { x: x + 6 + i * w, y: y + 26, width: w - 4, height: 28, rx: 4 }),
          svg("text", { x: x + 6 + i * w + (w - 4) / 2, y: y + 44, "text-anchor": "middle" }, v.version),
          svg("title", {}, `${v.version}: ${v.calls} calls, ${v.errors} errors`)));
      });
    } else if (n.type === "unreached" || n.type === "external") {
      group.append(svg("text", { x: box.x, y: y + 32, "text-anchor": "middle", class: "sub" }, n.type));
    } else if (n.versions.length === 1) {
      group.append(svg("text", { x: box.x, y: y + 32, "text-anchor": "middle", class: "sub" }, n.versions[0].version));
    }
    return group;
  });
  const map = svg("svg", { class: "map", viewBox: `0 0 ${width} ${height}`, role: "img",
    width: Math.ceil(width), height: Math.ceil(height),
    "aria-label": `Service map of the last ${lookback}: ${graph.nodes.length} nodes, ${graph.edges.length} calls` },
  svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }))),
  edges, nodeShapes);
  // Wheel zooms, drag pans: large meshes stay readable.
  let view_ = [0, 0, width, height];
  const apply = () => map.setAttribute("viewBox", view_.join(" "));
  map.addEventListener("wheel", (e) => {
    e.preventDefault();
    const k = e.deltaY > 0 ? 1.15 : 1 / 1.15;
    const r = map.getBoundingClientRect();
    const px = view_[0] + ((e.clientX - r.left) / r.width) * view_[2], py = view_[1] + ((e.clientY - r.top) / r.height) * view_[3];
    view_ = [px - (px - view_[0]) * k, py - (py - view_[1]) * k, view_[2] * k, view_[3] * k];
    apply();
  }, { passive: false });
  let drag = null;
  map.addEventListener("pointerdown", (e) => { if (e.target === map) drag = [e.clientX, e.clientY, ...view_]; });
  map.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const r = map.getBoundingClientRect();
    view_[0] = drag[2] - ((e.clientX - drag[0]) / r.width) * view_[2];
    view_[1] = drag[3] - ((e.clientY - drag[1]) / r.height) * view_[3];
    apply();
  });
  map.addEventListener("pointerup", () => { drag = null; });
  const card = el("div", { class: "card map-card" }, map);
  view.append(el("div", { class: "map-layout" }, card, panel),
    el("p", { class: "muted" }, `${graph.nodes.length} nodes, ${graph.edges.length} edges over ${seconds} s; computed at ingest.`));
  // Fit the map to its card, but never below 60% (text stays legible); larger maps scroll and zoom.
  const room = card.clientWidth - 24;
  if (width > room) map.setAttribute("width", String(Math.max(room, Math.ceil(width * 0.6))));
  map.setAttribute("height", String(Math.ceil((Number(map.getAttribute("width")) / width) * height)));
  view.dataset.ready = "true";
}
