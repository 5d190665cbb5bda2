// The header's server status: polls /healthz, every few seconds while the server answers and backing off
// (1, 2, 4 … 30 s) while it does not, so a server that went away is said plainly and not hammered.
import { withToken } from "./token.js";

const OK_PERIOD_MS = 5000;
const MIN_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30000;

export class HealthPoller {
  /** `onHealth(health | null, error)` runs after every poll. */
  constructor(url, onHealth) {
    this.url = url;
    this.onHealth = onHealth;
    this.reachable = null; // unknown until the first answer
    this.failures = 0;
    this.delayMs = OK_PERIOD_MS;
    this.polls = 0;
    this._timer = null;
  }

  /** Poll now, then keep polling; resolves after the first poll. */
  async start() {
    await this.poll();
  }

  async poll() {
    clearTimeout(this._timer);
    this.polls++;
    let health = null, error = null;
    try {
      const r = await fetch(withToken(this.url), { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      health = await r.json();
    } catch (e) {
      error = e;
    }
    this.reachable = Boolean(health);
    this.failures = health ? 0 : this.failures + 1;
    this.delayMs = health ? OK_PERIOD_MS : Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** (this.failures - 1));
    this._timer = setTimeout(() => this.poll(), this.delayMs);
    this.onHealth(health, error);
    return health;
  }

  stop() { clearTimeout(this._timer); }
}
