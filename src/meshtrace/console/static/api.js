// Query API access: the tenant's token lives in the browser session and goes out as `Authentication`.
const KEY = "meshtrace.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(KEY) || "";
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  location.reload();
}

function url(path, params) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) u.searchParams.append(k, one);
  }
  return u;
}

async function fetchJson(u) {
  const headers = token() ? { Authentication: token() } : {};
  const res = await fetch(u, { headers });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const message = body?.error?.message || body?.errors?.[0]?.msg || res.statusText;
    throw new ApiError(res.status, message);
  }
  return body;
}

let pending = null;

// Ask for a token until the backend accepts one (one dialog for every request waiting on it).
export function signIn() {
  if (pending) return pending;
  const dialog = document.getElementById("signin");
  const form = document.getElementById("signin-form");
  const input = document.getElementById("signin-token");
  const error = document.getElementById("signin-error");
  pending = new Promise((resolve) => {
    const submit = async (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      try {
        await fetchJson(url("/meshtrace/v1/services"));
      } catch (e) {
        error.textContent = e.status === 401 ? "That token is not accepted." : e.message;
        return;
      }
      form.removeEventListener("submit", submit);
      dialog.close();
      pending = null;
      resolve();
    };
    form.addEventListener("submit", submit);
    dialog.addEventListener("cancel", (e) => e.preventDefault());
    dialog.showModal();
    input.focus();
  });
  return pending;
}

export async function get(path, params) {
  try {
    return await fetchJson(url(path, params));
  } catch (e) {
    if (e.status === 401) {
      await signIn();
      return fetchJson(url(path, params));
    }
    throw e;
  }
}
