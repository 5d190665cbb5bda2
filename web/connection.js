// What both transports share: events for the page ("message", "closed") and a once-only loss report.

export class Connection extends EventTarget {
  constructor() {
    super();
    this._closed = false;
  }

  /** Report an unexpected end once (the page then offers to reconnect). */
  _lost(reason) {
    if (this._closed) return;
    this._closed = true;
    this._emit("closed", { reason, unexpected: true });
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
}
