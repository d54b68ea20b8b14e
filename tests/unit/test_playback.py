"""The playback policy on a fake clock: just-in-time requests, even 16 fps, slowing evenly, stalls, key latency, lead."""

import numpy as np
import pytest

from server.playback import FRAME_S, PlaybackPolicy

TICK = 0.001  # the simulated pacer looks every millisecond


def simulate(seconds: float, rtt, *, frames: int = 4, keys=(), lead=lambda seq: 0.0, latencies=None):
    """Run the policy against an engine answering request `seq` after rtt(seq) s; returns (policy, shown times)."""
    pol = PlaybackPolicy(first_chunk_frames=frames, chunk_frames=frames, now=0.0)
    pol.start(0.0)
    in_flight: list[tuple[float, int, int]] = []  # (arrival time, seq, frames)
    shown: list[float] = []
    pending_keys = sorted(keys)
    steps = int(round(seconds / TICK))
    for i in range(steps):
        t = i * TICK
        while pending_keys and pending_keys[0][0] <= t:
            _, key, down = pending_keys.pop(0)
            pol.key(key, down, t)
        req = pol.request(t)
        if req is not None:
            in_flight.append((t + rtt(req.seq), req.seq, len(req.keys)))
        for arrival, seq, n in [c for c in in_flight if c[0] <= t]:
            in_flight.remove((arrival, seq, n))
            pol.on_chunk(seq, [b"jpeg"] * n, t, lead(seq))
        played = pol.due_frame(t)
        pol.update_state(t, played is not None)
        if played is not None:
            shown.append(t)
            if latencies is not None:
                latencies.extend(played.latencies_s)
    return pol, shown


def gaps(times: list[float]) -> np.ndarray:
    return np.diff(np.asarray(times))


def test_a_fast_engine_gives_a_steady_16_fps_without_late_chunks():
    """Round trip 0.1 s: 10 s give about 160 frames exactly 1/16 s apart, no stall, no late chunk."""
    pol, shown = simulate(10.0, lambda seq: 0.1)
    assert 155 <= len(shown) <= 161
    assert np.allclose(gaps(shown), FRAME_S, atol=2 * TICK)
    assert pol.late_chunks == 0 and pol.stalled_s(10.0) == 0.0 and pol.keeping_up


def test_requests_come_just_in_time():
    """A chunk is requested only when the buffer holds about one round trip plus one frame of playback."""
    pol, _ = simulate(5.0, lambda seq: 0.1)
    assert len(pol.buffer) <= 4  # never more than a chunk plus the frame in hand
    assert pol.lead_s() == pytest.approx(0.1 + FRAME_S, abs=0.01)


def test_a_slow_engine_slows_playback_evenly_instead_of_bursting():
    """Round trip 0.5 s per 4 frames: frames come evenly about 1/8 s apart (never a burst), and stats say so."""
    pol, shown = simulate(12.0, lambda seq: 0.5)
    steady = gaps(shown[12:])
    assert steady.min() > 0.11 and steady.max() < 0.2, (steady.min(), steady.max())
    assert 7.0 <= 1.0 / steady.mean() <= 8.0
    assert not pol.keeping_up


def test_one_late_chunk_stalls_once_and_playback_resumes_without_a_burst():
    """A single 0.9 s round trip: one stall (counted), then 1/16 s spacing again with no catch-up burst."""
    pol, shown = simulate(8.0, lambda seq: 0.9 if seq == 20 else 0.1)
    g = gaps(shown)
    assert g.max() > 0.5 and pol.late_chunks == 1
    assert pol.stalled_s(8.0) > 0.0
    assert g.min() > FRAME_S - 2 * TICK, "frames were bunched after the stall"
    after = [t for t in shown if t > shown[int(np.argmax(g))] + 1.0]
    assert np.allclose(gaps(after), FRAME_S, atol=2 * TICK) and pol.state == "generating"


def test_a_key_press_moves_the_next_chunk_and_its_latency_is_about_one_chunk_plus_a_round_trip():
    """W held from 3.0 s: later poses walk forward, and its one edge is reported once, within a chunk + round trip."""
    latencies: list[float] = []
    pol, _ = simulate(4.0, lambda seq: 0.1, keys=[(3.0, "w", True)], latencies=latencies)
    assert pol.rig.pose[2, 3] > 0.05 * 10  # most of a second of W at 0.05 units per frame
    assert len(latencies) == 1
    assert 0.1 < latencies[0] < 4 * FRAME_S + 0.1 + 2 * FRAME_S, latencies


def test_a_restart_ignores_the_chunk_in_flight_and_begins_a_first_chunk_at_the_start_pose():
    """After restart the old chunk is refused and the next request is a first chunk: identity pose, no keys on frame 0."""
    pol = PlaybackPolicy(first_chunk_frames=4, chunk_frames=4, now=0.0)
    pol.start(0.0)
    pol.key("w", True, 0.0)
    first = pol.request(0.5)
    assert first.first_chunk and np.allclose(first.poses[0], np.eye(4)) and not first.keys[0].any()
    assert pol.on_chunk(first.seq, [b"f"] * 4, 0.6)
    pol.due_frame(0.6)
    second = pol.request(0.7)
    assert second is not None and not second.first_chunk and second.poses[-1][2, 3] > first.poses[-1][2, 3]
    pol.restart(0.75)
    assert not pol.on_chunk(second.seq, [b"f"] * 4, 0.8) and not pol.buffer
    again = pol.request(0.8)
    assert again.first_chunk and np.allclose(again.poses[0], np.eye(4)) and again.seq == second.seq + 1


def test_the_engine_asking_for_lead_makes_the_session_buffer_more_then_less_again():
    """While the engine asks for 0.5 s more lead the buffer holds over 0.5 s of frames; afterwards it drains back."""
    pol, shown = simulate(6.0, lambda seq: 0.1, lead=lambda seq: 0.5 if 10 <= seq < 20 else 0.0)
    assert np.allclose(gaps(shown), FRAME_S, atol=2 * TICK), "playback was not steady while the lead changed"
    pol2, _ = simulate(3.5, lambda seq: 0.1, lead=lambda seq: 0.5 if seq >= 10 else 0.0)
    assert pol2.remaining_s(3.5) > 0.5
    assert pol.remaining_s(6.0) < 0.4


@pytest.mark.parametrize("rtt", [0.05, 0.6])  # 0.6 s per 4-frame chunk: playback slows, the interval stretches
def test_a_world_with_a_length_limit_stops_asking_and_ends_without_a_stall(rtt):
    """frames_left counts down: no request once it is 0, the buffer plays out, state 'ended' (never stalled);
    seconds_left is the frames not yet shown at 16 fps and never goes up, however slow the engine."""
    pol = PlaybackPolicy(first_chunk_frames=4, chunk_frames=4, now=0.0)
    pol.start(0.0)
    left, t, requests, shown = 16, 0.0, 0, 0
    states, pending, countdown = [], None, []
    while t < 12.0:
        req = pol.request(t)
        if req is not None:
            requests += 1
            left -= len(req.keys)
            pending = (t + rtt, req, left)
        if pending is not None and t >= pending[0]:
            _, req, after = pending
            pending = None
            pol.on_chunk(req.seq, [b"jpeg"] * len(req.keys), t, 0.0, frames_left=after)
        played = pol.due_frame(t)
        shown += played is not None
        change = pol.update_state(t, played is not None)
        if change:
            states.append(change)
        if pol.frames_left is not None:
            countdown.append(pol.seconds_left(t))
            assert countdown[-1] == pytest.approx((len(pol.buffer) + pol.frames_left) * FRAME_S)
        t += TICK
    assert requests == 4 and shown == 16  # 4 chunks reach frames_left 0; nothing is asked for after that
    assert all(a >= b for a, b in zip(countdown, countdown[1:])) and countdown[-1] == 0.0
    assert rtt < 0.5 or pol.interval_s > FRAME_S  # the slow case did stretch playback
    assert states == ["generating", "ended"] and pol.stalled_s(t) == 0.0
    pol.restart(t)
    assert pol.frames_left is None and pol.request(t) is not None  # a reset streams again


def test_an_endless_world_reports_no_seconds_left():
    """Without a limit from the engine, seconds_left is None."""
    pol, _ = simulate(1.0, lambda seq: 0.1)
    assert pol.seconds_left(1.0) is None
