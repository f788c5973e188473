// Traces: a search form (or TraceQL with autocomplete), a scatter plot of the hits, and their list.
import { get } from "../api.js";
import { chip, duration, el, errorBox, go, query, setQuery, svg, time, windowSelect } from "../util.js";

const LOOKBACK_S = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "48h": 172800, "7d": 604800 };

function fromNative(t) {
  return {
    traceId: t.traceId, rootService: t.rootService, rootName: t.rootName, start: BigInt(t.startTimeUnixNano),
    durationNs: Number(t.durationNanos), spans: t.spanCount, errors: t.errorCount,
    services: Object.keys(t.services).sort(),
  };
}

function fromTempo(t) {
  const stats = t.serviceStats || {};
  const counts = Object.values(stats);
  return {
    traceId: t.traceID, rootService: t.rootServiceName, rootName: t.rootTraceName, start: BigInt(t.startTimeUnixNano),
    durationNs: t.durationMs * 1e6, spans: counts.reduce((a, s) => a + s.spanCount, 0),
    errors: counts.reduce((a, s) => a + (s.errorCount || 0), 0), services: Object.keys(stats).sort(),
  };
}

async function search(q) {
  if (q.q) {
    const end = Math.floor(Date.now() / 1000) + 60;
    const body = await get("/tempo/api/search", {
      q: q.q, limit: q.limit || 20, start: end - LOOKBACK_S[q.lookback || "1h"] - 60, end,
    });
    return body.traces.map(fromTempo);
  }
  const attrs = (q.tags || "").split(/\s+/).filter(Boolean);
  const body = await get("/meshtrace/v1/traces", {
    service: q.service, operation: q.operation, attr: attrs, status: q.status, minDuration: q.minDuration,
    maxDuration: q.maxDuration, lookback: q.lookback || "1h", limit: q.limit || 20,
  });
  return body.traces.map(fromNative);
}

function scatter(traces) {
  const width = 900, height = 180, pad = 36;
  if (!traces.length) return el("div");
  const starts = traces.map((t) => Number(t.start / 1000000n));
  const t0 = Math.min(...starts), t1 = Math.max(...starts) || t0 + 1;
  const dmax = Math.max(...traces.map((t) => t.durationNs), 1);
  const x = (t) => pad + ((t - t0) / Math.max(t1 - t0, 1)) * (width - 2 * pad);
  const y = (d) => height - pad / 2 - (d / dmax) * (height - pad);
  const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "scatter", role: "img",
    "aria-label": "Traces by start time and duration; errors in red" },
    svg("line", { x1: pad, y1: height - pad / 2, x2: width - pad / 2, y2: height - pad / 2, class: "axis" }),
    svg("text", { x: 4, y: 12, class: "axis-label" }, duration(dmax)),
    traces.map((t, i) => svg("circle", {
      cx: x(starts[i]), cy: y(t.durationNs), r: 5, class: t.errors ? "dot error" : "dot",
      "data-trace-id": t.traceId, tabindex: 0, onclick: () => go(`/console/trace/${t.traceId}`),
      onkeydown: (e) => { if (e.key === "Enter") go(`/console/trace/${t.traceId}`); },
    }, svg("title", {}, `${t.rootService}: ${t.rootName} — ${duration(t.durationNs)}`))));
  return el("figure", { class: "card" }, plot);
}

function list(traces) {
  if (!traces.length) return el("p", { class: "muted" }, "No traces match.");
  return el("table", { class: "results" },
    el("thead", {}, el("tr", {}, ["Trace", "Spans", "Services", "Duration", "Errors", "Started"].map((h) => el("th", {}, h)))),
    el("tbody", {}, traces.map((t) => el("tr", { "data-trace-id": t.traceId },
      el("td", {}, el("a", { href: `/console/trace/${t.traceId}` }, el("strong", {}, t.rootService), ": ", t.rootName),
        el("div", { class: "muted mono" }, t.traceId)),
      el("td", { class: "num" }, t.spans),
      el("td", {}, t.services.map(chip)),
      el("td", { class: "num" }, duration(t.durationNs)),
      el("td", { class: t.errors ? "num error" : "num" }, t.errors),
      el("td", {}, time(t.start))))));
}

// TraceQL autocomplete: attribute names after a scope, values after `=`, from the Tempo tag endpoints.
function autocomplete(area, box) {
  let names = null;
  const pick = (text, replaceLen) => {
    const at = area.selectionStart;
    area.value = area.value.slice(0, at - replaceLen) + text + area.value.slice(at);
    area.focus();
    box.replaceChildren();
  };
  area.addEventListener("input", async () => {
    const before = area.value.slice(0, area.selectionStart);
    const value = before.match(/((?:resource|span)?\.[\w.:-]+)\s*=\s*"([^"]*)$/);
    const name = before.match(/(resource\.|span\.|\.)([\w.:-]*)$/);
    try {
      if (value) {
        const body = await get(`/tempo/api/v2/search/tag/${encodeURIComponent(value[1])}/values`);
        const hits = body.tagValues.map((v) => v.value).filter((v) => v.startsWith(value[2])).slice(0, 12);
        box.replaceChildren(...hits.map((v) => el("button", { type: "button", class: "suggest",
          onclick: () => pick(`${v}"`, value[2].length) }, v)));
      } else if (name) {
        names = names || await get("/tempo/api/v2/search/tags");
        const scope = name[1] === "resource." ? "resource" : name[1] === "span." ? "span" : null;
        const tags = names.scopes.filter((s) => s.name !== "intrinsic" && (!scope || s.name === scope))
          .flatMap((s) => s.tags);
        const hits = [...new Set(tags)].filter((t) => t.startsWith(name[2])).slice(0, 12);
        box.replaceChildren(...hits.map((t) => el("button", { type: "button", class: "suggest",
          onclick: () => pick(t, name[2].length) }, t)));
      } else {
        box.replaceChildren();
      }
    } catch {
      box.replaceChildren();
    }
  });
}

export async function render(view) {
  const q = query();
  const services = (await get("/meshtrace/v1/services")).services;
  const operation = el("select", { name: "operation", "aria-label": "Operation" }, el("option", { value: "" }, "any operation"));
  const loadOperations = async (service) => {
    operation.replaceChildren(el("option", { value: "" }, "any operation"));
    if (!service) return;
    const ops = (await get(`/meshtrace/v1/services/${encodeURIComponent(service)}/operations`)).operations;
    for (const name of [...new Set(ops.map((o) => o.name))]) {
      operation.append(el("option", { value: name, selected: name === q.operation }, name));
    }
  };
  const service = el("select", { name: "service", "aria-label": "Service", onchange: (e) => loadOperations(e.target.value) },
    el("option", { value: "" }, "any service"),
    services.map((s) => el("option", { value: s, selected: s === q.service }, s)));
  await loadOperations(q.service);
  const traceql = el("textarea", { name: "q", rows: 2, class: "mono", spellcheck: "false",
    placeholder: '{ resource.service.name = "reviews.default" && status = error }', "aria-label": "TraceQL" }, q.q || "");
  const suggestions = el("div", { class: "suggestions", "aria-live": "polite" });
  autocomplete(traceql, suggestions);
  const input = (name, label, placeholder) => el("label", {}, label,
    el("input", { name, value: q[name] || "", placeholder }));
  const status = el("select", { name: "status", "aria-label": "Status" },
    ["", "error", "ok", "unset"].map((s) => el("option", { value: s, selected: s === (q.status || "") }, s || "any status")));
  const results = el("div", { class: "results-area" });
  const form = el("form", { class: "search card", onsubmit: (e) => { e.preventDefault(); run(); } },
    el("div", { class: "row" }, service, operation, status, windowSelect(q.lookback || "1h"),
      input("minDuration", "min ", "10ms"), input("maxDuration", "max ", "2s"),
      input("limit", "limit ", "20")),
    el("div", { class: "row" }, input("tags", "attributes ", "http.status_code=503 response_flags=UF")),
    el("div", { class: "row" }, el("label", { class: "grow" }, "or TraceQL ", traceql)),
    suggestions,
    el("div", { class: "row" }, el("button", { type: "submit" }, "Find traces")));
  view.append(el("h1", {}, "Traces"), form, results);

  async function run() {
    const values = Object.fromEntries(new FormData(form));
    setQuery(values);
    results.replaceChildren(el("p", { class: "muted" }, "Searching…"));
    try {
      const traces = await search(values);
      results.replaceChildren(
        el("p", { class: "muted", "data-count": traces.length }, `${traces.length} traces`), scatter(traces), list(traces));
    } catch (error) {
      results.replaceChildren(errorBox(error));
    }
  }
  await run();
  view.dataset.ready = "true";
}
