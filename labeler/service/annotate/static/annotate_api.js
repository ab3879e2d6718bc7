// The annotation page's side of the server API (labeler/service/annotate/routes.py): fetches, with
// the service's one error shape {"error": {"type", "message"}} turned into Errors.

// Auth rides on the HttpOnly session cookie the server set when the page was first opened with
// ?token= (it then redirected to the same address without the token): the script never sees it.

/** JSON request; ``options.json`` becomes the body. Throws an Error with ``status`` and ``type``. */
export async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
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

/** Save the file at ``path`` (fetched and handed over as a blob, named by Content-Disposition). */
export async function download(path, fallbackName) {
  const resp = await fetch(path);
  if (!resp.ok) throw new Error(`download failed (HTTP ${resp.status})`);
  const url = URL.createObjectURL(await resp.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = (resp.headers.get("content-disposition") || "").match(/filename="?([^";]+)"?/)?.[1] || fallbackName;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
