/** Human wording for the server's error codes and WebSocket close codes. */

const ERROR_TEXT = {
  bad_json: "The server could not read a message from this page.",
  unknown_type: "The server did not understand a request from this page.",
  bad_field: "The server rejected a setting.",
  not_initialized: "No world is running yet: press Start first.",
  too_large: "That was too large for the server; try a smaller start image or a shorter prompt.",
  rate_limited: "Too many messages too fast; slow down for a moment.",
  busy: "The server is at capacity right now; try again in a little while.",
  unauthorized: "Access denied: enter a valid access token and press Start.",
  engine_failed: "The world engine failed; the server is restarting it and your world resumes when it is back.",
  upsampler_failed: "Prompt enhancement is unavailable; your prompt is used as written.",
  read_only: "You are watching this world; only its owner can steer it.",
  not_resumable: "Your world could not be continued.",
  resumed_elsewhere: "This world continued in another tab or window.",
  not_found: "No world is running under this watch link (it may have ended).",
  session_limit: "This world reached the model's length limit; press Reset (or Start) to walk on from a new start.",
};

/** Errors after which the stream goes on. */
const NON_FATAL = new Set(["upsampler_failed", "rate_limited", "not_initialized", "read_only", "session_limit"]);

/** Errors whose wording says all the server's detail would (a viewer need not read it twice). */
const SELF_EXPLAINED = new Set(["read_only"]);

/** @returns {{text: string, level: "warn"|"error"}} */
export function describeError(code, detail) {
  const base = ERROR_TEXT[code] || `The server reported an error (${code || "unknown"}).`;
  const text = detail && detail !== base && !SELF_EXPLAINED.has(code) ? `${base} (${detail})` : base;
  return { text, level: NON_FATAL.has(code) ? "warn" : "error" };
}

const CLOSE_TEXT = {
  1001: "the server is going away",
  1006: "the connection dropped",
  1008: "the server closed the connection (policy violation)",
  1009: "the server closed the connection (message too big)",
  1011: "the server hit an internal error",
  1012: "the server is restarting",
  1013: "the server is overloaded (try again later)",
};

export function describeClose(code, reason) {
  const why = CLOSE_TEXT[code] || `connection closed (code ${code})`;
  return reason ? `${why}: ${reason}` : why;
}
