// Compare two traces (or the p50 and p99 traces of an operation): spans aligned by path, what is
// missing or extra, and where the time difference comes from (critical-path contributions).
import { get } from "../api.js";
import { el, errorBox, ms, query, setQuery } from "../util.js";

export async function render(view) {
  const q = query();
  const field = (name, label, placeholder) => el("label", {}, label, el("input", { name, value: q[name] || "", placeholder }));
  const out = el("div", { class: "compare-out" });
  const form = el("form", { class: "card search", onsubmit: (e) => { e.preventDefault(); run(); } },
    el("div", { class: "row" }, field("a", "A ", "trace id or p50"), field("b", "B ", "trace id or p99")),
    el("div", { class: "row" }, field("service", "service (for groups) ", "productpage.default"),
      field("operation", "operation ", ""), field("lookback", "window ", "1h")),
    el("button", { type: "submit" }, "Compare"));
  view.append(el("h1", {}, "Compare"), form, out);

  async function run() {
    const values = Object.fromEntries(new FormData(form));
    setQuery(values);
    if (!values.a || !values.b) {
      view.dataset.ready = "true";
      return;
    }
    out.replaceChildren(el("p", { class: "muted" }, "Comparing…"));
    try {
      const body = await get("/meshtrace/v1/compare", values);
      const max = Math.max(...body.spans.map((s) => Math.abs(s.contributionMs || 0)), 0.001);
      out.replaceChildren(
        el("p", { class: "summary", "data-difference-ms": body.differenceMs },
          `A ${ms(body.a.durationMs)} (${body.a.traceIds.length} trace${body.a.traceIds.length > 1 ? "s" : ""}) · `,
          `B ${ms(body.b.durationMs)} (${body.b.traceIds.length}) · difference `,
          el("strong", {}, `${body.differenceMs >= 0 ? "+" : ""}${ms(body.differenceMs)}`)),
        el("table", { class: "results compare" },
          el("tr", {}, ["span (path)", "", "A", "B", "contribution to B − A"].map((h) => el("th", {}, h))),
          body.spans.map((s) => {
            const last = s.path[s.path.length - 1];
            const c = s.contributionMs || 0;
            return el("tr", { class: s.status, "data-status": s.status, "data-contribution": c },
              el("td", { style: `padding-left:${(s.path.length - 1) * 12 + 4}px` }, el("strong", {}, last.service), " ", last.name),
              el("td", {}, s.status === "both" ? "" : el("span", { class: `badge ${s.status}` }, s.status)),
              el("td", { class: "num" }, ms(s.aDurationMs)), el("td", { class: "num" }, ms(s.bDurationMs)),
              el("td", {}, el("span", { class: c >= 0 ? "delta up" : "delta down", style: `--v:${Math.abs(c) / max}` }),
                ` ${c >= 0 ? "+" : ""}${ms(c)}`));
          })));
      view.dataset.ready = "true";
    } catch (error) {
      out.replaceChildren(errorBox(error));
    }
  }
  await run();
}
