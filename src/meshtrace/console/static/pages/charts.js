// Shared page parts: RED charts of a service (uPlot) and a short list of example traces.
import { get } from "../api.js";
import uPlot from "../vendor/uPlot.esm.js";
import { chip, duration, el, errorBox } from "../util.js";

const STEP = { "15m": "1m", "1h": "1m", "6h": "5m", "24h": "15m", "48h": "30m", "7d": "2h" };

function chart(title, xs, series, unit) {
  const holder = el("div", { class: "chart", "data-chart": title });
  const css = getComputedStyle(document.body);
  const colors = ["#0072B2", "#E69F00", "#D55E00"];
  const opts = {
    title, width: 420, height: 160,
    axes: [{ stroke: css.getPropertyValue("--fg") },
      { stroke: css.getPropertyValue("--fg"), size: 64, values: (u, vals) => vals.map((v) => `${v}${unit}`) }],
    series: [{}, ...series.map(([label], i) => ({ label, stroke: colors[i % colors.length], width: 2, points: { show: xs.length < 3 } }))],
    legend: { show: true },
  };
  // uPlot measures its holder: draw once the holder is in the document.
  requestAnimationFrame(() => new uPlot(opts, [xs, ...series.map(([, ys]) => ys)], holder));
  return holder;
}

function threeCharts(points, owner, errorsKey) {
  if (!points.length) return el("p", { class: "muted" }, "No calls in this window.");
  const xs = points.map((p) => p.time);
  return el("div", { class: "charts", ...owner },
    chart("Requests / s", xs, [["rate", points.map((p) => p.rate)]], ""),
    chart(errorsKey === "failed" ? "Failed" : "Errors", xs, [["error %", points.map((p) => 100 * p.errorRate)]], "%"),
    chart("Latency", xs, ["p50", "p95", "p99"].map((k) => [k, points.map((p) => p.latencyMs[k])]), " ms"));
}

export async function redCharts(service, lookback, operation) {
  try {
    const body = await get("/meshtrace/v1/red", { service, operation, lookback, step: STEP[lookback] || "1m" });
    return threeCharts(body.series[0]?.points || [], { "data-service": service }, "errors");
  } catch (error) {
    return errorBox(error);
  }
}

// One call edge over time (client side): `connection` tells an unanswered destination from the real one.
export async function edgeCharts(client, server, connection, lookback) {
  try {
    const body = await get("/meshtrace/v1/servicegraph/edge", { client, server, connection, lookback, step: STEP[lookback] || "1m" });
    return threeCharts(body.series[0]?.points || [], { "data-edge": `${client}→${server}` }, "failed");
  } catch (error) {
    return errorBox(error);
  }
}

export async function traceList(params) {
  try {
    let rows;
    if (params.q) {
      const end = Math.floor(Date.now() / 1000) + 60;
      const seconds = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "48h": 172800, "7d": 604800 }[params.lookback] || 3600;
      const body = await get("/tempo/api/search", { q: params.q, limit: params.limit, start: end - seconds, end });
      rows = body.traces.map((t) => ({ id: t.traceID, root: `${t.rootServiceName}: ${t.rootTraceName}`, ns: t.durationMs * 1e6,
        errors: Object.values(t.serviceStats || {}).reduce((a, s) => a + (s.errorCount || 0), 0) }));
    } else {
      const body = await get("/meshtrace/v1/traces", params);
      rows = body.traces.map((t) => ({ id: t.traceId, root: `${t.rootService}: ${t.rootName}`, ns: Number(t.durationNanos), errors: t.errorCount }));
    }
    return el("section", { class: "examples" }, el("h3", {}, "Example traces"),
      rows.length ? el("ul", {}, rows.map((r) => el("li", {}, el("a", { href: `/console/trace/${r.id}` }, r.root),
        " ", duration(r.ns), r.errors ? el("span", { class: "error" }, ` · ${r.errors} errors`) : ""))) : el("p", { class: "muted" }, "none"));
  } catch (error) {
    return errorBox(error);
  }
}

export { chip };
