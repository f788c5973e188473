// One trace: a waterfall that renders only the rows in view (50k spans stay interactive), collapsible
// subtrees, the critical path drawn on the bars, span details, search within the trace, a mini-map,
// keyboard navigation and "compare with…".
import { get } from "../api.js";
import { chip, duration, el, go, serviceColor, time } from "../util.js";

const ROW = 26;

function buildTree(spans) {
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    if (s.parentSpanId && byId.has(s.parentSpanId) && s.parentSpanId !== s.spanId) {
      if (!children.has(s.parentSpanId)) children.set(s.parentSpanId, []);
      children.get(s.parentSpanId).push(s);
    } else {
      roots.push(s);
    }
  }
  const byStart = (a, b) => (BigInt(a.startTimeUnixNano) < BigInt(b.startTimeUnixNano) ? -1 : 1);
  for (const list of children.values()) list.sort(byStart);
  roots.sort(byStart);
  // Depth-first order, iteratively (deep traces would overflow recursion).
  const order = [];
  const stack = roots.slice().reverse().map((s) => [s, 0]);
  while (stack.length) {
    const [span, depth] = stack.pop();
    span.depth = depth;
    span.childCount = (children.get(span.spanId) || []).length;
    order.push(span);
    const kids = children.get(span.spanId) || [];
    for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], depth + 1]);
  }
  return { order, byId, children };
}

function details(span, crit, self) {
  const table = (title, obj) => {
    const entries = Object.entries(obj || {});
    if (!entries.length) return null;
    return el("section", {}, el("h3", {}, title), el("table", { class: "kv" },
      entries.sort().map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", { class: "mono" }, v)))));
  };
  return el("div", { class: "details", "data-span-id": span.spanId },
    el("h2", {}, chip(span.service), " ", span.name),
    el("table", { class: "kv" },
      el("tr", {}, el("th", {}, "span id"), el("td", { class: "mono" }, span.spanId)),
      el("tr", {}, el("th", {}, "kind"), el("td", {}, span.kind)),
      el("tr", {}, el("th", {}, "status"), el("td", { class: span.status.code === "Error" ? "error" : "" },
        span.status.code, span.status.message ? ` — ${span.status.message}` : "")),
      el("tr", {}, el("th", {}, "start"), el("td", {}, time(span.startTimeUnixNano))),
      el("tr", {}, el("th", {}, "duration"), el("td", {}, duration(span.durationNanos))),
      el("tr", {}, el("th", {}, "self time"), el("td", {}, duration(self ?? 0))),
      el("tr", {}, el("th", {}, "on the critical path"), el("td", {}, duration(crit ?? 0)))),
    (span.warnings || []).length ? el("ul", { class: "warnings" }, span.warnings.map((w) => el("li", {}, w))) : null,
    table("Attributes", span.attributes),
    table("Resource", span.resource),
    span.events.length ? el("section", {}, el("h3", {}, "Events"), span.events.map((e) =>
      el("div", { class: "event" }, el("strong", {}, e.name), " ", time(e.timeUnixNano), table("", e.attributes)))) : null,
    span.links.length ? el("section", {}, el("h3", {}, "Links"), span.links.map((l) =>
      el("div", {}, el("a", { href: `/console/trace/${l.traceId}` }, l.traceId), " / ", l.spanId))) : null);
}

export async function render(view, traceId) {
  const trace = await get(`/meshtrace/v1/traces/${traceId}`, { analysis: "true" });
  const analysis = trace.analysis;
  const started = performance.now();
  const { order, byId } = buildTree(trace.spans);
  const t0 = BigInt(trace.startTimeUnixNano);
  const total = Math.max(Number(trace.durationNanos), 1);
  const offset = (ns) => Number(BigInt(ns) - t0);
  const critical = new Map();
  for (const seg of analysis.criticalPath) {
    if (!critical.has(seg.spanId)) critical.set(seg.spanId, []);
    critical.get(seg.spanId).push([offset(seg.startTimeUnixNano), offset(seg.endTimeUnixNano)]);
  }
  const collapsed = new Set();
  let visible = order;
  let selected = order[0]?.spanId;
  let matches = [];
  let matchIndex = -1;

  const recompute = () => {
    const out = [];
    let skipDepth = Infinity;
    for (const s of order) {
      if (s.depth > skipDepth) continue;
      skipDepth = collapsed.has(s.spanId) ? s.depth : Infinity;
      out.push(s);
    }
    visible = out;
  };

  // Header, tools, mini-map.
  const services = Object.keys(trace.services).sort();
  const compareInput = el("input", { placeholder: "other trace id", "aria-label": "Trace to compare with", size: 34 });
  const searchInput = el("input", { type: "search", placeholder: "find in trace", "aria-label": "Find spans" });
  const found = el("span", { class: "muted" });
  const minimap = el("canvas", { class: "minimap", height: 60, "aria-label": "Mini-map of the whole trace" });
  const body = el("div", { class: "waterfall", tabindex: 0, role: "tree", "aria-label": "Spans" });
  const spacer = el("div", { class: "spacer" });
  const rows = el("div", { class: "rows" });
  body.append(spacer, rows);
  const side = el("aside", { class: "side" });
  view.append(
    el("h1", {}, chip(trace.rootService), " ", trace.rootName),
    el("p", { class: "summary" },
      el("span", { "data-span-count": trace.spanCount }, `${trace.spanCount} spans`), " · ",
      duration(trace.durationNanos), " · ", `${services.length} services`, " · ",
      el("span", { class: trace.errorCount ? "error" : "" }, `${trace.errorCount} errors`), " · ",
      el("span", { class: "mono" }, trace.traceId), " · ", time(trace.startTimeUnixNano)),
    (trace.warnings || []).length ? el("ul", { class: "warnings", role: "status" },
      trace.warnings.map((w) => el("li", {}, w))) : null,
    el("div", { class: "row tools" }, searchInput, found,
      el("span", { class: "spacer" }),
      el("span", { class: "legend" }, el("span", { class: "crit-swatch" }), "critical path"),
      compareInput, el("button", { type: "button", onclick: () => {
        if (compareInput.value.trim()) go(`/console/compare?a=${trace.traceId}&b=${compareInput.value.trim()}`);
      } }, "Compare with…")),
    minimap,
    el("div", { class: "trace-layout" }, body, side));

  const drawMinimap = () => {
    const ctx = minimap.getContext("2d");
    minimap.width = minimap.clientWidth || 900;
    const w = minimap.width, h = minimap.height;
    ctx.clearRect(0, 0, w, h);
    const step = h / Math.max(order.length, 1);
    order.forEach((s, i) => {
      ctx.fillStyle = s.status.code === "Error" ? "#D55E00" : serviceColor(s.service);
      const x = (offset(s.startTimeUnixNano) / total) * w;
      ctx.fillRect(x, i * step, Math.max((Number(s.durationNanos) / total) * w, 1), Math.max(step, 1));
    });
    const first = Math.floor(body.scrollTop / ROW), shown = Math.ceil(body.clientHeight / ROW);
    ctx.strokeStyle = getComputedStyle(document.body).getPropertyValue("--fg");
    ctx.strokeRect(0, (first / Math.max(visible.length, 1)) * h, w - 1,
      Math.max((shown / Math.max(visible.length, 1)) * h, 2));
  };
  minimap.addEventListener("click", (e) => {
    const fraction = e.offsetY / minimap.height;
    body.scrollTop = fraction * visible.length * ROW - body.clientHeight / 2;
  });

  // The duration sits right of the bar, or inside its end when the bar reaches the right edge.
  const durationLabel = (start, dur) => {
    const end = (start + dur) / total;
    return end < 0.85
      ? el("span", { class: "dur", style: `left:${end * 100}%` }, duration(dur))
      : el("span", { class: "dur inside", style: `right:${(1 - end) * 100 + 0.5}%` }, duration(dur));
  };

  const row = (s, index) => {
    const start = offset(s.startTimeUnixNano), dur = Number(s.durationNanos);
    const bar = el("div", { class: s.status.code === "Error" ? "bar error" : "bar",
      style: `left:${(start / total) * 100}%;width:${Math.max((dur / total) * 100, 0.15)}%;--c:${serviceColor(s.service)}` });
    for (const [a, b] of critical.get(s.spanId) || []) {
      bar.append(el("div", { class: "crit",
        style: `left:${((a - start) / Math.max(dur, 1)) * 100}%;width:${((b - a) / Math.max(dur, 1)) * 100}%` }));
    }
    const toggle = s.childCount
      ? el("button", { type: "button", class: "toggle", tabindex: -1, "aria-label": collapsed.has(s.spanId) ? "expand" : "collapse",
        onclick: (e) => { e.stopPropagation(); toggleSpan(s.spanId); } }, collapsed.has(s.spanId) ? "▸" : "▾")
      : el("span", { class: "toggle" });
    return el("div", {
      class: ["span-row", s.spanId === selected ? "selected" : "", matches.includes(s.spanId) ? "match" : "",
        critical.has(s.spanId) ? "on-path" : ""].join(" "),
      style: `top:${index * ROW}px`, role: "treeitem", "aria-level": s.depth + 1, "aria-selected": s.spanId === selected,
      "data-span-id": s.spanId, "data-service": s.service, onclick: () => select(s.spanId),
    },
    el("div", { class: "label", style: `padding-left:${s.depth * 14}px` }, toggle,
      el("span", { class: "swatch", style: `background:${serviceColor(s.service)}` }),
      el("span", { class: "svc" }, s.service), " ", el("span", { class: "op" }, s.name)),
    el("div", { class: "lane" }, bar, durationLabel(start, dur)));
  };

  const paint = () => {
    spacer.style.height = `${visible.length * ROW}px`;
    const first = Math.max(Math.floor(body.scrollTop / ROW) - 10, 0);
    const last = Math.min(first + Math.ceil((body.clientHeight || 600) / ROW) + 20, visible.length);
    const out = [];
    for (let i = first; i < last; i++) out.push(row(visible[i], i));
    rows.replaceChildren(...out);
    drawMinimap();
  };

  const select = (spanId, scroll = false) => {
    selected = spanId;
    const span = byId.get(spanId);
    side.replaceChildren(details(span, Number(analysis.criticalNanos[spanId] || 0), Number(analysis.selfNanos[spanId] || 0)));
    if (scroll) {
      const i = visible.findIndex((s) => s.spanId === spanId);
      if (i * ROW < body.scrollTop || (i + 1) * ROW > body.scrollTop + body.clientHeight) {
        body.scrollTop = i * ROW - body.clientHeight / 2;
      }
    }
    paint();
  };

  const toggleSpan = (spanId) => {
    if (collapsed.has(spanId)) collapsed.delete(spanId);
    else collapsed.add(spanId);
    recompute();
    paint();
  };

  const reveal = (spanId) => {
    let s = byId.get(spanId);
    while (s && s.parentSpanId && byId.has(s.parentSpanId)) {
      collapsed.delete(s.parentSpanId);
      s = byId.get(s.parentSpanId);
    }
    recompute();
  };

  body.addEventListener("scroll", paint, { passive: true });
  body.addEventListener("keydown", (e) => {
    const i = visible.findIndex((s) => s.spanId === selected);
    const span = byId.get(selected);
    if (e.key === "ArrowDown" && i < visible.length - 1) select(visible[i + 1].spanId, true);
    else if (e.key === "ArrowUp" && i > 0) select(visible[i - 1].spanId, true);
    else if (e.key === "ArrowRight" && span?.childCount && collapsed.has(selected)) toggleSpan(selected);
    else if (e.key === "ArrowLeft" && span?.childCount && !collapsed.has(selected)) toggleSpan(selected);
    else if (e.key === "ArrowLeft" && span?.parentSpanId && byId.has(span.parentSpanId)) select(span.parentSpanId, true);
    else if (e.key === "Home") select(visible[0].spanId, true);
    else if (e.key === "End") select(visible[visible.length - 1].spanId, true);
    else return;
    e.preventDefault();
  });
  searchInput.addEventListener("input", () => {
    const text = searchInput.value.trim().toLowerCase();
    matches = !text ? [] : order.filter((s) => s.service.toLowerCase().includes(text) || s.name.toLowerCase().includes(text)
      || s.spanId.startsWith(text) || Object.values(s.attributes).some((v) => v.toLowerCase().includes(text)))
      .map((s) => s.spanId);
    matchIndex = -1;
    found.textContent = text ? `${matches.length} found` : "";
    paint();
  });
  searchInput.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !matches.length) return;
    e.preventDefault();
    matchIndex = (matchIndex + 1) % matches.length;
    reveal(matches[matchIndex]);
    select(matches[matchIndex], true);
    found.textContent = `${matchIndex + 1} of ${matches.length}`;
  });

  recompute();
  select(analysis.rootCause || selected, true);
  view.dataset.renderMs = String(Math.round(performance.now() - started));
  view.dataset.ready = "true";
}
