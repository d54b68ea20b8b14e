"""Resume tokens, the world clock that stands still while detached, and replaying frames a resumed client missed."""

from types import SimpleNamespace

import numpy as np
import pytest

from server.clock import WorldClock
from server.playback import PlaybackPolicy
from server.resume import REMEMBER_ENDED, ResumeBook, ResumeRefused


def world(name: str):
    return SimpleNamespace(id=name)


def refused(book: ResumeBook, token: str, auth=None) -> str:
    with pytest.raises(ResumeRefused) as exc:
        book.redeem(token, auth)
    return exc.value.reason


def test_a_token_names_its_world_and_stops_working_once_replaced():
    """Tokens are long and random; a new token for the world retires the old one as 'used'."""
    book, w = ResumeBook(), world("a")
    first = book.issue(w, None)
    assert len(first) >= 32 and first != book.issue(world("b"), None)
    assert book.redeem(first, None) is w
    second = book.issue(w, None)
    assert refused(book, first) == "used" and book.redeem(second, None) is w
    assert refused(book, "") == "unknown" and refused(book, "x" * 500) == "unknown"


def test_a_token_is_bound_to_the_access_token_of_its_world():
    """With an access token the same one must come with the resume; the binding survives a new token."""
    book, w = ResumeBook(), world("a")
    token = book.issue(w, "secret")
    assert refused(book, token) == "unauthorized" and refused(book, token, "wrong") == "unauthorized"
    assert book.redeem(token, "secret") is w
    again = book.issue(w, "secret")
    assert refused(book, again, "other") == "unauthorized"


def test_a_gone_world_answers_why_and_the_memory_of_gone_tokens_is_bounded():
    """forget() keeps the reason for the token; past REMEMBER_ENDED tokens the oldest become unknown."""
    book = ResumeBook(remember=2)
    tokens = [book.issue(world(str(i)), None) for i in range(3)]
    for i, reason in enumerate(("expired", "engine_restarted", "ended")):
        book.forget(world(str(i)), reason)
    assert len(book) == 0
    assert [refused(book, t) for t in tokens] == ["unknown", "engine_restarted", "ended"]
    assert REMEMBER_ENDED >= 1000


def test_the_world_clock_stands_still_while_paused_and_maps_back_to_wall_time():
    """Paused for 5 s: the clock resumes where it stopped, and to_wall adds the paused time back."""
    wall = [100.0]
    clock = WorldClock(lambda: wall[0])
    wall[0] = 102.0
    clock.pause()
    wall[0] = 107.0
    assert clock() == 102.0 and clock.paused
    assert clock.resume() == 5.0
    wall[0] = 108.0
    assert clock() == 103.0 and clock.to_wall(103.0) == 108.0


def test_replayed_frames_play_first_and_paths_come_with_each_chunks_first_frame():
    """Frames put back play before the buffer; each chunk's path arrives with its first frame shown."""
    pol = PlaybackPolicy(first_chunk_frames=4, chunk_frames=4, now=0.0)
    pol.start(0.0)
    req = pol.request(0.0)
    pol.on_chunk(req.seq, [b"f0", b"f1", b"f2", b"f3"], 0.1)
    shown = [pol.due_frame(0.1 + i / 16) for i in range(2)]
    assert shown[0].path["frame"] == 0 and len(shown[0].path["points"]) == 4 and shown[1].path is None
    assert shown[0].path["points"][0] == [0.0, 0.0] and shown[0].path["heading"] == 0.0
    pol.replay([b"f0", b"f1"])
    played = [pol.due_frame(0.3 + i / 16).payload for i in range(4)]
    assert played == [b"f0", b"f1", b"f2", b"f3"]
    assert np.isfinite(pol.interval_s)
