/** Derive the stream's WebSocket URL from the page location and /config. */

// "<id>-<port>.proxy.runpod.net": the proxy routes by the port in the first
// label, so the WebSocket lives on the same name with the ws port swapped in.
const PROXY_LABEL = /^(.+)-(\d{2,5})$/;

function isProxyHost(hostname, httpPort) {
  const [first, ...rest] = hostname.split(".");
  const match = PROXY_LABEL.exec(first);
  if (!match || rest.length < 2) return false;
  if (httpPort != null) return match[2] === String(httpPort);
  return rest.includes("proxy");
}

function withPath(base, path) {
  const p = path && path.startsWith("/") ? path : `/${path || ""}`;
  return `${base}${p}`;
}

/**
 * The ws(s):// URL to open.
 *
 * @param {string} pageUrl  the page's location.href
 * @param {{ws_port?: number, ws_path?: string, http_port?: number}} config
 * @returns {string}
 */
export function deriveWsUrl(pageUrl, config = {}) {
  const page = new URL(pageUrl);
  const override = page.searchParams.get("ws");
  if (override) {
    // Accept ws(s)://, http(s):// (mapped to ws(s)) and page-relative paths.
    const target = new URL(override, page);
    if (target.protocol === "http:") target.protocol = "ws:";
    if (target.protocol === "https:") target.protocol = "wss:";
    return target.href;
  }
  const scheme = page.protocol === "https:" ? "wss:" : "ws:";
  const wsPort = config.ws_port ?? 8765;
  const path = config.ws_path ?? "/";
  const hostname = page.hostname; // IPv6 literals keep their brackets here
  if (isProxyHost(hostname, config.http_port)) {
    const [first, ...rest] = hostname.split(".");
    const id = PROXY_LABEL.exec(first)[1];
    const host = [`${id}-${wsPort}`, ...rest].join(".");
    return withPath(`${scheme}//${host}`, path);
  }
  return withPath(`${scheme}//${hostname}:${wsPort}`, path);
}
