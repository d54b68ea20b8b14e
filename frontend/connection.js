/** One WebSocket to the stream server that reconnects with capped, jittered backoff. */

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 10000;
const PING_EVERY_MS = 5000;

/** Delay before reconnect attempt `attempt` (1-based): exponential, capped, half jitter. */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** (attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * Events (via `on(name, fn)`):
 *   state {state, attempt?, delayMs?, reconnected?, code?, reason?}
 *   frame Blob   text {object}   rtt ms
 */
export class StreamConnection {
  constructor(url) {
    this.url = url;
    this.ws = null;
    this.attempt = 0;
    this.everOpened = false;
    this.stopped = false;
    this.timer = null;
    this.pingTimer = null;
    this.handlers = new Map();
    this.sentCounts = {};
  }

  on(name, fn) {
    if (!this.handlers.has(name)) this.handlers.set(name, []);
    this.handlers.get(name).push(fn);
  }

  emit(name, value) {
    for (const fn of this.handlers.get(name) || []) fn(value);
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  connect() {
    this.stopped = false;
    clearTimeout(this.timer);
    this.emit("state", { state: this.everOpened ? "reconnecting" : "connecting", attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this.emit("state", { state: "failed", reason: String(err) });
      return;
    }
    ws.binaryType = "blob";
    this.ws = ws;
    ws.onopen = () => {
      const reconnected = this.everOpened;
      this.everOpened = true;
      this.attempt = 0;
      this.startPing();
      this.emit("state", { state: "open", reconnected });
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopPing();
      if (this.stopped) {
        this.emit("state", { state: "closed", code: event.code, reason: event.reason });
        return;
      }
      this.attempt += 1;
      const delayMs = backoffDelay(this.attempt);
      this.emit("state", {
        state: "waiting", attempt: this.attempt, delayMs, code: event.code, reason: event.reason,
      });
      if (this.stopped) return; // a listener closed it (an idle page waits for the user)
      this.timer = setTimeout(() => this.connect(), delayMs);
    };
  }

  receive(data) {
    if (typeof data !== "string") {
      this.emit("frame", data);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return; // the protocol only sends JSON text; ignore anything else
    }
    if (msg.type === "pong" && typeof msg.t === "number") {
      this.emit("rtt", performance.now() - msg.t);
    }
    this.emit("text", msg);
  }

  /** Send one JSON message; returns false when the socket is not open. */
  send(msg) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(msg));
    const key = msg.type === "control" ? `control_${msg.action}` : msg.type;
    this.sentCounts[key] = (this.sentCounts[key] || 0) + 1;
    return true;
  }

  startPing() {
    this.stopPing();
    const ping = () => this.send({ type: "ping", t: performance.now() });
    ping();
    this.pingTimer = setInterval(ping, PING_EVERY_MS);
  }

  stopPing() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  /** Reconnect now, skipping any pending backoff wait. */
  retryNow() {
    if (this.ws) return;
    this.connect();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.stopPing();
    if (this.ws) this.ws.close(1000, "page closed");
  }
}
