/** Turns keyboard and touch-pad presses into protocol key edges (down/up). */

// Arrow keys are the protocol's aliases for i/k/j/l; sending the canonical
// key keeps "ArrowUp and I held together" from releasing each other early.
export const KEY_CODES = {
  KeyW: "w", KeyA: "a", KeyS: "s", KeyD: "d",
  KeyI: "i", KeyJ: "j", KeyK: "k", KeyL: "l",
  ArrowUp: "i", ArrowDown: "k", ArrowLeft: "j", ArrowRight: "l",
};

const TEXT_INPUTS = new Set(["text", "search", "number", "password", "email", "url", "tel"]);

function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  return target.tagName === "INPUT" && TEXT_INPUTS.has(target.type);
}

export class KeyControls {
  /**
   * @param {(key: string, action: "down"|"up") => boolean} sendEdge  returns whether it was sent
   * @param {(held: Set<string>) => void} onChange  for the legend's highlight
   */
  constructor(sendEdge, onChange = () => {}) {
    this.sendEdge = sendEdge;
    this.onChange = onChange;
    this.sources = new Map(); // key -> Set of sources holding it ("KeyW", "pointer:3")
    this.serverDown = new Set(); // keys whose "down" reached the server
  }

  get held() {
    return new Set(this.sources.keys());
  }

  press(key, source) {
    let set = this.sources.get(key);
    if (!set) {
      set = new Set();
      this.sources.set(key, set);
    }
    if (set.has(source)) return;
    set.add(source);
    if (set.size === 1) {
      if (this.sendEdge(key, "down")) this.serverDown.add(key);
      this.onChange(this.held);
    }
  }

  release(key, source) {
    const set = this.sources.get(key);
    if (!set || !set.delete(source)) return;
    if (set.size > 0) return;
    this.sources.delete(key);
    if (this.serverDown.delete(key)) this.sendEdge(key, "up");
    this.onChange(this.held);
  }

  /** Let go of everything, e.g. when the page loses focus. */
  releaseAll() {
    for (const [key, set] of [...this.sources]) {
      for (const source of [...set]) this.release(key, source);
    }
  }

  /** A new session starts with nothing held on the server side. */
  forgetServerState() {
    this.serverDown.clear();
    this.sources.clear();
    this.onChange(this.held);
  }

  attachKeyboard(target = window) {
    target.addEventListener("keydown", (event) => {
      const key = KEY_CODES[event.code];
      if (!key || event.ctrlKey || event.metaKey || event.altKey || isTyping(event.target)) return;
      if (event.code.startsWith("Arrow")) event.preventDefault();
      if (event.repeat) return;
      this.press(key, event.code);
    });
    // A keyup is honoured wherever focus went, so no key stays stuck.
    target.addEventListener("keyup", (event) => {
      const key = KEY_CODES[event.code];
      if (key) this.release(key, event.code);
    });
    window.addEventListener("blur", () => this.releaseAll());
    window.addEventListener("pagehide", () => this.releaseAll());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState !== "visible") this.releaseAll();
    });
  }

  /** Wire on-screen buttons carrying `data-key` (pointer events: touch, pen, mouse). */
  attachPad(root) {
    for (const button of root.querySelectorAll("[data-key]")) {
      const key = button.dataset.key;
      const end = (event) => {
        this.release(key, `pointer:${event.pointerId}`);
        button.classList.remove("pressed");
      };
      button.addEventListener("pointerdown", (event) => {
        event.preventDefault();
        button.setPointerCapture(event.pointerId);
        button.classList.add("pressed");
        this.press(key, `pointer:${event.pointerId}`);
      });
      button.addEventListener("pointerup", end);
      button.addEventListener("pointercancel", end);
      button.addEventListener("lostpointercapture", end);
      button.addEventListener("contextmenu", (event) => event.preventDefault());
    }
  }
}
