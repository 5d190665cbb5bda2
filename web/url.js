// What the page keeps in its address: the tab, the transport, and `watch=ID` (a shareable link to a
// shared stream). Other query parameters (e.g. an access token) are left as they are.

export function readUrl() {
  const q = new URLSearchParams(location.search);
  return { tab: q.get("tab"), transport: q.get("transport"), watch: q.get("watch") };
}

/** Set (or with null, remove) query parameters without reloading or adding history entries. */
export function writeUrl(changes) {
  const q = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(changes)) {
    if (value == null || value === "") q.delete(key); else q.set(key, value);
  }
  const search = q.toString();
  history.replaceState(null, "", `${location.pathname}${search ? `?${search}` : ""}${location.hash}`);
}

/** The link that opens this page watching shared session `id`. */
export function watchLink(id) {
  const q = new URLSearchParams(location.search);
  q.delete("transport");
  q.set("tab", "video");
  q.set("watch", id);
  return `${location.origin}${location.pathname}?${q.toString()}`;
}
