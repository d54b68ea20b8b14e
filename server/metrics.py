"""Prometheus metrics of the front (own registry, so tests can run several servers in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class FrontMetrics:
    """Counters, gauges and histograms exported at /metrics."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("world_sessions", "Open streaming sessions", registry=r)
        self.sessions_total = Counter("world_sessions_started", "Sessions started", registry=r)
        self.frames = Counter("world_frames_sent", "Frames queued to clients", registry=r)
        self.drops = Counter("world_frames_dropped", "Frames dropped because a client fell behind", registry=r)
        self.chunk_latency = Histogram("world_chunk_seconds", "Engine time per chunk", buckets=CHUNK_BUCKETS, registry=r)
        self.control_latency = Histogram("world_control_latency_seconds",
                                         "Key edge arrival to first frame sent that reflects it",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.engine_restarts = Counter("world_engine_restarts", "Engine restarts after a failure", registry=r)
        self.engine_ready = Gauge("world_engine_ready", "1 when the engine can take sessions", registry=r)
        self.client_errors = Counter("world_client_errors", "Error replies sent to clients", ["code"], registry=r)
        self.late_sessions = Gauge("world_sessions_stalled", "Sessions currently stalled (no frame to show)", registry=r)
        self.late_chunks = Counter("world_late_chunks", "Chunks that arrived after their playback deadline",
                                   registry=r)
        self.stalled_seconds = Counter("world_stalled_seconds", "Time sessions spent stalled", registry=r)
        self.sessions_queued = Gauge("world_sessions_queued", "Inits waiting for capacity", registry=r)
        self.sessions_detached = Gauge("world_sessions_detached",
                                       "Worlds kept after their connection dropped, waiting for a resume", registry=r)
        self.viewers = Gauge("world_viewers", "Read-only viewers watching a world", registry=r)
        self.resumes = Counter("world_resumes", "Resume attempts by result", ["result"], registry=r)
        self.connections_dropped = Counter("world_connections_dropped",
                                           "Connections the server ended because the client misbehaved", ["reason"],
                                           registry=r)

    frames_total = 0  # plain totals for /status (prometheus counters are write-only by design)
    drops_total = 0

    def frame_sent(self) -> None:
        self.frames.inc()
        self.frames_total += 1

    def frames_dropped(self, n: int) -> None:
        self.drops.inc(n)
        self.drops_total += n

    def observe_chunk(self, seconds: float) -> None:
        self.chunk_latency.observe(seconds)

    def observe_control_latency(self, seconds: float) -> None:
        self.control_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
