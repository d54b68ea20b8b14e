"""Tools for attack tests: an honest client measured in a thread, raw sockets for misbehaving clients, process gauges."""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace

from tests.server.serverkit import open_ws, receive

HONEST_FPS = 14.5  # what an honest client must keep while another client misbehaves
HONEST_GAP_S = 1.0  # and no frame gap longer than this (a chunk plays 0.25 s)
# On a machine too busy to hold the test's worlds at 16 fps even without an attack, the bound follows what the
# same worlds got just before it (the control window), less this much: an attack may not cost more than that.
CONTROL_FPS_SLACK = 1.5
# Load from other processes can change within a test, so a miss is judged again against a second control window
# taken once the attack is over; that can lower the bound, never below this (starvation looked like 0.2-2.7 fps).
HONEST_FLOOR_FPS = 10.0


@dataclass
class Rate:
    """Frames an honest client got in a time window."""

    frames: int
    seconds: float
    max_gap_s: float
    times: list[float] = field(default_factory=list, repr=False)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def ok(self, control: "Rate | None" = None, floor_fps: float = 0.0) -> bool:
        """At least HONEST_FPS and no gap over HONEST_GAP_S (or, on a machine that gave less without the attack,
        within CONTROL_FPS_SLACK of the control window's fps and half a second of its longest gap; never under
        `floor_fps`)."""
        fps_min, gap_max = HONEST_FPS, HONEST_GAP_S
        if control is not None:
            fps_min = max(floor_fps, min(fps_min, control.fps - CONTROL_FPS_SLACK))
            gap_max = max(gap_max, control.max_gap_s + 0.5)
        return self.fps >= fps_min and self.max_gap_s <= gap_max


class HonestClient:
    """A well-behaved client on its own connection, reading every frame on a thread and stamping arrivals."""

    def __init__(self, srv, **init):
        self.ws = open_ws(srv.ws_url, max_size=None, open_timeout=10)
        self.ws.send(json.dumps({"type": "init", "prompt": "honest green hills", "seed": 5, **init}))
        got = receive(self.ws, 30.0, until_type="session")
        assert got.of_type("session"), f"the honest client got no world: {got.messages}"
        self.session_id = got.of_type("session")[0]["session_id"]
        self.frames: list[float] = []
        self.messages: list[dict] = []
        self.stats: list[tuple[float, dict]] = []  # (arrival, the server's `stats` message): its side of the stream
        self.steal: list[tuple[float, float]] = [(time.monotonic(), steal_s())]  # (when, CPU time the host took)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self.steal[-1][0] >= 0.25:
                self.steal.append((time.monotonic(), steal_s()))
            try:
                msg = self.ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            except Exception:
                return
            if isinstance(msg, bytes):
                self.frames.append(time.monotonic())
            else:
                self.messages.append(json.loads(msg))
                if self.messages[-1].get("type") == "stats":
                    self.stats.append((time.monotonic(), self.messages[-1]))

    def wait_frames(self, n: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.frames) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.frames) >= n, f"honest client got {len(self.frames)} of {n} frames"

    def rate(self, t0: float, t1: float) -> Rate:
        """Frames that arrived in [t0, t1), and the longest gap inside it (edges included)."""
        inside = [t for t in self.frames if t0 <= t < t1]
        edges = [t0, *inside, t1]
        gap = max(b - a for a, b in zip(edges, edges[1:]))
        return Rate(frames=len(inside), seconds=t1 - t0, max_gap_s=gap, times=inside)

    def server_view(self, t0: float, t1: float) -> dict:
        """What the server said about this stream in [t0, t1) (its `stats` messages, about one a second), beside
        what arrived: frames it played vs frames received per second, the slowest playback rate it chose, late
        chunks and stalls, frames its writer dropped. Tells a server that sent too little (engine late, playback
        slowed) from a client that read too little."""
        inside = [(t, m) for t, m in self.stats if t0 <= t < t1]
        if len(inside) < 2:
            return {"stats_messages": len(inside)}
        (ta, first), (tb, last) = inside[0], inside[-1]
        messages = [m for _, m in inside]
        return {"played": last["frames"] - first["frames"],  # between the first and the last stats message ...
                "received": sum(1 for t in self.frames if ta <= t < tb),  # ... and what arrived between them
                "received_per_s": [sum(1 for t in self.frames if t0 + i <= t < min(t1, t0 + i + 1))
                                   for i in range(math.ceil(t1 - t0))],
                "slowest_target_fps": min(m["target_fps"] for m in messages),
                "late_chunks": last["late_chunks"] - first["late_chunks"],
                "longest_stall_s": max(m["stalled_s"] for m in messages),
                "dropped": last.get("dropped", 0) - first.get("dropped", 0),
                "chunk_ms": [m["chunk_ms"] for m in messages], "least_lead_ms": min(m["lead_ms"] for m in messages),
                "steal_s_per_cpu": self.steal_in(t0, t1)}

    def steal_in(self, t0: float, t1: float) -> float | None:
        """Seconds per CPU the hypervisor ran something else in about [t0, t1] (samples every 0.25 s): time in
        which no process here, server or client, could run."""
        inside = [s for t, s in self.steal if t0 - 0.3 <= t <= t1 + 0.3]
        return None if len(inside) < 2 or inside[0] is None else round(inside[-1] - inside[0], 3)

    def control(self, seconds: float = 3.0) -> Rate:
        """The rate over the next `seconds` with nothing misbehaving (the machine's own bound)."""
        t0 = time.monotonic()
        time.sleep(seconds)
        return self.rate(t0, time.monotonic())

    def kept_up(self, rate: Rate, control: Rate, end_attack) -> tuple[bool, Rate | None]:
        """Whether `rate` (under attack) held against `control` (before it). On a miss the attack is ended
        (`end_attack()`), and the miss is judged again against the worse of the two controls: a machine that got
        slower from outside load during the test is not the attack's doing; the bound stays >= HONEST_FLOOR_FPS."""
        if rate.ok(control):
            return True, None
        end_attack()
        time.sleep(1.0)
        after = self.control()
        worse = replace(min(control, after, key=lambda r: r.fps), max_gap_s=max(control.max_gap_s, after.max_gap_s))
        return rate.ok(worse, floor_fps=HONEST_FLOOR_FPS), after

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            self.ws.close()
        except Exception:
            pass


def steal_s() -> float | None:
    """Steal time of this machine so far, seconds per CPU (/proc/stat; None where the kernel has no such count)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") / (os.cpu_count() or 1)
    except (OSError, IndexError, ValueError):
        return None


def report(row: str, **figures) -> None:
    """One line of measured figures (shown with `pytest -s`; the attack table in the issue is built from them)."""
    text = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\nHOSTILE {row}: {text}")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raw_ws(port: int, *, rcvbuf: int | None = None, timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """A raw TCP socket that performed the WebSocket handshake; returns (socket, response head)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One client->server WebSocket frame (FIN set, masked as clients must), payload < 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split what a server sent into (opcode, payload) frames (server frames are never masked)."""
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, n, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        if i + n > len(data):
            break
        frames.append((opcode, data[i:i + n]))
        i += n
    return frames


def close_code(data: bytes | None) -> int | None:
    """The code of the close frame the server sent, if any."""
    for opcode, payload in server_frames(data or b""):
        if opcode == 0x8 and len(payload) >= 2:
            return int.from_bytes(payload[:2], "big")
    return None


def wait_for(check, timeout_s: float, every_s: float = 0.1):
    """Poll `check()` until it returns something truthy (returned) or the time is up (the last value)."""
    deadline = time.monotonic() + timeout_s
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(every_s)
        value = check()
    return value
