/** Small DOM helpers for the page: messages, connection badge, overlay, form options. */

const $ = (id) => document.getElementById(id);

export const DEFAULT_CONFIG = { ws_port: 8765, ws_path: "/", fps: 16, engine: "?", sizes: ["832*480"],
  default_size: "832*480", auth_required: false, upsampler: false };

/** The server's /config (defaults, with a note, when it cannot be read). */
export async function loadConfig() {
  try {
    const response = await fetch("config", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return { ...DEFAULT_CONFIG, ...(await response.json()) };
  } catch (err) {
    showMessage(`Could not load the server configuration (${err.message}); using defaults.`, "warn");
    return DEFAULT_CONFIG;
  }
}

export function showMessage(text, level = "info", code = "") {
  const box = $("message");
  box.textContent = text;
  box.dataset.level = level;
  box.dataset.code = code;
  box.hidden = false;
}

export function clearMessage() {
  const box = $("message");
  box.hidden = true;
  box.textContent = "";
  box.dataset.code = "";
}

export function setConnectionBadge(state, text) {
  const badge = $("conn-state");
  badge.dataset.state = state;
  badge.textContent = text;
}

function fmt(value, digits = 1, unit = "") {
  return typeof value === "number" && Number.isFinite(value) ? `${value.toFixed(digits)}${unit}` : "–";
}

export function setOverlay({ clientFps, serverFps, latencyMs, rttMs, drops, engine, state }) {
  if (clientFps !== undefined) $("stat-fps").textContent = fmt(clientFps);
  if (serverFps !== undefined) $("stat-server-fps").textContent = fmt(serverFps);
  if (latencyMs !== undefined) $("stat-latency").textContent = fmt(latencyMs, 0, " ms");
  if (rttMs !== undefined) $("stat-rtt").textContent = fmt(rttMs, 0, " ms");
  if (drops !== undefined) $("stat-drops").textContent = String(drops);
  if (engine !== undefined) $("stat-engine").textContent = engine;
  if (state !== undefined) $("stat-state").textContent = state;
}

export function highlightKeys(held) {
  for (const kbd of document.querySelectorAll("kbd[data-key]")) {
    kbd.classList.toggle("held", held.has(kbd.dataset.key));
  }
}

/** Fill the size list and the upsampler/token options from /config. */
export function applyConfig(config) {
  const select = $("size");
  select.replaceChildren();
  const sizes = Array.isArray(config.sizes) && config.sizes.length ? config.sizes : ["832*480"];
  for (const size of sizes) {
    const [w, h] = size.split("*");
    const option = new Option(`${w} × ${h}`, size);
    select.append(option);
  }
  select.value = sizes.includes(config.default_size) ? config.default_size : sizes[0];

  const upsample = $("upsample");
  const label = $("upsample-label");
  if (!config.upsampler) {
    upsample.checked = false;
    upsample.disabled = true;
    label.classList.add("disabled");
    label.title = "Prompt enhancement is not available on this server";
    upsample.setAttribute("aria-description", "not available on this server");
  }

  if (config.auth_required) revealTokenField();
}

export function revealTokenField() {
  const row = $("token-row");
  const token = $("token");
  if (!row.hidden) return;
  row.hidden = false;
  token.value = token.value || sessionStorage.getItem("worldToken") || "";
  token.addEventListener("input", () => sessionStorage.setItem("worldToken", token.value));
}

/** Buttons that only make sense while a world is running. */
export function setRunning(running) {
  $("start").textContent = running ? "Restart" : "Start";
  $("change-prompt").disabled = !running;
  $("reset").disabled = !running;
}

/** A ?watch= page: the picture, its stats and tools; no form, keys or pads (a viewer cannot steer). */
export function enterWatchMode() {
  document.body.classList.add("watch-mode");
  $("watch-banner").hidden = false;
  $("watch-info").hidden = false;
  $("stage-hint").replaceChildren(Object.assign(document.createElement("p"), { textContent: "Joining the shared world…" }));
  $("own-world").href = location.pathname;
}
