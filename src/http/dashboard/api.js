// Calls to the Ops-Core API with the operator's key.

/** Where the API lives (same origin as the page). */
export const API = '/v1/opscore';

/**
 * The key in use (null when none), and what to do when the server refuses
 * it: set by app.js.
 */
export const auth = { key: null, onUnauthorized: (_detail) => {} };

/** An error answer of the API: its status, `code` and `detail`. */
export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

export function authHeaders(extra) {
  return Object.assign({ Authorization: 'Bearer ' + auth.key }, extra || {});
}

/** The ApiError of a failed response; a 401 also sends the user to the key form. */
export async function errorFrom(resp) {
  let detail = 'HTTP ' + resp.status;
  let code = '';
  try {
    const body = await resp.json();
    if (body && typeof body.detail === 'string') detail = body.detail;
    if (body && typeof body.code === 'string') code = body.code;
  } catch (_) {
    // Not JSON (a proxy's page, say): the status is all there is.
  }
  if (resp.status === 401) auth.onUnauthorized(detail);
  return new ApiError(resp.status, code, detail);
}

/** GET `API + path` as JSON, or throw its ApiError. */
export async function api(path) {
  const resp = await fetch(API + path, {
    headers: authHeaders({ Accept: 'application/json' }),
    cache: 'no-store',
  });
  if (!resp.ok) throw await errorFrom(resp);
  return resp.json();
}

export const enc = encodeURIComponent;

/** POST `API + path` (with a JSON `body` if given), as JSON, or throw its ApiError. */
export async function apiPost(path, body) {
  const headers = authHeaders({ Accept: 'application/json' });
  const init = { method: 'POST', headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(API + path, init);
  if (!resp.ok) throw await errorFrom(resp);
  return resp.json();
}
