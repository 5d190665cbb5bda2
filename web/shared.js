// Shared streams on the Video tab: the list of streams others share (GET /streams, with viewer counts,
// each with a Watch button) and the timeline of prompt switches (`prompt_applied` notices).

import { el } from "./dom.js";
import { modelName } from "./labels.js";
import { withToken } from "./token.js";

export class StreamsList {
  /** `onWatch(stream)` is called when a Watch button is pressed. */
  constructor(listEl, onWatch) {
    this.listEl = listEl;
    this.onWatch = onWatch;
    this.streams = [];
    this.ownSession = null; // this page's shared session (not offered for watching; its viewers shown)
    this.busy = false; // a session or a watch is running: Watch buttons are disabled
    this._timer = null;
  }

  /** Poll every `periodMs` until stopped. */
  start(periodMs = 2000) {
    if (this._timer) return;
    this.refresh();
    this._timer = setInterval(() => this.refresh(), periodMs);
  }

  stop() { clearInterval(this._timer); this._timer = null; }

  async refresh() {
    try {
      const r = await fetch(withToken("/streams"));
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      this.streams = (await r.json()).streams || [];
    } catch (e) {
      this.streams = [];
      this.render(`cannot list shared streams (${e.message})`);
      return this.streams;
    }
    this.render();
    return this.streams;
  }

  /** Viewers of this page's own shared session (null when it is not listed). */
  ownViewers() {
    const own = this.streams.find((s) => s.session === this.ownSession);
    return own ? own.viewers : null;
  }

  render(note) {
    this.listEl.replaceChildren();
    const others = this.streams.filter((s) => s.session !== this.ownSession);
    if (note || !others.length) {
      this.listEl.append(el("li", { className: "muted" }, note || "No one is sharing a stream right now."));
      return;
    }
    for (const s of others) {
      const button = el("button", { className: "watch", disabled: this.busy, dataset: { session: s.session } }, "Watch");
      button.addEventListener("click", () => this.onWatch(s));
      const viewers = `${s.viewers} watching`;
      // a stream is named by what it shows (its model and current prompt); the id is for telling two apart
      const title = s.prompt ? [el("q", { className: "stream-prompt" }, s.prompt), ` · ${modelName(s.model)}`] : [modelName(s.model)];
      this.listEl.append(el("li", { dataset: { session: s.session }, title: `stream ${s.session}` },
        ...title, ` · ${viewers} `, el("code", { className: "muted" }, s.session.slice(0, 6)), button));
    }
  }
}

export class Timeline {
  constructor(listEl) {
    this.listEl = listEl;
    this.entries = [];
    this.fps = null;
  }

  /** A new stream: forget old switches, learn its frame rate (for times). */
  reset(fps) {
    this.entries = [];
    this.fps = fps || null;
    this.listEl.replaceChildren(el("li", { className: "muted" }, "No prompt switch yet."));
  }

  /** A `prompt_applied` notice: when (frame, media time) the switch took effect, and what it cost. */
  add(notice) {
    const frame = Number.isFinite(notice.frame) ? notice.frame : null;
    const entry = {
      text: notice.text, frame, block: notice.block ?? null, switch: notice.switch ?? null,
      switchMs: notice.switch_ms ?? null, seconds: frame != null && this.fps ? frame / this.fps : null,
      receivedAt: new Date().toLocaleTimeString(),
    };
    if (!this.entries.length) this.listEl.replaceChildren();
    this.entries.push(entry);
    const when = entry.seconds != null ? formatTime(entry.seconds) : "–";
    const details = [frame != null ? `frame ${frame}` : null, entry.switch, entry.switchMs != null ? `${entry.switchMs.toFixed(0)} ms` : null]
      .filter(Boolean).join(" · ");
    this.listEl.append(el("li", {}, el("span", { className: "when" }, when), " ",
      el("q", {}, entry.text), " ", el("span", { className: "muted" }, details)));
    return entry;
  }
}

function formatTime(seconds) {
  const m = Math.floor(seconds / 60);
  return `${m}:${(seconds - 60 * m).toFixed(1).padStart(4, "0")}`;
}
