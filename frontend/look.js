/** Mouse look (pointer lock) and gamepads: continuous turns sent as `look` deltas, gamepad moves as key presses. */

export const LOOK_SEND_MS = 50; // at most 20 look messages a second (the server allows 40)
const MIN_SEND_DEG = 0.05; // smaller sums wait for more movement
export const DEFAULT_SENSITIVITY = 0.1; // degrees per pixel of mouse movement
const STICK_DEAD = 0.15; // right stick: ignore small drift
const MOVE_DEAD = 0.35; // left stick: beyond this a direction counts as a held key
const STICK_DEG_PER_S = 32; // full right-stick deflection turns as fast as a held look key (2 degrees per frame)
const GAMEPAD_POLL_MS = 33;

/** Adds look deltas up and sends them at most every LOOK_SEND_MS. */
export class LookSender {
  /** @param {(yaw: number, pitch: number) => boolean} send  returns whether it went out */
  constructor(send) {
    this.send = send;
    this.yaw = 0;
    this.pitch = 0;
    this.timer = null;
    this.sent = 0;
  }

  add(yaw, pitch) {
    this.yaw += yaw;
    this.pitch += pitch;
    if (this.timer === null) this.timer = setTimeout(() => this.flush(), LOOK_SEND_MS);
  }

  flush() {
    this.timer = null;
    if (Math.abs(this.yaw) < MIN_SEND_DEG && Math.abs(this.pitch) < MIN_SEND_DEG) return;
    const yaw = Math.round(this.yaw * 100) / 100;
    const pitch = Math.round(this.pitch * 100) / 100;
    this.yaw = 0;
    this.pitch = 0;
    if (this.send(yaw, pitch)) this.sent += 1;
  }

  /** Forget what was not sent (focus lost, world changed). */
  clear() {
    this.yaw = 0;
    this.pitch = 0;
  }
}

/** Pointer lock on the picture: mouse movement turns (x) and pitches (y) the camera. */
export class MouseLook {
  constructor(canvas, sender, { enabled = () => true, onChange = () => {} } = {}) {
    this.canvas = canvas;
    this.sender = sender;
    this.enabled = enabled;
    this.onChange = onChange;
    this.sensitivity = DEFAULT_SENSITIVITY;
  }

  get locked() {
    return document.pointerLockElement === this.canvas;
  }

  attach() {
    this.canvas.addEventListener("click", () => {
      if (!this.locked && this.enabled()) this.lock();
    });
    document.addEventListener("pointerlockchange", () => {
      if (!this.locked) this.sender.clear();
      this.onChange(this.locked);
    });
    // The hint follows the lock itself: a late error or rejection may come after the lock was taken.
    document.addEventListener("pointerlockerror", () => this.onChange(this.locked));
    document.addEventListener("mousemove", (event) => {
      if (!this.locked || !this.enabled()) return;
      // Right and up are positive: moving the mouse up looks up.
      this.sender.add(event.movementX * this.sensitivity, -event.movementY * this.sensitivity);
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.locked) document.exitPointerLock();
    });
  }

  lock() {
    try {
      const pending = this.canvas.requestPointerLock();
      if (pending && pending.catch) pending.catch(() => this.onChange(this.locked));
    } catch {
      this.onChange(false); // no pointer lock here (some embedded browsers): keys and pads still steer
    }
  }
}

function deadZone(value, dead) {
  const v = Number.isFinite(value) ? value : 0;
  if (Math.abs(v) <= dead) return 0;
  return Math.sign(v) * ((Math.abs(v) - dead) / (1 - dead)) ** 2; // fine control near the centre
}

/** The standard gamepad layout: left stick moves (as W/A/S/D), right stick looks (as look deltas). */
export class GamepadInput {
  constructor(controls, sender, { enabled = () => true } = {}) {
    this.controls = controls;
    this.sender = sender;
    this.enabled = enabled;
    this.held = new Set();
    this.last = null;
    this.connected = false;
  }

  attach() {
    if (typeof navigator.getGamepads !== "function") return;
    setInterval(() => this.poll(performance.now()), GAMEPAD_POLL_MS);
  }

  poll(now) {
    const pad = [...(navigator.getGamepads() || [])].find((p) => p && p.connected !== false && p.axes?.length >= 4);
    this.connected = Boolean(pad);
    const dt = this.last === null ? 0 : Math.min(0.2, (now - this.last) / 1000);
    this.last = now;
    const active = pad && this.enabled() && document.visibilityState === "visible";
    const [lx, ly, rx, ry] = active ? pad.axes : [0, 0, 0, 0];
    const want = new Set();
    if (ly < -MOVE_DEAD) want.add("w");
    if (ly > MOVE_DEAD) want.add("s");
    if (lx < -MOVE_DEAD) want.add("a");
    if (lx > MOVE_DEAD) want.add("d");
    for (const key of this.held) if (!want.has(key)) this.controls.release(key, "gamepad");
    for (const key of want) if (!this.held.has(key)) this.controls.press(key, "gamepad");
    this.held = want;
    const yaw = deadZone(rx, STICK_DEAD) * STICK_DEG_PER_S * dt;
    const pitch = -deadZone(ry, STICK_DEAD) * STICK_DEG_PER_S * dt; // stick up looks up
    if (yaw || pitch) this.sender.add(yaw, pitch);
  }
}
