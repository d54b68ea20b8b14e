"""Misbehaving connections (never reading, ping floods, idle sockets, slowloris, a stopped engine) against a measured honest client."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from tests.server.hostilekit import (
    HonestClient, close_code, masked_frame, open_fds, raw_ws, report, rss_mb, server_frames, wait_for,
)
from tests.server.serverkit import ServerProcess

LIMITS = {"INIT_TIMEOUT_S": "2", "SLOW_CLIENT_TIMEOUT_S": "2", "HANDSHAKE_TIMEOUT_S": "2",
          "MAX_CONNECTIONS": "120", "MAX_HTTP_CONNECTIONS": "40", "HEARTBEAT_LATE_S": "1",
          "HEARTBEAT_TIMEOUT_S": "30", "ADMISSION_CAPACITY": "off", "MAX_SESSIONS": "4", "RESUME_GRACE_S": "2"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """A sim server with every connection limit set low, so each attack plays out in seconds."""
    server = ServerProcess(tmp_path_factory.mktemp("run"), LIMITS)
    server.start()
    yield server
    server.stop()


def _sessions(srv) -> int:
    return len(srv.json("/status")["sessions"])


def _closed_by_server(sock: socket.socket, timeout_s: float) -> bytes | None:
    """Read until the server ends the connection; what it sent, or None when it stayed open."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:  # reset: closed
            return data
        if not chunk:
            return data
        data += chunk
    return None


def _init_frame(prompt: str) -> bytes:
    return masked_frame(0x1, json.dumps({"type": "init", "prompt": prompt, "seed": 4}).encode())


def test_a_client_that_never_reads_is_dropped_and_its_world_freed(srv):
    """A client that stops reading is disconnected within SLOW_CLIENT_TIMEOUT_S of its socket filling; its world is
    kept for RESUME_GRACE_S, standing still, and then goes."""
    honest = HonestClient(srv)
    sock = None
    try:
        honest.wait_frames(16)
        control = honest.control()
        sock, head = raw_ws(srv.ws_port, rcvbuf=4096)
        assert b" 101 " in head
        sock.sendall(_init_frame("never reads"))
        t0 = time.monotonic()
        assert wait_for(lambda: _sessions(srv) == 2, 10.0)
        kept = wait_for(lambda: any(s["state"] == "detached" for s in srv.json("/status")["sessions"]), 25.0)
        freed = wait_for(lambda: _sessions(srv) == 1, 10.0)
        freed_s = time.monotonic() - t0
        rate = honest.rate(t0, time.monotonic())
        report("never reads", honest_fps=rate.fps, control_fps=control.fps, max_gap_s=rate.max_gap_s,
               freed_after_s=freed_s)
        assert kept and freed, srv.json("/status")["sessions"]
        assert 'world_connections_dropped_total{reason="slow_client"}' in srv.get("/metrics")[2].decode()
        assert _closed_by_server(sock, 5.0) is not None, "the connection of a client that never reads stayed open"
        held, after = honest.kept_up(rate, control, end_attack=sock.close)
        assert held, (rate, control, after)
    finally:
        if sock is not None:
            sock.close()
        honest.close()


def test_a_ping_flood_from_a_client_that_never_reads_is_bounded(srv):
    """A protocol ping flood from a client that never reads its pongs is dropped at once; the front's memory stays flat."""
    honest = HonestClient(srv)
    try:
        honest.wait_frames(16)
        control = honest.control()
        sock, _ = raw_ws(srv.ws_port, rcvbuf=4096)
        before = rss_mb(srv.proc.pid)
        batch = masked_frame(0x9, b"p" * 125) * 2000
        sent, t0 = 0, time.monotonic()
        sock.settimeout(5.0)
        try:
            while sent < 400_000 and time.monotonic() - t0 < 20:
                sock.sendall(batch)
                sent += 2000
        except OSError:  # dropped by the server (reset or broken pipe), or it stopped reading us
            pass
        dropped = _closed_by_server(sock, 8.0) is not None
        after = rss_mb(srv.proc.pid)
        time.sleep(max(0.0, t0 + 3.0 - time.monotonic()))
        rate = honest.rate(t0, time.monotonic())
        report("ping flood", pings_sent=sent, rss_before_mb=before, rss_after_mb=after, dropped=dropped,
               honest_fps=rate.fps, control_fps=control.fps, max_gap_s=rate.max_gap_s)
        assert dropped and after - before < 40, (before, after, sent)
        assert 'world_connections_dropped_total{reason="ping_flood"} 1.0' in srv.get("/metrics")[2].decode()
        held, after = honest.kept_up(rate, control, end_attack=sock.close)
        assert held, (rate, control, after)
        sock.close()
    finally:
        honest.close()


def test_idle_connections_are_capped_then_closed_for_want_of_an_init(srv):
    """200 connections that never send init: beyond MAX_CONNECTIONS the handshake gets 503, the rest close with 1008."""
    honest = HonestClient(srv)
    socks = []
    try:
        honest.wait_frames(16)
        control = honest.control()
        fds_before, rss_before = open_fds(srv.proc.pid), rss_mb(srv.proc.pid)
        t0 = time.monotonic()
        heads = []
        for _ in range(200):
            sock, head = raw_ws(srv.ws_port, timeout=10.0)
            socks.append(sock)
            heads.append(head.split(b"\r\n", 1)[0])
        accepted = [s for s, h in zip(socks, heads) if b" 101 " in h]
        refused = [h for h in heads if b" 503 " in h]
        closes = [_closed_by_server(s, 8.0) for s in accepted]
        rate = honest.rate(t0, time.monotonic())
        fds_after = wait_for(lambda: (n := open_fds(srv.proc.pid)) <= fds_before + 5 and n, 5.0)
        codes = [close_code(c) for c in closes]
        report("200 idle connections", accepted=len(accepted), refused_503=len(refused),
               closed_1008=codes.count(1008), rss_before_mb=rss_before,
               rss_after_mb=rss_mb(srv.proc.pid), fds_before=fds_before, fds_after=open_fds(srv.proc.pid),
               honest_fps=rate.fps, control_fps=control.fps, max_gap_s=rate.max_gap_s)
        assert len(accepted) + len(refused) == 200 and 100 <= len(accepted) <= 119, (len(accepted), len(refused))
        assert codes == [1008] * len(accepted), codes
        told = [json.loads(p) for c in closes for op, p in server_frames(c) if op == 0x1]
        assert all(m["code"] == "not_initialized" for m in told) and len(told) == len(accepted)
        assert fds_after, "connections closed by the server still hold descriptors"
        held, after = honest.kept_up(rate, control, end_attack=lambda: [s.close() for s in socks])
        assert held, (rate, control, after)
    finally:
        for s in socks:
            s.close()
        honest.close()


def test_slowloris_on_http_is_bounded_and_health_keeps_answering(srv):
    """300 HTTP connections sending headers one byte at a time: /health answers throughout; each is closed in time."""
    honest = HonestClient(srv)
    log = srv.run_dir / "server.log"
    socks: list[socket.socket] = []
    try:
        honest.wait_frames(16)
        control = honest.control()
        log_before, fds_before, t0 = log.stat().st_size, open_fds(srv.proc.pid), time.monotonic()
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        probes, max_fds = [], 0
        while time.monotonic() - t0 < 5.0:
            for s in socks[::7]:  # dribble header bytes on a share of them
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
            start = time.monotonic()
            status, _, _ = srv.get("/health")
            probes.append((status, time.monotonic() - start))
            max_fds = max(max_fds, open_fds(srv.proc.pid))
            time.sleep(0.2)
        still_open = [s for s in socks if _closed_by_server(s, 0.3) is None]
        rate = honest.rate(t0, time.monotonic())
        log_growth = log.stat().st_size - log_before
        report("slowloris", probes=len(probes), probes_ok=sum(p[0] == 200 for p in probes),
               slowest_probe_s=max(p[1] for p in probes), max_fds=max_fds, left_open=len(still_open),
               log_bytes=log_growth, honest_fps=rate.fps, control_fps=control.fps, max_gap_s=rate.max_gap_s)
        assert all(p[0] == 200 and p[1] < 2.0 for p in probes), probes
        assert max_fds <= fds_before + 40 + 5 and not still_open and log_growth < 20_000, (max_fds, fds_before)
        held, after = honest.kept_up(rate, control, end_attack=lambda: [s.close() for s in socks])
        assert held, (rate, control, after)
    finally:
        for s in socks:
            s.close()
        honest.close()


def test_ready_turns_503_as_soon_as_engine_heartbeats_are_late(srv):
    """SIGSTOP on the engine: /ready is 503 naming late heartbeats within HEARTBEAT_LATE_S; SIGCONT restores it, no restart."""
    honest = HonestClient(srv)
    pid = srv.engine_pid()
    try:
        honest.wait_frames(16)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            late = wait_for(lambda: (r := srv.get("/ready"))[0] == 503 and r, 5.0, every_s=0.05)
            late_s = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        back = wait_for(lambda: srv.get("/ready")[0] == 200, 5.0)
        n = len(honest.frames)
        honest.wait_frames(n + 16, timeout_s=10)
        report("engine SIGSTOP", ready_503_after_s=late_s, reason=json.loads(late[2])["reason"] if late else None)
        assert late and "heartbeat" in json.loads(late[2])["reason"] and late_s < 3.0, (late, late_s)
        assert back and srv.json("/status")["engine"]["restarts"] == 0 and srv.engine_pid() == pid
    finally:
        honest.close()
