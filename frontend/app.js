/** Page entry: loads /config, keeps the stream connected and drives one world session. */

import { deriveWsUrl } from "./wsurl.js";
import { StreamConnection } from "./connection.js";
import { FrameRenderer } from "./renderer.js";
import { KeyControls } from "./controls.js";
import { prepareStartImage } from "./image.js";
import { describeError, describeClose } from "./messages.js";
import * as ui from "./ui.js";

const $ = (id) => document.getElementById(id);
const DEFAULT_CONFIG = { ws_port: 8765, ws_path: "/", fps: 16, engine: "?", sizes: ["832*480"],
  default_size: "832*480", auth_required: false, upsampler: false };
// A close this soon after a server error is explained by that error.
const CLOSE_FOLLOWS_ERROR_MS = 3000;
// Errors that end a pending init: retrying the same init after a reconnect would fail again.
const INIT_FATAL = new Set(["bad_field", "bad_json", "too_large", "unauthorized", "busy", "unknown_type"]);

const view = $("view");
const renderer = new FrameRenderer(view);
let conn = null;
let config = DEFAULT_CONFIG;
let startImage = null; // {dataUrl, width, height, bytes}
let lastInit = null; // what to send again after a reconnect
let runningInit = null; // the init of the world streaming now (kept when a new init is refused)
let idleClosed = false; // the server closed the connection because no world was started: reconnect on Start
let awaitingSession = false;
let session = null;
let lastStats = null;
let lastError = null; // {code, text, at}: an error the server may follow with a close
const received = {};

const controls = new KeyControls(
  (key, action) => (session !== null && conn !== null ? conn.send({ type: "control", key, action }) : false),
  (held) => ui.highlightKeys(held),
);

async function loadConfig() {
  try {
    const response = await fetch("config", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return { ...DEFAULT_CONFIG, ...(await response.json()) };
  } catch (err) {
    ui.showMessage(`Could not load the server configuration (${err.message}); using defaults.`, "warn");
    return DEFAULT_CONFIG;
  }
}

function buildInit() {
  const init = { type: "init", prompt: $("prompt").value.trim() };
  if (startImage) init.image = startImage.dataUrl;
  const seedText = $("seed").value.trim();
  if (seedText !== "") init.seed = Number.parseInt(seedText, 10);
  if ($("upsample").checked && !$("upsample").disabled) init.upsample = true;
  if ($("size").value) init.size = $("size").value;
  if (!$("token-row").hidden && $("token").value) init.token = $("token").value;
  return init;
}

function startSession() {
  const init = buildInit();
  if (!init.prompt) {
    ui.showMessage("Type a prompt describing the world first.", "warn");
    $("prompt").focus();
    return;
  }
  if (init.seed !== undefined && (!Number.isSafeInteger(init.seed) || init.seed < 0)) {
    ui.showMessage(`Seed "${$("seed").value}" is not a whole number ≥ 0; leave it empty for a random one.`, "warn");
    return;
  }
  ui.clearMessage();
  lastInit = init;
  if (idleClosed) {
    idleClosed = false;
    conn.connect(); // the init goes out when it opens
    return;
  }
  sendInit();
  view.focus({ preventScroll: true }); // keys steer right away
}

function sendInit() {
  const hint = $("stage-hint");
  if (!hint.hidden) hint.replaceChildren(Object.assign(document.createElement("p"), { textContent: "Starting your world…" }));
  // A running world keeps streaming (and steering) until the server has opened the new one.
  if (!session) controls.forgetServerState();
  awaitingSession = true;
  if (!session) ui.setOverlay({ state: "starting" });
  // Before /config has loaded there is no connection yet; the init goes out when it opens.
  if (!conn || !conn.send(lastInit)) ui.setOverlay({ state: "waiting for connection" });
}

function onText(msg) {
  received[msg.type] = (received[msg.type] || 0) + 1;
  switch (msg.type) {
    case "session":
      session = msg;
      runningInit = lastInit;
      awaitingSession = false;
      ui.setRunning(true);
      clearMessageIf(["engine_failed", "connection_lost"], true);
      $("stat-seed").textContent = Number.isSafeInteger(msg.seed) ? String(msg.seed) : "–";
      ui.setOverlay({ engine: msg.engine ?? config.engine, state: "generating" });
      if (msg.prompt && msg.prompt !== lastInit?.prompt) $("prompt-hint").textContent = `Running: ${msg.prompt}`;
      break;
    case "stats":
      lastStats = msg;
      ui.setOverlay({
        serverFps: msg.fps, latencyMs: msg.control_latency_ms ?? undefined,
        drops: `${msg.dropped ?? 0} / ${renderer.dropped}`,
      });
      // The server says when the engine cannot hold the target rate; flag it rather than hide it.
      $("stat-server-fps").classList.toggle("slow", msg.engine_keeping_up === false);
      break;
    case "status": {
      const where = msg.state === "queued" && msg.position != null ? ` #${msg.position}` : "";
      ui.setOverlay({ state: `${msg.state}${where}` });
      if (msg.state === "queued") ui.showMessage(`Waiting for a free slot${where ? ` (position${where})` : ""}…`, "info");
      if (msg.state === "generating") clearMessageIf(["engine_failed"], true);
      if (msg.state === "stalled") ui.showMessage("The engine has fallen behind; the picture will resume.", "warn");
      if (msg.state === "ending") ui.showMessage(msg.message || `This world ends in ${Math.round(msg.seconds_left)} s.`, "warn");
      break;
    }
    case "error":
      onServerError(msg);
      break;
    default:
      break; // pong and future messages need nothing here
  }
}

/** Clear the message box when it shows one of `codes` (or any info note, if `orInfo`). */
function clearMessageIf(codes, orInfo = false) {
  const box = $("message");
  if (codes.includes(box.dataset.code) || (orInfo && box.dataset.level === "info")) ui.clearMessage();
}

function onServerError(msg) {
  if (msg.idle === true && !session && !awaitingSession) {
    idleClosed = true; // an idle page: the server closes it; Start opens a new connection
    return;
  }
  const { text, level } = describeError(msg.code, msg.message);
  ui.showMessage(text, level, msg.code || "");
  lastError = { code: msg.code, text, at: performance.now() };
  if (msg.code === "unauthorized") {
    ui.revealTokenField();
    $("token").focus();
  }
  if (awaitingSession && msg.world === "kept") {
    awaitingSession = false; // the new world was refused; the running one goes on
    lastInit = runningInit;
  } else if (awaitingSession && INIT_FATAL.has(msg.code)) {
    awaitingSession = false;
    lastInit = null;
    ui.setOverlay({ state: "idle" });
  }
  if (msg.code === "engine_failed") ui.setOverlay({ state: "engine restarting" });
}

function onConnectionState(event) {
  switch (event.state) {
    case "connecting":
      ui.setConnectionBadge("connecting", "Connecting…");
      break;
    case "reconnecting":
      ui.setConnectionBadge("reconnecting", `Reconnecting (attempt ${event.attempt})…`);
      break;
    case "open":
      ui.setConnectionBadge("open", event.reconnected ? "Reconnected" : "Connected");
      if (event.reconnected && lastInit) {
        ui.showMessage("Reconnected; restarting your world.", "info");
      } else if (event.reconnected) {
        clearMessageIf(["connection_lost"]);
      } else if ($("message").dataset.level !== "warn") {
        ui.clearMessage();
      }
      if (lastInit) sendInit();
      break;
    case "waiting": {
      session = null;
      if (idleClosed) {
        conn.close(); // no reconnect until Start
        ui.setConnectionBadge("closed", "Idle");
        break;
      }
      controls.forgetServerState();
      ui.setRunning(false);
      ui.setOverlay({ state: "disconnected", serverFps: NaN });
      const seconds = (event.delayMs / 1000).toFixed(1);
      ui.setConnectionBadge("waiting", `Offline, retry in ${seconds} s`);
      const explained = lastError && performance.now() - lastError.at < CLOSE_FOLLOWS_ERROR_MS;
      if (explained) {
        // The server said why before closing (unauthorized, busy): keep that reason on screen.
        ui.showMessage(`${lastError.text} Reconnecting in ${seconds} s.`, "error", lastError.code);
      } else {
        ui.showMessage(
          `Lost the connection to the server: ${describeClose(event.code, event.reason)}. `
          + `Reconnecting in ${seconds} s${lastInit ? " and restarting your world" : ""}…`,
          "error", "connection_lost");
      }
      break;
    }
    case "closed":
      ui.setConnectionBadge("closed", "Closed");
      break;
    case "failed":
      ui.setConnectionBadge("failed", "Cannot connect");
      ui.showMessage(`Cannot open the stream connection: ${event.reason}`, "error", "connection_failed");
      break;
    default:
      break;
  }
}

async function useImage(file) {
  try {
    startImage = await prepareStartImage(file);
  } catch (err) {
    ui.showMessage(`Start image not used: ${err.message}.`, "warn");
    return;
  }
  $("image-thumb").src = startImage.dataUrl;
  $("image-caption").textContent = `${startImage.width}×${startImage.height}, ${Math.round(startImage.bytes / 1024)} KB`;
  $("image-preview").hidden = false;
  ui.showMessage("Start image ready: press Start (or Restart) to use it.", "info");
}

function clearImage() {
  startImage = null;
  $("image-preview").hidden = true;
  $("image-thumb").removeAttribute("src");
  $("image-file").value = "";
}

function wireForm() {
  $("start-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startSession();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (session) changePrompt();
      else startSession();
    }
  });
  $("change-prompt").addEventListener("click", changePrompt);
  $("reset").addEventListener("click", () => {
    conn.send({ type: "reset" });
    view.focus({ preventScroll: true });
  });
  $("image-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) useImage(file);
  });
  $("image-clear").addEventListener("click", clearImage);
  view.addEventListener("pointerdown", () => view.focus({ preventScroll: true }));
}

function changePrompt() {
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  if (conn.send({ type: "prompt", prompt }) && lastInit) lastInit.prompt = prompt;
  view.focus({ preventScroll: true });
}

function wireDragAndDrop() {
  const stage = $("stage");
  const veil = $("drop-veil");
  let depth = 0;
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    veil.hidden = false;
    stage.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) {
      veil.hidden = true;
      stage.classList.remove("dragging");
    }
  });
  document.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    veil.hidden = true;
    stage.classList.remove("dragging");
    const file = [...(event.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) useImage(file);
    else ui.showMessage("Drop an image file (JPEG or PNG) to use it as the start frame.", "warn");
  });
}

function exposeDebugHook() {
  // Read-only view for tests and curious users; `send` bypasses the form on purpose.
  window.__worldDebug = {
    get sent() { return { ...conn.sentCounts }; },
    get received() { return { ...received }; },
    get frames() { return { received: renderer.received, drawn: renderer.drawn, dropped: renderer.dropped }; },
    get held() { return [...controls.held]; },
    get session() { return session; },
    get stats() { return lastStats; },
    get wsUrl() { return conn.url; },
    get connected() { return conn.isOpen; },
    clientFps: () => renderer.clientFps(),
    send: (msg) => conn.send(msg),
  };
}

async function main() {
  wireForm();
  wireDragAndDrop();
  controls.attachKeyboard();
  controls.attachPad($("pads"));
  renderer.onFirstFrame = () => { $("stage-hint").hidden = true; };

  config = await loadConfig();
  ui.applyConfig(config);
  ui.setOverlay({ engine: config.engine });
  const [w, h] = String(config.default_size || "832*480").split("*").map(Number);
  if (w > 0 && h > 0) { view.width = w; view.height = h; }

  conn = new StreamConnection(deriveWsUrl(location.href, config));
  conn.on("state", onConnectionState);
  conn.on("text", onText);
  conn.on("frame", (blob) => renderer.push(blob));
  conn.on("rtt", (ms) => ui.setOverlay({ rttMs: ms }));
  exposeDebugHook();
  conn.connect();

  setInterval(() => ui.setOverlay({ clientFps: renderer.clientFps() }), 500);
  window.addEventListener("online", () => conn.retryNow());
  window.addEventListener("pagehide", () => conn.close());
  window.addEventListener("pageshow", (event) => { if (event.persisted) conn.connect(); });
}

main();
