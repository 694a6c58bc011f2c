// Calls to the facematch API from the page: the API key (kept in sessionStorage only) and the
// API's JSON errors turned into an ApiError carrying the API's own message.

const KEY_ITEM = "facematch-api-key";

// What the key in use may do (GET key): the page shows only that. Every role until known.
export const access = { id: null, roles: new Set(["verify", "enrol", "admin"]), galleries: ["*"] };

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

// Paths are relative, so the page also works behind a proxy that serves it under a prefix.
export async function call(method, path, form) {
  const headers = {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let response;
  try {
    response = await fetch(path, { method, headers, body: form });
  } catch (error) {
    throw new ApiError(0, "network", `facematch could not be reached (${error.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's error page, for instance
  }
  if (!response.ok) {
    const error = body && body.error;
    const message = error && error.message ? error.message : `HTTP ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, error ? error.code : "http", message);
  }
  if (body === null) throw new ApiError(response.status, "http", "the answer was not JSON");
  return body;
}

export function formOf(fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value instanceof Blob) form.append(name, value, value.name || `${name}.jpg`);
    else form.append(name, value);
  }
  return form;
}

export function showError(element, error) {
  element.textContent = error instanceof ApiError ? error.message : `Unexpected error: ${error}`;
  element.hidden = false;
  if (error instanceof ApiError && error.status === 401) document.dispatchEvent(new Event("facematch:unauthorized"));
}

export function clearError(element) {
  element.textContent = "";
  element.hidden = true;
}
