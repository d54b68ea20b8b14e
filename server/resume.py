"""Resume tokens: which world a token continues, who may redeem it, and why a token no longer works.

Every world that streams to an owner has one live token (192 random bits
from `secrets`; the book stores only its SHA-256). Redeeming it hands the
world to the redeeming connection and retires the token; that connection
gets a fresh one, so a token works for one connection once. When the
server has an AUTH_TOKEN, a token is bound to the access token its world
was started with: a redeemer must present the same one. A retired token is
remembered for a while (bounded) with the reason it stopped working, so a
client can say *why* its world is gone (grace over, engine restarted, ...).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

TOKEN_BYTES = 24  # 192 bits: not guessable, ~32 URL-safe characters
MAX_TOKEN_CHARS = 128  # a longer `resume_token` is refused before hashing
REMEMBER_ENDED = 4096  # retired tokens remembered with their reason; the oldest is forgotten first

# Why a token does not resume (the `reason` of a `not_resumable` error).
REASONS = {
    "unknown": "this resume token is not known here (the server may have restarted)",
    "used": "this resume token was already used; the connection that used it got a new one",
    "expired": "the world was kept for RESUME_GRACE_S after the connection dropped, and that time has passed",
    "ended": "the world has ended (it was closed or replaced)",
    "engine_restarted": "the engine restarted, and a restart cannot keep worlds",
    "not_kept": "the world could not be kept when the connection dropped",
}


class ResumeRefused(Exception):
    """A resume token that does not continue a world: `reason` is a key of REASONS (or 'unauthorized')."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(kw_only=True)
class _Entry:
    world: object  # the Session the token continues
    auth: bytes | None  # SHA-256 of the access token the world was started with (None: no auth on this server)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class ResumeBook:
    """Live tokens by digest, the digest each world's token has now, and retired tokens with their reasons."""

    def __init__(self, remember: int = REMEMBER_ENDED):
        self._live: dict[bytes, _Entry] = {}
        self._token_of: dict[str, bytes] = {}  # world id -> digest of its live token
        self._retired: OrderedDict[bytes, str] = OrderedDict()
        self._remember = remember

    def __len__(self) -> int:
        return len(self._live)

    def issue(self, world, auth_token: str | None) -> str:
        """A new token for `world` (its previous one is retired as 'used'); bound to `auth_token` when given."""
        old = self._token_of.pop(world.id, None)
        auth = _digest(auth_token) if auth_token else None
        if old is not None:
            entry = self._live.pop(old)
            auth = entry.auth
            self._retire(old, "used")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = _digest(token)
        self._live[digest] = _Entry(world=world, auth=auth)
        self._token_of[world.id] = digest
        return token

    def redeem(self, token: str, auth_token: str | None):
        """The world `token` continues; raises ResumeRefused. The token stays live until `issue` replaces it."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise ResumeRefused("unknown", REASONS["unknown"])
        digest = _digest(token)
        entry = self._live.get(digest)
        if entry is None:
            reason = self._retired.get(digest, "unknown")
            raise ResumeRefused(reason, REASONS[reason])
        if entry.auth is not None and not (auth_token and hmac.compare_digest(_digest(auth_token), entry.auth)):
            raise ResumeRefused("unauthorized", "resuming this world needs the access token it was started with")
        return entry.world

    def forget(self, world, reason: str) -> None:
        """The world is gone: its token answers `reason` from now on."""
        digest = self._token_of.pop(world.id, None)
        if digest is not None:
            del self._live[digest]
            self._retire(digest, reason)

    def _retire(self, digest: bytes, reason: str) -> None:
        self._retired[digest] = reason
        self._retired.move_to_end(digest)
        while len(self._retired) > self._remember:
            self._retired.popitem(last=False)
