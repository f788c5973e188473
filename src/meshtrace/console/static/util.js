// Small helpers every page uses: DOM building, formatting, colours, the URL as page state.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Durations come in nanoseconds (strings or numbers).
export function duration(ns) {
  const v = Number(ns);
  if (!Number.isFinite(v)) return "–";
  if (v < 1e3) return `${v} ns`;
  if (v < 1e6) return `${(v / 1e3).toFixed(v < 1e4 ? 2 : 1)} µs`;
  if (v < 1e9) return `${(v / 1e6).toFixed(v < 1e7 ? 2 : 1)} ms`;
  return `${(v / 1e9).toFixed(2)} s`;
}

export function ms(value) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(value < 10 ? 2 : 1)} ms`;
}

export function percent(fraction) {
  return `${(100 * fraction).toFixed(fraction && fraction < 0.01 ? 2 : 1)}%`;
}

export function time(ns) {
  return new Date(Number(BigInt(ns) / 1000000n)).toLocaleString();
}

// A colour-blind-safe palette (Okabe–Ito, then darker variants): one colour per service name.
const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7A6A00", "#5D3A9B",
  "#1B7837", "#B2182B", "#2166AC", "#8C510A"];
let known = new Map();
// Colours by position in the tenant's sorted service list, so services seen together differ.
export function setServices(names) {
  known = new Map([...names].sort().map((n, i) => [n, PALETTE[i % PALETTE.length]]));
}
export function serviceColor(name) {
  if (known.has(name)) return known.get(name);
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

export function chip(service) {
  return el("span", { class: "chip", style: `--c:${serviceColor(service)}` }, service);
}

export function query() {
  return Object.fromEntries(new URLSearchParams(location.search));
}

export function setQuery(values) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(values)) if (v !== "" && v !== undefined && v !== null) params.set(k, v);
  const text = params.toString();
  history.replaceState(null, "", `${location.pathname}${text ? "?" + text : ""}`);
}

export function go(path) {
  history.pushState(null, "", path);
  window.dispatchEvent(new Event("meshtrace:navigate"));
}

export function errorBox(error) {
  return el("p", { class: "error", role: "alert" }, error.message || String(error));
}

export const WINDOWS = ["15m", "1h", "6h", "24h", "48h", "7d"];

export function windowSelect(value, onchange) {
  return el("select", { name: "lookback", "aria-label": "Time window", onchange },
    WINDOWS.map((w) => el("option", { value: w, selected: w === value }, `last ${w}`)));
}
