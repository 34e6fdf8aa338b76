// HTTP API client (contract section 2) and the token kept in sessionStorage.

const TOKEN_KEY = 'callrelay.token';

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An error answered by the API: `{error:{code,message}}` with its HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/** Called when the server says 401 (expired or foreign token). Set by the app. */
export const hooks = { onUnauthorized: null };

/**
 * fetch() against the API with the session token. Resolves to the parsed JSON body;
 * rejects with an ApiError carrying the server's code and message.
 */
export async function api(path, { method = 'GET', body, token = getToken(), auth = true } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (auth && token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, 'network', `Cannot reach the server (${err.message})`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const e = data && data.error ? data.error : {};
    const err = new ApiError(res.status, e.code || `http_${res.status}`, e.message || `${method} ${path} failed with HTTP ${res.status}`);
    if (res.status === 401 && auth && hooks.onUnauthorized) hooks.onUnauthorized(err);
    throw err;
  }
  return data;
}
