"""What a session reports: the `stats` message its listeners get about once a second, and its /status entry."""

from __future__ import annotations

import time


def session_stats(session) -> dict:
    """The `stats` message (the owner's channel adds its own `dropped` and `queue`)."""
    now, pol = session.clock(), session.policy
    latency = session.latency_ms()
    return {"type": "stats", "fps": round(pol.fps(now), 2), "frames": pol.frames_played,
            "chunk_ms": session.last_timings and round(session.last_timings.total_ms, 1),
            "control_latency_ms": latency["p50"], "control_latency": latency,
            "buffered": len(pol.buffer), "target_fps": round(1.0 / pol.interval_s, 2),
            "engine_keeping_up": pol.keeping_up, "state": pol.state, "late_chunks": pol.late_chunks,
            "stalled_s": round(pol.stalled_s(now), 2), "lead_ms": round(pol.lead_s() * 1000, 1),
            "seconds_left": None if (left := pol.seconds_left(now)) is None else round(left, 1),
            "viewers": session.viewers, **_frame_costs(session)}


def _frame_costs(session) -> dict:
    """Engine milliseconds per frame of the last chunk, split by stage."""
    t = session.last_timings
    if t is None:
        return {}
    n = max(1, session.policy.chunk_frames)
    return {"model_ms_per_frame": round(t.model_ms / n, 2), "decode_ms_per_frame": round(t.decode_ms / n, 2),
            "jpeg_ms_per_frame": round(t.jpeg_ms / n, 2), "batch": t.batch_size}


def session_summary(session, delivery: dict, grace_left_s: float | None) -> dict:
    """The /status entry; `delivery` is the owner channel's {"dropped", "queue"}, `grace_left_s` set while detached."""
    s = session_stats(session)
    state = "detached" if session.detached else s["state"] if session.is_open else "starting"
    summary = {"id": session.id, "state": state, "fps": s["fps"],
               "frames": s["frames"], "drops": delivery.get("dropped", 0),
               "control_latency_ms": s["control_latency"], "chunk_ms": s["chunk_ms"], "prompt": session.prompt,
               "size": f"{session.params.width}*{session.params.height}",
               "age_s": round(session.clock() - session.created_at, 1),
               "late_chunks": s["late_chunks"], "stalled_s": s["stalled_s"], "batch": s.get("batch"),
               "prompt_changes": session.prompt_changes, "listeners": len(session.listeners),
               "viewers": session.viewers}
    if session.detached:
        summary["detached_s"] = round(time.time() - session.detached_at, 1)
        summary["grace_left_s"] = None if grace_left_s is None else round(max(0.0, grace_left_s), 1)
    return summary
