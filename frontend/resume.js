/** What the page needs to continue its world after a dropped connection: the resume token and the frame count. */

export const RESUME_TEXT = {
  expired: "The server kept your world for a while after the connection dropped, but that time has passed",
  engine_restarted: "The world restarted: the engine restarted while you were disconnected",
  used: "Your world was already resumed elsewhere",
  unknown: "The server does not know your world any more (it may have restarted)",
  ended: "Your world has ended",
  not_kept: "The server could not keep your world",
};

export class WorldResume {
  constructor() {
    this.token = null; // resume token of the world streaming (or lost) now
    this.graceS = null; // how long the server keeps the world after a drop (RESUME_GRACE_S)
    this.sessionId = null;
    this.frames = 0; // frames of this world received (the server counts the same way)
    this.live = false; // frames are counted for this world
    this.reconnectedAt = null; // when the socket reopened for a resume
    this.gapMs = null; // reconnect -> first frame of the resumed world, last time
    this.resumes = 0;
  }

  /** A `session` or `resumed` reply: the world (and its new token) from now on. */
  onWorld(msg) {
    this.token = msg.resume_token || null;
    this.graceS = Number.isFinite(msg.resume_grace_s) ? msg.resume_grace_s : null;
    this.sessionId = msg.session_id;
    this.frames = Number.isSafeInteger(msg.frames) ? msg.frames : 0;
    this.live = true;
  }

  onFrame() {
    if (!this.live) return;
    this.frames += 1;
    if (this.reconnectedAt !== null) {
      this.gapMs = performance.now() - this.reconnectedAt;
      this.reconnectedAt = null;
    }
  }

  /** The connection dropped: frames stop counting until the world is back. */
  onLost() {
    this.live = false;
  }

  get canResume() {
    return this.token !== null;
  }

  /** The `resume` message to send on a new connection (the access token goes along when there is one). */
  message(accessToken) {
    this.reconnectedAt = performance.now();
    this.resumes += 1;
    const msg = { type: "resume", resume_token: this.token, frames: this.frames };
    if (accessToken) msg.token = accessToken;
    return msg;
  }

  forget() {
    this.token = null;
    this.sessionId = null;
    this.live = false;
    this.reconnectedAt = null;
  }
}
