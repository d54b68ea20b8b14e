/** Page entry: loads /config, keeps the stream connected and drives one world (or watches one with ?watch=). */

import { deriveWsUrl } from "./wsurl.js";
import { StreamConnection } from "./connection.js";
import { FrameRenderer } from "./renderer.js";
import { KeyControls } from "./controls.js";
import { GamepadInput, LookSender, MouseLook } from "./look.js";
import { MiniMap } from "./minimap.js";
import { RESUME_TEXT, WorldResume } from "./resume.js";
import { StageTools } from "./tools.js";
import { accessToken, buildInit, wireDragAndDrop, wireImagePicker } from "./form.js";
import { describeError, describeClose } from "./messages.js";
import * as ui from "./ui.js";

const $ = (id) => document.getElementById(id);
// A close this soon after a server error is explained by that error.
const CLOSE_FOLLOWS_ERROR_MS = 3000;
// Errors that end a pending init: retrying the same init after a reconnect would fail again.
const INIT_FATAL = new Set(["bad_field", "bad_json", "too_large", "unauthorized", "busy", "unknown_type"]);

const view = $("view");
const renderer = new FrameRenderer(view);
const watchId = new URL(location.href).searchParams.get("watch"); // a read-only watch link
const resume = new WorldResume();
const minimap = new MiniMap($("minimap"));
let conn = null;
let config = ui.DEFAULT_CONFIG;
let startImage = null; // {dataUrl, width, height, bytes}
let watching = null; // the `watching` reply while this page watches a world
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
const looks = new LookSender((yaw, pitch) => (session !== null && conn !== null
  ? conn.send({ type: "look", yaw, pitch }) : false));
const steering = () => session !== null && !watchId;
const mouseLook = new MouseLook(view, looks, { enabled: steering, onChange: (on) => { $("look-hint").hidden = !on; } });
const gamepad = new GamepadInput(controls, looks, { enabled: steering });
const tools = new StageTools(view, () => session || watching);

function startSession() {
  const init = buildInit(startImage);
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
      resume.onWorld(msg);
      minimap.clear();
      onWorldShown(msg);
      clearMessageIf(["engine_failed", "connection_lost"], true);
      if (msg.prompt && msg.prompt !== lastInit?.prompt) $("prompt-hint").textContent = `Running: ${msg.prompt}`;
      break;
    case "resumed":
      session = msg;
      awaitingSession = false;
      resume.onWorld(msg);
      onWorldShown(msg);
      ui.showMessage("Reconnected: your world goes on where you left it.", "info", "resumed");
      break;
    case "watching":
      watching = msg;
      minimap.clear();
      if (msg.path) minimap.add(msg.path);
      onWorldShown(msg);
      $("watch-prompt").textContent = msg.prompt;
      clearMessageIf(["connection_lost"], true);
      if (msg.state === "paused") ui.showMessage("The world's owner is reconnecting; the picture is paused.", "info");
      break;
    case "path":
      minimap.add(msg);
      break;
    case "stats":
      lastStats = msg;
      ui.setOverlay({
        serverFps: msg.fps, latencyMs: msg.control_latency_ms ?? undefined,
        drops: `${msg.dropped ?? 0} / ${renderer.dropped}`,
      });
      // The server says when the engine cannot hold the target rate; flag it rather than hide it.
      $("stat-server-fps").classList.toggle("slow", msg.engine_keeping_up === false);
      tools.setViewers(msg.viewers);
      break;
    case "status": {
      const where = msg.state === "queued" && msg.position != null ? ` #${msg.position}` : "";
      ui.setOverlay({ state: `${msg.state}${where}` });
      if (msg.state === "queued") ui.showMessage(`Waiting for a free slot${where ? ` (position${where})` : ""}…`, "info");
      if (msg.state === "generating") clearMessageIf(["engine_failed"], true);
      if (msg.state === "stalled") ui.showMessage("The engine has fallen behind; the picture will resume.", "warn");
      if (msg.state === "paused") ui.showMessage("The world's owner is reconnecting; the picture is paused.", "info");
      if (msg.state === "ending") ui.showMessage(msg.message || `This world ends in ${Math.round(msg.seconds_left)} s.`, "warn");
      if (msg.state === "ended" && watching) {
        // with a message the world itself is gone; without one it reached its length limit and its owner may reset it
        if (msg.message) endWatching(msg.message);
        else ui.showMessage("This world reached its length limit; it goes on if its owner resets it.", "info");
      }
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

/** A world streams to this page now (its own, resumed, or watched). */
function onWorldShown(msg) {
  ui.setRunning(!watchId);
  $("stat-seed").textContent = Number.isSafeInteger(msg.seed) ? String(msg.seed) : "–";
  ui.setOverlay({ engine: msg.engine ?? config.engine, state: "generating" });
  tools.setWorld(true, Boolean(msg.watch_id));
}

function endWatching(text) {
  watching = null;
  tools.setWorld(false, false);
  ui.setOverlay({ state: "ended" });
  ui.showMessage(text, "warn", "watch_ended");
  conn.close(); // nothing to come back to
}

function onServerError(msg) {
  if (msg.idle === true && !session && !awaitingSession && !watchId) {
    idleClosed = true; // an idle page: the server closes it; Start opens a new connection
    return;
  }
  if (msg.code === "not_resumable") {
    resumeFailed(msg);
    return;
  }
  if (msg.code === "resumed_elsewhere") {
    session = null;
    resume.forget();
    lastInit = null;
    ui.setRunning(false);
    tools.setWorld(false, false);
    ui.showMessage("This world continued in another tab or window; this page stopped following it.", "warn",
      "resumed_elsewhere");
    conn.close();
    return;
  }
  if (watchId && (msg.code === "not_found" || msg.code === "busy")) {
    endWatching(msg.code === "busy" ? `${describeError(msg.code, msg.message).text}` : "This watch link's world is not running (it may have ended).");
    return;
  }
  const { text, level } = describeError(msg.code, msg.message);
  ui.showMessage(text, level, msg.code || "");
  lastError = { code: msg.code, text, at: performance.now() };
  if (msg.code === "unauthorized") {
    resume.forget(); // the world needs the access token it was started with; Start begins again
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

/** The server could not continue the world: say why and start a fresh one with the same settings. */
function resumeFailed(msg) {
  resume.forget();
  awaitingSession = false;
  const why = RESUME_TEXT[msg.reason] || "Your world could not be resumed";
  const code = msg.reason === "engine_restarted" ? "world_restarted" : "world_lost";
  if (lastInit) {
    ui.showMessage(`${why}; starting it again from the start.`, "warn", code);
    sendInit();
  } else {
    ui.showMessage(`${why}.`, "warn", code);
  }
}

/** What a (re)opened connection sends first: watch, resume, or the last init. */
function greet(reconnected) {
  if (watchId) {
    conn.send({ type: "watch", watch_id: watchId, ...(accessToken() ? { token: accessToken() } : {}) });
  } else if (reconnected && resume.canResume) {
    awaitingSession = true;
    ui.setOverlay({ state: "resuming" });
    conn.send(resume.message(accessToken()));
  } else if (lastInit) {
    if (reconnected) ui.showMessage("Reconnected; restarting your world.", "info");
    sendInit();
  }
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
      if (event.reconnected) {
        clearMessageIf(["connection_lost"]);
      } else if ($("message").dataset.level !== "warn") {
        ui.clearMessage();
      }
      greet(event.reconnected);
      break;
    case "waiting": {
      session = null;
      watching = null;
      resume.onLost();
      looks.clear();
      tools.setWorld(false, false);
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
        const kept = resume.graceS ? ` (the server keeps it for ${resume.graceS} s)` : "";
        const then = resume.canResume ? ` and continuing your world${kept}`
          : watchId ? "" : lastInit ? " and restarting your world" : "";
        ui.showMessage(
          `Lost the connection to the server: ${describeClose(event.code, event.reason)}. `
          + `Reconnecting in ${seconds} s${then}…`,
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
  const setImage = (image) => { startImage = image; };
  wireImagePicker(setImage);
  wireDragAndDrop(setImage);
  view.addEventListener("pointerdown", () => view.focus({ preventScroll: true }));
}

function changePrompt() {
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  if (conn.send({ type: "prompt", prompt }) && lastInit) lastInit.prompt = prompt;
  view.focus({ preventScroll: true });
}

function exposeDebugHook() {
  // Read-only view for tests and curious users; `send` bypasses the form on purpose.
  window.__worldDebug = {
    get sent() { return { ...conn.sentCounts }; },
    get received() { return { ...received }; },
    get frames() { return { received: renderer.received, drawn: renderer.drawn, dropped: renderer.dropped }; },
    get held() { return [...controls.held]; },
    get session() { return session; },
    get watching() { return watching; },
    get resume() { return { frames: resume.frames, gapMs: resume.gapMs, resumes: resume.resumes, token: resume.token }; },
    get looksSent() { return looks.sent; },
    get pointerLocked() { return mouseLook.locked; },
    get gamepad() { return gamepad.connected; },
    get recording() { return { active: tools.recorder.recording, last: tools.lastRecording }; },
    get mapPoints() { return minimap.points.length; },
    get stats() { return lastStats; },
    get wsUrl() { return conn.url; },
    get connected() { return conn.isOpen; },
    clientFps: () => renderer.clientFps(),
    send: (msg) => conn.send(msg),
  };
}

async function main() {
  if (watchId) {
    ui.enterWatchMode(); // no keys, pads, mouse look or form: a viewer cannot steer
  } else {
    wireForm();
    controls.attachKeyboard();
    controls.attachPad($("pads"));
    mouseLook.attach();
    gamepad.attach();
    window.addEventListener("blur", () => looks.clear());
  }
  tools.attach(mouseLook);
  renderer.onFirstFrame = () => { $("stage-hint").hidden = true; };

  config = await ui.loadConfig();
  ui.applyConfig(config);
  ui.setOverlay({ engine: config.engine });
  const [w, h] = String(config.default_size || "832*480").split("*").map(Number);
  if (w > 0 && h > 0) { view.width = w; view.height = h; }

  conn = new StreamConnection(deriveWsUrl(location.href, config));
  conn.on("state", onConnectionState);
  conn.on("text", onText);
  conn.on("frame", (blob) => {
    resume.onFrame();
    renderer.push(blob);
  });
  conn.on("rtt", (ms) => ui.setOverlay({ rttMs: ms }));
  exposeDebugHook();
  conn.connect();

  setInterval(() => ui.setOverlay({ clientFps: renderer.clientFps() }), 500);
  window.addEventListener("online", () => conn.retryNow());
  window.addEventListener("pagehide", () => conn.close());
  window.addEventListener("pageshow", (event) => { if (event.persisted) conn.connect(); });
}

main();
