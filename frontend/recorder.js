/** Records the picture (canvas) with MediaRecorder as WebM and downloads it. */

const TYPES = ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm"];
const TIMESLICE_MS = 1000;

/** "world-<prompt words>-seed<seed>-<local date and time>.webm" */
export function recordingFileName(prompt, seed, date = new Date()) {
  const words = String(prompt || "world").toLowerCase().normalize("NFKD").replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "").slice(0, 48).replace(/-+$/, "") || "world";
  const pad = (n) => String(n).padStart(2, "0");
  const stamp = `${date.getFullYear()}${pad(date.getMonth() + 1)}${pad(date.getDate())}-`
    + `${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`;
  const seedPart = Number.isSafeInteger(seed) ? `-seed${seed}` : "";
  return `world-${words}${seedPart}-${stamp}.webm`;
}

export function recordingSupported() {
  return typeof MediaRecorder === "function" && typeof HTMLCanvasElement.prototype.captureStream === "function"
    && TYPES.some((t) => MediaRecorder.isTypeSupported(t));
}

export class CanvasRecorder {
  constructor(canvas) {
    this.canvas = canvas;
    this.recorder = null;
    this.parts = [];
    this.startedAt = null;
  }

  get recording() {
    return this.recorder !== null;
  }

  elapsedMs() {
    return this.startedAt === null ? 0 : performance.now() - this.startedAt;
  }

  start() {
    const mimeType = TYPES.find((t) => MediaRecorder.isTypeSupported(t));
    const stream = this.canvas.captureStream(); // a frame whenever the picture is drawn
    this.parts = [];
    this.recorder = new MediaRecorder(stream, { mimeType });
    this.recorder.ondataavailable = (event) => { if (event.data.size) this.parts.push(event.data); };
    this.recorder.start(TIMESLICE_MS);
    this.startedAt = performance.now();
  }

  /** Stop and save as `fileName`; resolves with {fileName, bytes, ms}. */
  stop(fileName) {
    const recorder = this.recorder;
    const ms = this.elapsedMs();
    this.recorder = null;
    this.startedAt = null;
    return new Promise((resolve) => {
      recorder.onstop = () => {
        for (const track of recorder.stream.getTracks()) track.stop();
        const blob = new Blob(this.parts, { type: "video/webm" });
        this.parts = [];
        const url = URL.createObjectURL(blob);
        const link = Object.assign(document.createElement("a"), { href: url, download: fileName });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
        resolve({ fileName, bytes: blob.size, ms });
      };
      recorder.stop();
    });
  }
}
