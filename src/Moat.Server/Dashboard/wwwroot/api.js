// The API client of the dashboard: the key the user typed (kept in sessionStorage, so it is gone
// when the tab closes), sent as the API's usual Authorization: Bearer header, same origin only.

const KEY = 'moat.apiKey';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) { if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY); },
  onUnauthorized: () => {},
};

/** Calls the API; resolves to parsed JSON (or the Response when raw), rejects with ApiError. */
export async function api(path, { method = 'GET', body, raw = false, key = session.key, headers = {} } = {}) {
  const init = { method, headers: { ...headers }, cache: 'no-store', credentials: 'omit' };
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof ArrayBuffer) {
      init.body = body;
      init.headers['Content-Type'] = 'application/octet-stream';
    } else {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let code = 'http_' + response.status;
    let message = `${method} ${path}: HTTP ${response.status}`;
    try {
      const e = (await response.json()).error;
      if (e?.code) code = e.code;
      if (e?.message) message = e.message;
    } catch { /* not JSON */ }
    const error = new ApiError(response.status, code, message);
    if (response.status === 401 && key === session.key) session.onUnauthorized(error);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** Like api(), but a 404 for a route this server does not have (yet) resolves to null. */
export async function optional(path) {
  try {
    return await api(path);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404 && e.code === 'not_found') return null;
    throw e;
  }
}

export const enc = encodeURIComponent;
