// Service health: RED charts, operations ranked by impact (the bottlenecks), slow outliers of an
// operation and what is different in them, error groups with example traces.
import { get } from "../api.js";
import { el, errorBox, ms, percent, query, setQuery, windowSelect } from "../util.js";
import { redCharts } from "./charts.js";

async function outliers(service, operation, lookback) {
  const body = await get("/meshtrace/v1/outliers", { service, operation, lookback });
  return el("section", { class: "card outliers", "data-operation": operation },
    el("h3", {}, `Slowest of ${operation} (above p99 ${ms(body.thresholdMs)})`),
    body.traces.length ? el("ul", {}, body.traces.map((t) => el("li", {},
      el("a", { href: `/console/trace/${t.traceId}` }, t.traceId), ` ${ms(t.durationMs)}`))) : el("p", { class: "muted" }, "none"),
    body.differences.length ? el("table", { class: "results" },
      el("tr", {}, el("th", {}, "attribute"), el("th", {}, "value"), el("th", {}, "among outliers"), el("th", {}, "among all")),
      body.differences.slice(0, 8).map((d) => el("tr", {}, el("td", {}, d.key), el("td", { class: "mono" }, d.value),
        el("td", { class: "num" }, percent(d.outlierShare)), el("td", { class: "num" }, percent(d.baselineShare))))) : null);
}

export async function render(view) {
  const q = query();
  const services = (await get("/meshtrace/v1/services")).services;
  const service = q.service || services.find((s) => s.startsWith("productpage")) || services[0];
  const lookback = q.lookback || "1h";
  const rerender = (values) => { setQuery({ service, lookback, ...values }); view.replaceChildren(); render(view); };
  view.append(el("h1", {}, "Service health"),
    el("div", { class: "row tools" },
      el("select", { "aria-label": "Service", name: "service", onchange: (e) => rerender({ service: e.target.value }) },
        services.map((s) => el("option", { value: s, selected: s === service }, s))),
      windowSelect(lookback, (e) => rerender({ lookback: e.target.value }))));
  if (!service) {
    view.append(el("p", { class: "muted" }, "No services yet."));
    view.dataset.ready = "true";
    return;
  }
  view.append(el("section", { class: "card" }, el("h2", {}, service), await redCharts(service, lookback)));
  const detail = el("div", { class: "outlier-area" });
  try {
    const ops = (await get("/meshtrace/v1/impact", { service, lookback, kind: "all" })).operations;
    view.append(el("section", { class: "card" }, el("h2", {}, "Operations by impact (latency × rate)"),
      el("table", { class: "results impact" },
        el("tr", {}, ["operation", "kind", "rate", "errors", "p50", "p95", "p99", "impact"].map((h) => el("th", {}, h))),
        ops.map((o) => el("tr", { "data-operation": o.operation },
          el("td", {}, el("button", { type: "button", class: "link", onclick: async () => {
            detail.replaceChildren(el("p", { class: "muted" }, "Loading…"));
            detail.replaceChildren(await outliers(service, o.operation, lookback).catch(errorBox));
          } }, o.operation)),
          el("td", {}, o.kind), el("td", { class: "num" }, `${o.rate.toFixed(2)}/s`),
          el("td", { class: o.errors ? "num error" : "num" }, percent(o.errorRate)),
          el("td", { class: "num" }, ms(o.latencyMs.p50)), el("td", { class: "num" }, ms(o.latencyMs.p95)),
          el("td", { class: "num" }, ms(o.latencyMs.p99)),
          el("td", {}, el("span", { class: "meter", style: `--v:${o.impact}` }), percent(o.impact)))))), detail);
    const groups = (await get("/meshtrace/v1/errors", { service, lookback })).groups;
    view.append(el("section", { class: "card" }, el("h2", {}, "Errors"),
      groups.length ? el("table", { class: "results errors" },
        el("tr", {}, ["operation", "status code", "response flags", "count", "examples"].map((h) => el("th", {}, h))),
        groups.map((g) => el("tr", {}, el("td", {}, g.operation), el("td", {}, g.httpStatusCode || "–"),
          el("td", {}, g.responseFlags || "–"), el("td", { class: "num" }, g.count),
          el("td", {}, g.traceIds.slice(0, 3).map((id) => el("a", { href: `/console/trace/${id}`, class: "mono" }, `${id.slice(0, 8)}… `))))))
        : el("p", { class: "muted" }, "No errors in this window.")));
  } catch (error) {
    view.append(errorBox(error));
  }
  view.dataset.ready = "true";
}
