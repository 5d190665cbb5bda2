// The access token (docs/security.md). A server started with an auth secret wants one on every session,
// listing and config request. The page takes it from its own URL (`/?token=...`), or an embedding
// application sets `window.causalcastToken` before the page loads, or calls `window.causalcast.setToken()`.
// It travels as `?token=` because browsers cannot put headers on a WebSocket upgrade.

let token = new URLSearchParams(location.search).get("token") || window.causalcastToken || null;

export function setToken(value) { token = value || null; }

export function hasToken() { return Boolean(token); }

/** `path` with the token appended as a query parameter (unchanged without a token). */
export function withToken(path) {
  if (!token) return path;
  return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}
