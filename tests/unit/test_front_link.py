"""The engine's front link: heartbeats survive a failing status, a failed I/O thread or a stuck orphan ends the engine."""

import subprocess
import sys
import textwrap
import time

import zmq

from inference import protocol as P
from inference.engine.link import EXIT_LINK_FAILED, FrontLink


def bound_pair() -> tuple[zmq.Socket, str]:
    sock = zmq.Context.instance().socket(zmq.PAIR)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def heartbeats(sock: zmq.Socket, count: int, seconds: float) -> list[P.Heartbeat]:
    beats, deadline = [], time.monotonic() + seconds
    while len(beats) < count and time.monotonic() < deadline:
        if sock.poll(100):
            msg = P.decode_to_front(sock.recv_multipart()[0])
            if isinstance(msg, P.Heartbeat):
                beats.append(msg)
    return beats


def test_heartbeats_go_on_when_the_status_fails():
    """A status callback that raises after one good beat: beats keep coming with the last good session count."""
    sock, endpoint = bound_pair()
    calls = []

    def status():
        calls.append(1)
        if len(calls) > 1:
            raise KeyError("a bug in a status field")
        return {"sessions": 3, "queued_steps": 1}

    link = FrontLink(endpoint, heartbeat_s=0.05, status=status)
    link.start()
    try:
        beats = heartbeats(sock, 4, 10.0)
        assert len(beats) == 4 and all(b.sessions == 3 for b in beats)
        assert link._thread.is_alive()
    finally:
        link.close()
        sock.close(linger=0)


def run_engine_like(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stderr=subprocess.PIPE, text=True)


def test_a_failed_io_thread_ends_the_engine_process():
    """The I/O thread raising on a message ends the process with its own exit status, even if the main thread sleeps."""
    sock, endpoint = bound_pair()
    proc = run_engine_like(f"""
        import time
        from inference.engine import link as L
        link = L.FrontLink({endpoint!r}, heartbeat_s=0.05)
        def broken(parts):
            raise RuntimeError("broken receive")
        link._receive = broken
        link.start()
        time.sleep(60)  # the step loop, busy in a long call
    """)
    try:
        assert heartbeats(sock, 1, 20.0), "no heartbeat from the child"
        sock.send_multipart([P.encode(P.Shutdown())])
        assert proc.wait(timeout=20) == EXIT_LINK_FAILED
        assert "front link failed" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close(linger=0)


def test_an_orphan_stuck_in_a_long_call_is_ended_after_the_grace():
    """Its front gone and its main thread stuck (not draining Shutdown), the engine exits within the grace period."""
    sock, endpoint = bound_pair()
    front = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    proc = run_engine_like(f"""
        import time
        from inference.engine import link as L
        link = L.FrontLink({endpoint!r}, heartbeat_s=0.05, front_pid={front.pid}, orphan_grace_s=1.0)
        link.start()
        time.sleep(120)  # stuck: a long barrier or a hung collective
    """)
    try:
        assert heartbeats(sock, 1, 20.0), "no heartbeat from the child"
        front.kill()
        front.wait()
        t0 = time.monotonic()
        assert proc.wait(timeout=30) != 0
        assert time.monotonic() - t0 < 25
        assert "front process" in proc.stderr.read()
    finally:
        for p in (proc, front):
            if p.poll() is None:
                p.kill()
        sock.close(linger=0)
