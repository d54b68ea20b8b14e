"""Server settings read once from the environment (every variable is in the README table)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ValueError):
    """An environment variable holds a value the server cannot use."""


def _number(env: dict, name: str, default, lo, hi, kind=int):
    """Read a number of `kind` from the environment, checking it lies in lo..hi."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is outside {lo}..{hi}")
    return value


def _int(env: dict, name: str, default: int, lo: int, hi: int) -> int:
    return _number(env, name, default, lo, hi, int)


def _float(env: dict, name: str, default: float, lo: float, hi: float) -> float:
    return _number(env, name, default, lo, hi, float)


@dataclass(kw_only=True)
class Settings:
    """Everything the front needs to know, with production defaults."""

    ws_host: str = "0.0.0.0"  # WebSocket bind address
    ws_port: int = 8765  # 0 = pick a free port (written to RUN_DIR/ports.json)
    http_host: str = "0.0.0.0"  # HTTP bind address
    http_port: int = 8080  # 0 = pick a free port
    run_dir: Path = Path("run")  # PID files, ports.json, engine and upsampler logs
    engine: str = "sim"  # sim | lingbot-fast
    model_dir: str = ""  # checkpoint folder for lingbot-fast
    chunk_frames: int = 4  # video frames per chunk for the sim engine
    num_gpus: int = 0  # >1 launches the engine under torchrun
    engine_args: list[str] = field(default_factory=list)  # extra engine CLI args (ENGINE_ARGS)
    torchrun_args: list[str] = field(default_factory=lambda: ["--standalone"])  # rendezvous (TORCHRUN_ARGS)
    max_sessions: int = 8  # concurrent sessions; the next init waits in the queue or gets `busy`
    admission: str = "queue"  # queue | reject: what an init beyond capacity gets
    max_queue: int = 16  # inits waiting for capacity; the next one gets `busy`
    admission_capacity: str = "measured"  # measured | off: also cap sessions by the engine's measured 16 fps capacity
    allowed_origins: list[str] | None = None  # None = any origin (ALLOWED_ORIGINS unset or "*")
    auth_token: str = ""  # shared token; empty = no auth
    max_message_bytes: int = 16 * 1024 * 1024  # larger WS messages close with 1009
    control_rate: float = 60.0  # control/prompt messages per second allowed per connection
    control_burst: int = 120  # bucket size for bursts
    init_rate: float = 0.2  # inits per second per connection after the burst (each one opens a world)
    init_burst: int = 3
    prompt_rate: float = 2.0  # prompt changes per second per session sent to the engine (the latest wins)
    init_timeout_s: float = 10.0  # a connection without a world or a pending init this long is closed (1008)
    max_connections: int = 512  # WebSocket connections; more are refused at the handshake (HTTP 503)
    max_http_connections: int = 256  # HTTP connections; the oldest idle one is closed to make room, else 503
    handshake_timeout_s: float = 10.0  # time to send the WebSocket handshake / each HTTP request's headers
    slow_client_timeout_s: float = 10.0  # a client that takes no data this long is dropped and its world freed
    test_frames_max: int = 2  # test frames rendering at once; more get 429 with Retry-After
    test_frame_timeout_s: float = 15.0  # a test frame that finds no engine time within this gets 503
    send_queue_frames: int = 8  # per-client outgoing frames before the oldest is dropped
    resume_grace_s: float = 30.0  # a world whose connection dropped is kept this long for a resume (0 = never)
    max_viewers_per_session: int = 8  # read-only watchers of one world; more get `busy` (0 = no watch links)
    jpeg_quality: int = 85
    engine_start_timeout_s: float = 600.0  # model load + warm-up budget before a restart
    engine_step_timeout_s: float = 60.0  # a chunk taking longer marks the engine hung
    heartbeat_timeout_s: float = 10.0  # no heartbeat this long marks the engine dead
    heartbeat_late_s: float = 2.0  # no heartbeat this long turns /ready 503 (heartbeats come every 0.5 s)
    restart_backoff_max_s: float = 30.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        origins_raw = env.get("ALLOWED_ORIGINS", "*").strip()
        origins = None if origins_raw in ("", "*") else [o.strip() for o in origins_raw.split(",") if o.strip()]
        engine = env.get("ENGINE", "sim").strip() or "sim"
        if engine not in ("sim", "lingbot-fast"):
            raise SettingsError(f"ENGINE={engine!r}: expected 'sim' or 'lingbot-fast'")
        model_dir = env.get("MODEL_DIR", "").strip()
        if engine == "lingbot-fast" and not model_dir:
            raise SettingsError("ENGINE=lingbot-fast needs MODEL_DIR (the downloaded checkpoint folder)")
        admission = env.get("ADMISSION", "queue").strip().lower() or "queue"
        if admission not in ("queue", "reject"):
            raise SettingsError(f"ADMISSION={admission!r}: expected 'queue' or 'reject'")
        capacity = env.get("ADMISSION_CAPACITY", "").strip().lower() or "measured"
        if capacity not in ("measured", "off"):
            raise SettingsError(f"ADMISSION_CAPACITY={capacity!r}: expected 'measured' or 'off'")
        heartbeat_timeout = _float(env, "HEARTBEAT_TIMEOUT_S", 10.0, 0.5, 3600.0)
        heartbeat_late = _float(env, "HEARTBEAT_LATE_S", 2.0, 0.6, 3600.0)
        if heartbeat_late > heartbeat_timeout:
            raise SettingsError(f"HEARTBEAT_LATE_S={heartbeat_late:g} is longer than HEARTBEAT_TIMEOUT_S="
                                f"{heartbeat_timeout:g}; /ready must turn 503 before the engine is restarted")
        level = env.get("LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LOG_LEVEL={level!r}: expected DEBUG, INFO, WARNING or ERROR")
        return cls(
            ws_host=env.get("WS_HOST", "0.0.0.0"),
            ws_port=_int(env, "WS_PORT", 8765, 0, 65535),
            http_host=env.get("HTTP_HOST", "0.0.0.0"),
            http_port=_int(env, "HTTP_PORT", 8080, 0, 65535),
            run_dir=Path(env.get("RUN_DIR", "run")),
            engine=engine,
            model_dir=model_dir,
            chunk_frames=_int(env, "CHUNK_FRAMES", 4, 1, 64),
            num_gpus=_int(env, "NUM_GPUS", 0, 0, 64),
            engine_args=shlex.split(env.get("ENGINE_ARGS", "")),
            torchrun_args=shlex.split(env.get("TORCHRUN_ARGS", "--standalone")),
            max_sessions=_int(env, "MAX_SESSIONS", 8, 1, 10_000),
            admission=admission,
            max_queue=_int(env, "MAX_QUEUE", 16, 0, 10_000),
            admission_capacity=capacity,
            allowed_origins=origins,
            auth_token=env.get("AUTH_TOKEN", ""),
            max_message_bytes=_int(env, "MAX_MESSAGE_BYTES", 16 * 1024 * 1024, 4096, 1 << 30),
            control_rate=_float(env, "CONTROL_RATE", 60.0, 1.0, 10_000.0),
            control_burst=_int(env, "CONTROL_BURST", 120, 1, 100_000),
            init_rate=_float(env, "INIT_RATE", 0.2, 0.001, 1000.0),
            init_burst=_int(env, "INIT_BURST", 3, 1, 1000),
            prompt_rate=_float(env, "PROMPT_RATE", 2.0, 0.01, 1000.0),
            init_timeout_s=_float(env, "INIT_TIMEOUT_S", 10.0, 0.1, 86_400.0),
            max_connections=_int(env, "MAX_CONNECTIONS", 512, 1, 1_000_000),
            max_http_connections=_int(env, "MAX_HTTP_CONNECTIONS", 256, 1, 1_000_000),
            handshake_timeout_s=_float(env, "HANDSHAKE_TIMEOUT_S", 10.0, 0.1, 3600.0),
            slow_client_timeout_s=_float(env, "SLOW_CLIENT_TIMEOUT_S", 10.0, 0.1, 3600.0),
            test_frames_max=_int(env, "TEST_FRAMES_MAX", 2, 1, 64),
            test_frame_timeout_s=_float(env, "TEST_FRAME_TIMEOUT_S", 15.0, 0.1, 3600.0),
            send_queue_frames=_int(env, "SEND_QUEUE_FRAMES", 8, 1, 1024),
            resume_grace_s=_float(env, "RESUME_GRACE_S", 30.0, 0.0, 3600.0),
            max_viewers_per_session=_int(env, "MAX_VIEWERS_PER_SESSION", 8, 0, 1000),
            jpeg_quality=_int(env, "JPEG_QUALITY", 85, 10, 100),
            engine_start_timeout_s=_float(env, "ENGINE_START_TIMEOUT_S", 600.0, 1.0, 86_400.0),
            engine_step_timeout_s=_float(env, "ENGINE_STEP_TIMEOUT_S", 60.0, 0.5, 3600.0),
            heartbeat_timeout_s=heartbeat_timeout,
            heartbeat_late_s=heartbeat_late,
            restart_backoff_max_s=_float(env, "RESTART_BACKOFF_MAX_S", 30.0, 0.1, 3600.0),
            log_level=level,
        )

    def engine_command(self, endpoint: str) -> list[str]:
        """The command line that starts one engine generation connected to `endpoint`."""
        args = ["-m", "inference.engine", "--engine", self.engine, "--endpoint", endpoint,
                "--front-pid", str(os.getpid()),
                "--chunk-frames", str(self.chunk_frames), "--jpeg-quality", str(self.jpeg_quality),
                "--max-test-frames", str(self.test_frames_max)]
        if self.model_dir:
            args += ["--model-dir", self.model_dir]
        args += self.engine_args
        if self.num_gpus > 1:
            return [sys.executable, "-m", "torch.distributed.run", *self.torchrun_args,
                    f"--nproc_per_node={self.num_gpus}", *args]
        return [sys.executable, *args]
