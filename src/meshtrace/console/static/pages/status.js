// Status: is the backend ready, what this tenant sent and what was refused (with reasons), the store.
import { get } from "../api.js";
import { el, time } from "../util.js";

export async function render(view) {
  const box = el("div");
  view.append(el("h1", {}, "Status"), box);
  let previous = null;
  const refresh = async () => {
    if (!view.isConnected) return;
    const s = await get("/meshtrace/v1/status");
    const dt = previous ? (s.time - previous.time) / 1e9 : 0;
    const rate = (k) => (previous && dt > 0 ? ((s.ingest[k] - previous.ingest[k]) / dt).toFixed(1) : "–");
    previous = s;
    box.replaceChildren(
      el("p", { class: s.ready ? "ok" : "error", "data-ready": String(s.ready) }, s.ready ? "Ready" : `Not ready: ${s.problems.join("; ")}`),
      el("section", { class: "card" }, el("h2", {}, `Ingest for tenant ${s.tenant} (since the backend started)`),
        el("table", { class: "results" }, el("tr", {}, ["", "spans", "per second now"].map((h) => el("th", {}, h))),
          ["received", "accepted", "rejected", "stored"].map((k) => el("tr", { "data-key": k }, el("th", {}, k),
            el("td", { class: "num" }, s.ingest[k]), el("td", { class: "num" }, rate(k)))))),
      s.tenants ? el("section", { class: "card" }, el("h2", {}, "Every tenant (admin)"),
        el("table", { class: "results tenants" },
          el("tr", {}, ["tenant", "received", "accepted", "rejected", "stored"].map((h) => el("th", {}, h))),
          s.tenants.map((t) => el("tr", { "data-tenant": t.tenant }, el("td", {}, t.tenant),
            ["received", "accepted", "rejected", "stored"].map((k) => el("td", { class: "num" }, t[k])))))) : null,
      el("section", { class: "card" }, el("h2", {}, "Recently rejected"),
        s.rejections.length ? el("table", { class: "results rejections" },
          el("tr", {}, ["when", "transport", "rejected", "accepted", "reasons", "message"].map((h) => el("th", {}, h))),
          s.rejections.map((r) => el("tr", {}, el("td", {}, time(r.time)), el("td", {}, r.transport),
            el("td", { class: "num" }, r.rejected), el("td", { class: "num" }, r.accepted),
            el("td", {}, Object.entries(r.reasons).map(([k, v]) => `${k}: ${v}`).join(", ")), el("td", {}, r.message))))
          : el("p", { class: "muted" }, "Nothing rejected.")),
      el("section", { class: "card" }, el("h2", {}, "Store (all tenants)"),
        el("table", { class: "kv" },
          el("tr", {}, el("th", {}, "engine"), el("td", {}, s.store.engine)),
          el("tr", {}, el("th", {}, "spans"), el("td", {}, s.store.spans)),
          el("tr", {}, el("th", {}, "on disk"), el("td", {}, `${(s.store.bytesOnDisk / 2 ** 20).toFixed(1)} MiB in ${s.store.parts} parts`)),
          el("tr", {}, el("th", {}, "waiting to be inserted"), el("td", {}, `${s.store.pendingSpans} spans`)),
          el("tr", {}, el("th", {}, "last insert"), el("td", {}, `${(1000 * s.store.lastInsertSeconds).toFixed(1)} ms`)),
          el("tr", {}, el("th", {}, "service graph windows"), el("td", {}, s.serviceGraph.windows)),
          s.store.lastError ? el("tr", {}, el("th", {}, "last error"), el("td", { class: "error" }, s.store.lastError)) : null)));
    view.dataset.ready = "true";
  };
  await refresh();
  const timer = setInterval(() => (view.isConnected ? refresh().catch(() => {}) : clearInterval(timer)), 5000);
}
