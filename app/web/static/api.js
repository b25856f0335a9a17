// Calls to the service's HTTP API (docs/api.md) and readable errors.
// URLs are relative to the page, so the page also works behind a path prefix.

const KEY_STORAGE = "p2law.apiKey";

const STATUS_TEXT = {
  400: "Bad request", 401: "Unauthorized", 404: "Not found", 409: "Conflict",
  413: "Too large", 415: "Unsupported media type", 422: "Cannot process",
  500: "Server error", 503: "Service unavailable",
};

/** The API key kept in this browser ("" when none). */
export function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

/** Keep `key` in this browser (an empty key removes it). */
export function setApiKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage refused (private mode): the key then lasts as long as the field's value.
  }
}

/** A failed request: `status` (0 when the service did not answer), `body`, readable `message`. */
export class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function formatValue(value) {
  return typeof value === "number" ? String(Number(value.toPrecision(6))) : JSON.stringify(value);
}

/** The `{"detail": ...}` of an error as one readable line, with the other fields it carries. */
export function describeError(status, body, text) {
  const label = `${status} ${STATUS_TEXT[status] || ""}`.trim();
  if (body && typeof body === "object" && "detail" in body) {
    const detail = body.detail;
    let message;
    if (typeof detail === "string") {
      message = detail;
    } else if (Array.isArray(detail)) {
      message = detail
        .map((problem) => {
          const where = (problem.loc || []).filter((part) => part !== "body").join(".");
          return where ? `${where}: ${problem.msg}` : problem.msg;
        })
        .join("; ");
    } else {
      message = JSON.stringify(detail);
    }
    const extra = Object.entries(body)
      .filter(([name]) => name !== "detail")
      .map(([name, value]) => `${name} = ${formatValue(value)}`);
    return `${label}: ${message}${extra.length ? ` (${extra.join(", ")})` : ""}`;
  }
  return `${label}: ${(text || "no body").slice(0, 300)}`;
}

/**
 * Call the API and return the parsed JSON, or throw an ApiError.
 * `write: true` sends the stored key as X-API-Key (the routes that need it when API_KEY is set).
 */
export async function api(path, { method = "GET", body, write = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (write && apiKey()) headers["X-API-Key"] = apiKey();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, null, `the service did not answer (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data, describeError(response.status, data, text));
  return data;
}

/** Every item of a paged list route (docs/api.md "Pages"), up to `max` items. */
export async function allPages(path, { limit = 1000, max = 20000 } = {}) {
  const items = [];
  const sep = path.includes("?") ? "&" : "?";
  for (let offset = 0; offset < max; offset += limit) {
    const page = await api(`${path}${sep}offset=${offset}&limit=${limit}`);
    items.push(...page.items);
    if (offset + page.items.length >= page.total || page.items.length === 0) break;
  }
  return items;
}

/** Show `error` (an ApiError or any Error) in the alert element `box`; null hides it. */
export function showError(box, error) {
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  let message = error.message || String(error);
  if (error.status === 401) message += " Enter the service's API key at the top of the page.";
  box.textContent = message;
  box.hidden = false;
}
