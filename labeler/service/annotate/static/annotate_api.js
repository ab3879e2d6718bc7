// The annotation page's side of the server API (labeler/annotate.py): the bearer token and fetches
// that carry it, with the service's one error shape {"error": {"type", "message"}} turned into Errors.

const TOKEN_KEY = "densepref_token";

/** Take ``?token=`` out of the address bar into sessionStorage (this tab only). The page itself is
 * reloaded by an HttpOnly cookie the server set on that first visit. */
export function adoptUrlToken() {
  const params = new URLSearchParams(location.search);
  if (!params.has("token")) return;
  sessionStorage.setItem(TOKEN_KEY, params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + "?" + params.toString());
}

function authHeaders(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: "Bearer " + token } : { ...extra };
}

/** JSON request; ``options.json`` becomes the body. Throws an Error with ``status`` and ``type``. */
export async function api(path, options = {}) {
  const headers = authHeaders({ Accept: "application/json", ...(options.headers || {}) });
  const init = { ...options, headers };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
    delete init.json;
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!resp.ok) {
    const err = (body && body.error) || { type: "HTTP" + resp.status, message: text || resp.statusText };
    let message = err.message;
    if (resp.status === 401) message += " (open this page once as /annotate?manifest=…&token=<token>)";
    throw Object.assign(new Error(message), { status: resp.status, type: err.type });
  }
  return body;
}

/** Save the file at ``path`` (a GET needing the bearer header, so fetched and handed over as a blob). */
export async function download(path, fallbackName) {
  const resp = await fetch(path, { headers: authHeaders() });
  if (!resp.ok) throw new Error(`download failed (HTTP ${resp.status})`);
  const url = URL.createObjectURL(await resp.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = (resp.headers.get("content-disposition") || "").match(/filename="?([^";]+)"?/)?.[1] || fallbackName;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
