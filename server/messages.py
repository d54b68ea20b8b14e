"""Parse and validate client WebSocket messages into typed requests (PROTOCOL.md)."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass

from inference.controls import canonical_key

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1
MAX_SAFE_NUMBER = 2**53  # echoed numbers stay exact in a browser's JSON.parse


class ClientError(Exception):
    """A bad client message: answered with a JSON `error`, the session goes on."""

    def __init__(self, code: str, message: str, kind: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind  # the message type it was about, when known


@dataclass(frozen=True, kw_only=True)
class Init:
    prompt: str
    image: bytes | None
    seed: int | None
    upsample: bool
    size: str | None
    token: str | None


@dataclass(frozen=True, kw_only=True)
class Control:
    key: str  # canonical: w a s d i j k l
    down: bool


@dataclass(frozen=True, kw_only=True)
class PromptChange:
    prompt: str


@dataclass(frozen=True, kw_only=True)
class Reset:
    pass


@dataclass(frozen=True, kw_only=True)
class Ping:
    t: object  # echoed back untouched (number or string)


@dataclass(frozen=True, kw_only=True)
class Look:
    yaw: float  # degrees, positive turns right
    pitch: float  # degrees, positive looks up


@dataclass(frozen=True, kw_only=True)
class Resume:
    resume_token: str
    frames: int  # frames of the world the client received (its stream index)
    token: str | None  # access token (AUTH_TOKEN)


@dataclass(frozen=True, kw_only=True)
class Watch:
    watch_id: str
    token: str | None  # access token (AUTH_TOKEN)


ClientMessage = Init | Control | PromptChange | Reset | Ping | Look | Resume | Watch
MAX_LOOK_DEG = 360.0  # one look message turns at most this far per axis
MAX_ID_CHARS = 128  # resume tokens and watch ids are ~16-32 characters

def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def parse_message(text: str) -> ClientMessage:
    """Decode one text message; raises ClientError with a PROTOCOL.md code."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ClientError("bad_json", f"message is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except (RecursionError, ValueError) as exc:  # absurd nesting, NaN/Infinity
        raise ClientError("bad_json", f"message is not acceptable JSON: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise ClientError("bad_json", f"message must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ClientError("bad_field", "field 'type' is missing or not a string")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ClientError("unknown_type", f"unknown message type {kind[:40]!r}; expected one of {', '.join(_PARSERS)}")
    try:
        return parser(obj)
    except ClientError as exc:
        exc.kind = kind
        raise


def prompt_field(obj: dict, required: bool) -> str:
    prompt = obj.get("prompt")
    if prompt is None and not required:
        return ""
    if not isinstance(prompt, str):
        raise ClientError("bad_field", "field 'prompt' must be a string")
    prompt = prompt.strip()
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError("bad_field", "field 'prompt' contains invalid unicode (lone surrogates)") from None
    if required and not prompt:
        raise ClientError("bad_field", "field 'prompt' must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ClientError("bad_field", f"field 'prompt' has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    return prompt


def image_field(value) -> bytes | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ClientError("bad_field", "field 'image' must be a base64 string or a data: URL")
    if value.startswith("data:"):
        head, sep, value = value.partition(",")
        if not sep or ";base64" not in head:
            raise ClientError("bad_field", "field 'image' data URL must be base64 encoded (data:image/...;base64,...)")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("bad_field", "field 'image' is not valid base64") from None
    if not data.startswith(_IMAGE_MAGIC):
        raise ClientError("bad_field", "field 'image' must be a JPEG or PNG image")
    return data


def _parse_init(obj: dict) -> Init:
    seed = obj.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ClientError("bad_field", f"field 'seed' must be an integer in 0..{MAX_SEED}")
    upsample = obj.get("upsample", False)
    if not isinstance(upsample, bool):
        raise ClientError("bad_field", "field 'upsample' must be true or false")
    size = obj.get("size")
    if size is not None and not isinstance(size, str):
        raise ClientError("bad_field", "field 'size' must be a string like \"832*480\"")
    return Init(prompt=prompt_field(obj, required=True), image=image_field(obj.get("image")), seed=seed,
                upsample=upsample, size=size, token=_access_token(obj))


def _parse_control(obj: dict) -> Control:
    key, action = obj.get("key"), obj.get("action")
    if not isinstance(key, str):
        raise ClientError("bad_field", "field 'key' must be a string")
    try:
        key = canonical_key(key)
    except ValueError as exc:
        raise ClientError("bad_field", str(exc)) from None
    if action not in ("down", "up"):
        raise ClientError("bad_field", f"field 'action' must be 'down' or 'up', got {str(action)[:20]!r}")
    return Control(key=key, down=action == "down")


def _parse_prompt(obj: dict) -> PromptChange:
    return PromptChange(prompt=prompt_field(obj, required=True))


def _parse_reset(obj: dict) -> Reset:
    return Reset()


def _parse_ping(obj: dict) -> Ping:
    t = obj.get("t")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float, str))):
        raise ClientError("bad_field", "field 't' must be a number or string")
    if isinstance(t, float) and not math.isfinite(t):
        raise ClientError("bad_field", "field 't' must be a finite number (it parsed as infinity or NaN)")
    if isinstance(t, int) and abs(t) > MAX_SAFE_NUMBER:
        raise ClientError("bad_field", "field 't' must be an integer within +/-2**53 (or a finite number)")
    if isinstance(t, str):
        t = t[:64]
    return Ping(t=t)


def _parse_look(obj: dict) -> Look:
    values = []
    for name in ("yaw", "pitch"):
        v = obj.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > MAX_LOOK_DEG:
            raise ClientError("bad_field", f"field {name!r} must be a number of degrees within +/-{MAX_LOOK_DEG:g}, "
                                           f"got {str(v)[:20]!r}")
        values.append(float(v))
    return Look(yaw=values[0], pitch=values[1])


def _id_field(obj: dict, name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise ClientError("bad_field", f"field {name!r} must be a non-empty string of at most {MAX_ID_CHARS} characters")
    return value


def _access_token(obj: dict) -> str | None:
    token = obj.get("token")
    if token is not None and not isinstance(token, str):
        raise ClientError("bad_field", "field 'token' must be a string")
    return token


def _parse_resume(obj: dict) -> Resume:
    frames = obj.get("frames", 0)
    if isinstance(frames, bool) or not isinstance(frames, int) or not 0 <= frames <= MAX_SAFE_NUMBER:
        raise ClientError("bad_field", f"field 'frames' must be a whole number >= 0, got {str(frames)[:20]!r}")
    return Resume(resume_token=_id_field(obj, "resume_token"), frames=frames, token=_access_token(obj))


def _parse_watch(obj: dict) -> Watch:
    return Watch(watch_id=_id_field(obj, "watch_id"), token=_access_token(obj))


_PARSERS = {"init": _parse_init, "control": _parse_control, "prompt": _parse_prompt,
            "reset": _parse_reset, "ping": _parse_ping, "look": _parse_look, "resume": _parse_resume,
            "watch": _parse_watch}
