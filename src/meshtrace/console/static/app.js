// The console's router: /console/<page>[/<arg>]?<query>, one module per page under ./pages/.
import { get, signIn, signOut, token } from "./api.js";
import { el, errorBox, setServices } from "./util.js";

const PAGES = ["traces", "trace", "map", "health", "compare", "status"];
const app = document.getElementById("app");

function route() {
  const parts = location.pathname.replace(/^\/console\/?/, "").split("/").filter(Boolean);
  const page = PAGES.includes(parts[0]) ? parts[0] : "traces";
  return { page, arg: parts[1] ? decodeURIComponent(parts[1]) : "" };
}

let generation = 0;

async function render() {
  const { page, arg } = route();
  const mine = ++generation;
  for (const link of document.querySelectorAll("[data-nav]")) {
    const active = link.dataset.nav === page || (page === "trace" && link.dataset.nav === "traces");
    link.toggleAttribute("aria-current", active);
  }
  document.title = `meshtrace · ${page}`;
  app.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    const module = await import(`./pages/${page}.js`);
    if (mine !== generation) return;
    const view = el("section", { class: `page page-${page}`, "data-page": page });
    app.replaceChildren(view);
    await module.render(view, arg);
  } catch (error) {
    if (mine === generation) app.replaceChildren(errorBox(error));
  }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='/console/']");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || link.target) return;
  event.preventDefault();
  history.pushState(null, "", link.getAttribute("href"));
  render();
});
window.addEventListener("popstate", render);
window.addEventListener("meshtrace:navigate", render);

const theme = localStorage.getItem("meshtrace.theme")
  || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
document.documentElement.dataset.theme = theme;
document.getElementById("theme").addEventListener("click", () => {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = next;
  localStorage.setItem("meshtrace.theme", next);
});

async function start() {
  if (window.MESHTRACE_AUTH) {
    const out = document.getElementById("signout");
    out.hidden = false;
    out.addEventListener("click", signOut);
    if (!token()) await signIn();
    const status = await get("/meshtrace/v1/status").catch(() => null);
    if (status) document.getElementById("tenant").textContent = `tenant ${status.tenant}`;
  }
  const services = await get("/meshtrace/v1/services").catch(() => null);
  if (services) setServices(services.services);
  await render();
}

start();
