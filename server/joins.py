"""A connection taking a world that already exists: `resume` its own after a drop, or `watch` another read-only.

Resume: the token names the world; a world still held by a live connection
(its owner's old socket, not yet noticed dead) is taken from it. The world
goes on from where it stood, without a new `session` or a new first chunk:
the reply is `resumed`, and the frames the old connection may not have
delivered are played first. A token that does not resume answers
`not_resumable` with the reason, and the connection stays open for an init.

Watch: the watch id names the world; viewers get its frames (the same JPEG
bytes, no engine work), `stats`, `status` and `path`, and nothing they send
steers it. At most MAX_VIEWERS_PER_SESSION per world; each viewer has its
own bounded channel, so a slow viewer only loses its own frames.
"""

from __future__ import annotations

import logging
import time

from server.resume import ResumeRefused

log = logging.getLogger("front.joins")


def world_reply(conn, session, kind: str) -> dict:
    """The `session` (or `resumed`) reply: the world's settings, a fresh resume token and its watch id."""
    p = session.params
    watchable = conn.settings.max_viewers_per_session > 0
    return {"type": kind, "session_id": session.id, "prompt": session.prompt, "width": p.width,
            "height": p.height, "fps": 16, "engine": p.engine, "seed": p.seed,
            "resume_token": conn.hub.resume.issue(session, conn.auth_token),
            "resume_grace_s": conn.settings.resume_grace_s, "watch_id": session.watch_id if watchable else None}


def watching_reply(session) -> dict:
    p = session.params
    return {"type": "watching", "prompt": session.prompt, "width": p.width, "height": p.height, "fps": 16,
            "engine": p.engine, "seed": p.seed, "viewers": session.viewers, "path": session.last_path,
            "state": "paused" if session.detached else session.policy.state}


def resume(conn, msg) -> None:
    """Continue the world `msg.resume_token` names on this connection, or say why it cannot be."""
    hub = conn.hub
    try:
        session = hub.resume.redeem(msg.resume_token, msg.token)
    except ResumeRefused as exc:
        hub.metrics.resumes.labels(exc.reason).inc()
        if exc.reason == "unauthorized":
            conn.error("unauthorized", exc.message)
            conn.close(1008, "unauthorized")
            return
        conn.error("not_resumable", f"{exc.message}; send an init to start a new world", reason=exc.reason)
        return
    holder = session.holder
    if holder is not None:  # the old socket is still open on our side: its client has moved here
        holder.give_up_world("this world was resumed by another connection")
    conn.auth_token = msg.token if conn.settings.auth_token else None
    stood_s = time.time() - session.detached_at if session.detached else 0.0
    next_index = hub.reattach(session, conn, msg.frames)
    conn.take_world(session, next_index)
    hub.metrics.resumes.labels("ok").inc()
    log.info("session %s resumed by %s after %.1f s (next frame %d)", session.id, conn.id, stood_s, next_index)
    conn.channel.send_json({**world_reply(conn, session, "resumed"), "frames": next_index,
                            "paused_s": round(stood_s, 3)})


def watch(conn, msg) -> None:
    """Follow the world `msg.watch_id` names, read-only; `busy` (and close 1013) beyond the viewer cap."""
    hub = conn.hub
    session = hub.watched.get(msg.watch_id)
    if session is None or session.closed:
        conn.error("not_found", "no world with this watch link is running (it may have ended)")
        conn.close(1000, "no such world")
        return
    cap = conn.settings.max_viewers_per_session
    if session.viewers >= cap:  # cap 0: watch links are off
        conn.error("busy", f"this world already has {session.viewers} viewers (MAX_VIEWERS_PER_SESSION={cap})")
        conn.close(1013, "too many viewers")
        return
    conn.watching = session
    conn.idle_since = None
    conn.channel.begin_stream(session)
    session.subscribe(conn)
    conn.channel.send_json(watching_reply(session))
