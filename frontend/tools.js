/** The picture's tools: Record (WebM download), Share (watch link), Full screen, mouse-look sensitivity. */

import { CanvasRecorder, recordingFileName, recordingSupported } from "./recorder.js";
import { DEFAULT_SENSITIVITY } from "./look.js";
import * as ui from "./ui.js";

const $ = (id) => document.getElementById(id);
const SENSITIVITY_KEY = "mouseSensitivity";

function clock(ms) {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** The read-only link to a world: this page with ?watch=<id> (a ?ws= override is kept). */
export function watchLink(pageUrl, watchId) {
  const page = new URL(pageUrl);
  const link = new URL(page.pathname, page.origin);
  const ws = page.searchParams.get("ws");
  if (ws) link.searchParams.set("ws", ws);
  link.searchParams.set("watch", watchId);
  return link.href;
}

export class StageTools {
  /** @param {() => {prompt?: string, seed?: number, watch_id?: string} | null} world  the world on screen */
  constructor(view, world) {
    this.view = view;
    this.world = world;
    this.recorder = new CanvasRecorder(view);
    this.recTimer = null;
    this.lastRecording = null;
  }

  attach(mouseLook) {
    $("record").addEventListener("click", () => this.toggleRecording());
    $("fullscreen").addEventListener("click", () => this.toggleFullscreen());
    $("share").addEventListener("click", () => this.showShare(true));
    $("share-copy").addEventListener("click", () => this.copyShare());
    document.addEventListener("fullscreenchange", () => {
      $("fullscreen").textContent = document.fullscreenElement ? "Exit full screen" : "Full screen";
    });
    const slider = $("sensitivity");
    const stored = Number.parseFloat(localStorage.getItem(SENSITIVITY_KEY));
    slider.value = String(Number.isFinite(stored) ? stored : DEFAULT_SENSITIVITY);
    const apply = () => {
      mouseLook.sensitivity = Number.parseFloat(slider.value);
      $("sensitivity-value").textContent = `${mouseLook.sensitivity.toFixed(2)}°/px`;
    };
    slider.addEventListener("input", () => {
      apply();
      localStorage.setItem(SENSITIVITY_KEY, slider.value);
    });
    apply();
    if (!recordingSupported()) $("record").title = "Recording is not supported by this browser";
  }

  /** A world is on screen (or not): the buttons follow. A recording goes on through a reconnect. */
  setWorld(running, canShare) {
    $("record").disabled = !this.recorder.recording && (!running || !recordingSupported());
    $("share").disabled = !running || !canShare;
    if (!canShare) this.showShare(false);
  }

  async toggleRecording() {
    if (this.recorder.recording) {
      clearInterval(this.recTimer);
      $("rec-indicator").hidden = true;
      $("record").textContent = "● Record";
      $("record").classList.remove("recording");
      const world = this.world() || {};
      this.lastRecording = await this.recorder.stop(recordingFileName(world.prompt, world.seed));
      ui.showMessage(`Saved ${this.lastRecording.fileName} (${clock(this.lastRecording.ms)}).`, "info", "recorded");
      return;
    }
    try {
      this.recorder.start();
    } catch (err) {
      ui.showMessage(`Recording could not start: ${err.message}`, "warn");
      return;
    }
    $("record").textContent = "■ Stop";
    $("record").classList.add("recording");
    $("rec-indicator").hidden = false;
    const tick = () => { $("rec-time").textContent = clock(this.recorder.elapsedMs()); };
    tick();
    this.recTimer = setInterval(tick, 250);
  }

  toggleFullscreen() {
    if (document.fullscreenElement) {
      document.exitFullscreen();
      return;
    }
    $("stage").requestFullscreen().catch((err) => ui.showMessage(`Full screen is not available: ${err.message}`, "warn"));
  }

  showShare(show) {
    const world = this.world();
    const box = $("share-box");
    if (!show || !world?.watch_id) {
      box.hidden = true;
      return;
    }
    $("share-link").value = watchLink(location.href, world.watch_id);
    box.hidden = false;
    $("share-link").select();
    this.copyShare();
  }

  async copyShare() {
    try {
      await navigator.clipboard.writeText($("share-link").value);
      $("share-copy").textContent = "Copied";
    } catch {
      $("share-link").select(); // no clipboard permission: the link is selected for Ctrl+C
    }
  }

  setViewers(count) {
    $("stat-viewers").textContent = String(count ?? 0);
    $("share-viewers").textContent = count ? `${count} watching now.` : "";
  }
}
