/** Decodes JPEG frames off the main thread and draws only the newest one. */

const FPS_WINDOW_MS = 2000;

export class FrameRenderer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.decoding = false;
    this.waitingBlob = null; // newest blob that arrived while a decode ran
    this.readyBitmap = null; // decoded, not yet drawn
    this.rafPending = false;
    this.arrivals = [];
    this.received = 0;
    this.drawn = 0;
    this.dropped = 0; // frames skipped here because a newer one was ready
    this.onFirstFrame = null;
  }

  /** Accept one JPEG blob from the socket. */
  push(blob) {
    const now = performance.now();
    this.received += 1;
    this.arrivals.push(now);
    while (this.arrivals.length && now - this.arrivals[0] > FPS_WINDOW_MS) this.arrivals.shift();
    if (this.decoding) {
      if (this.waitingBlob) this.dropped += 1;
      this.waitingBlob = blob;
      return;
    }
    this.decode(blob);
  }

  async decode(blob) {
    this.decoding = true;
    try {
      const bitmap = await createImageBitmap(blob);
      if (this.readyBitmap) {
        this.readyBitmap.close();
        this.dropped += 1;
      }
      this.readyBitmap = bitmap;
      this.scheduleDraw();
    } catch {
      this.dropped += 1; // a corrupt frame is skipped, the stream goes on
    } finally {
      this.decoding = false;
    }
    if (this.waitingBlob) {
      const next = this.waitingBlob;
      this.waitingBlob = null;
      this.decode(next);
    }
  }

  scheduleDraw() {
    if (this.rafPending) return;
    this.rafPending = true;
    requestAnimationFrame(() => {
      this.rafPending = false;
      this.draw();
    });
  }

  draw() {
    const bitmap = this.readyBitmap;
    if (!bitmap) return;
    this.readyBitmap = null;
    if (this.canvas.width !== bitmap.width || this.canvas.height !== bitmap.height) {
      this.canvas.width = bitmap.width;
      this.canvas.height = bitmap.height;
    }
    this.ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    this.drawn += 1;
    if (this.drawn === 1 && this.onFirstFrame) this.onFirstFrame();
  }

  /** Frames per second measured from arrivals over the last two seconds. */
  clientFps() {
    const now = performance.now();
    const recent = this.arrivals.filter((t) => now - t <= FPS_WINDOW_MS);
    if (recent.length < 2) return 0;
    const span = Math.max(now - recent[0], 1);
    return ((recent.length - 1) * 1000) / span;
  }
}
