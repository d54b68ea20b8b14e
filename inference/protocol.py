"""Every message that crosses the front/engine process boundary.

Messages are msgspec structs, tagged by class name and encoded with msgpack.
A message travels as one ZeroMQ multipart message: part 0 is the encoded
struct, any further parts are raw payloads the struct announces (JPEG frames
of a chunk), so frames are never re-encoded or copied into the header.
Structs have no behaviour; both sides import them from here only.
"""

from __future__ import annotations

import msgspec

# -- front -> engine ---------------------------------------------------------


class OpenSession(msgspec.Struct, tag=True, kw_only=True):
    """Create (or re-create) a session's world state in the engine."""

    session_id: str
    prompt: str
    seed: int
    width: int
    height: int
    image: bytes | None = None  # encoded JPEG/PNG start image, decoded by the engine
    owner: str = ""  # who asked (one front connection): opens are scheduled round-robin by owner, one pending each
    replaces: str = ""  # the session this one will replace (a re-init): it pays for engine time the open forces


class StepChunk(msgspec.Struct, tag=True, kw_only=True):
    """Generate the next chunk of a session from per-frame controls."""

    session_id: str
    chunk_index: int  # request id, increasing over the session's life (a reset does not restart it)
    # (F, 4, 4) float64 camera-to-world poses, C-order bytes; OpenCV axes.
    poses: bytes
    # (F, 8) float32 fraction of each frame a key was held; columns w,a,s,d,i,j,k,l.
    keys: bytes
    num_frames: int
    deadline: float  # wall-clock (time.time()) at which playback runs out of frames
    requested_at: float


class SetPrompt(msgspec.Struct, tag=True, kw_only=True):
    """Swap a session's text condition; its world state is kept. Answered by PromptChanged.

    The front keeps at most one in flight per session; the engine also keeps
    at most one pending per session (a newer one replaces it).
    """

    session_id: str
    prompt: str


class ResetSession(msgspec.Struct, tag=True, kw_only=True):
    """Return a session to its start image and start pose."""

    session_id: str


class CloseSession(msgspec.Struct, tag=True, kw_only=True):
    """Free everything the engine holds for a session."""

    session_id: str


class RenderTestFrame(msgspec.Struct, tag=True, kw_only=True):
    """Render one stand-alone frame (the /test-frame route)."""

    request_id: str
    prompt: str
    seed: int
    width: int
    height: int
    owner: str = ""  # the HTTP client (fairness between owners)


class CancelTestFrame(msgspec.Struct, tag=True, kw_only=True):
    """The HTTP request of a test frame is gone (client left or timed out): stop its work."""

    request_id: str


class Shutdown(msgspec.Struct, tag=True, kw_only=True):
    """Ask the engine to exit cleanly."""


# -- engine -> front ---------------------------------------------------------


class RankHealth(msgspec.Struct, kw_only=True):
    """Liveness and memory of one rank of the engine (group) as rank 0 sees it."""

    rank: int
    alive: bool
    last_seen_s: float  # seconds since rank 0 last heard from it
    memory_used_mb: float | None = None  # held by the rank's process on its device (CUDA: allocated by torch)
    memory_planned_mb: float | None = None  # the memory plan's peak for what is open now (weights + sessions + step)
    memory_free_mb: float | None = None  # what it could still allocate (CUDA: driver free + allocator cache)
    attention: str | None = None  # attention backend in use: fa3, fa2, sdpa (with the reason on a GPU)


class GpuInfo(msgspec.Struct, kw_only=True):
    """One accelerator as reported by the engine (empty list on CPU)."""

    index: int
    name: str
    memory_used_mb: float
    memory_total_mb: float
    utilization: float | None = None


class EngineReady(msgspec.Struct, tag=True, kw_only=True):
    """The engine is loaded, warmed and can take sessions."""

    engine: str
    model: str
    world_size: int
    device: str
    sizes: list[str]  # valid "W*H" sizes
    default_size: str
    fps: int
    first_chunk_frames: int  # video frames produced by a session's first chunk
    chunk_frames: int  # video frames produced by every later chunk
    max_latent_frames: int | None = None  # session length bound (None: unbounded)
    pid: int = 0


class EngineProgress(msgspec.Struct, tag=True, kw_only=True):
    """Start-up progress (model loading, warm-up) for /ready reasons and logs."""

    stage: str
    fraction: float | None = None
    detail: str = ""


class SessionOpened(msgspec.Struct, tag=True, kw_only=True):
    """A session's world state exists; chunks may be requested."""

    session_id: str
    prompt: str
    width: int
    height: int
    signature: str


class ChunkTimings(msgspec.Struct, kw_only=True):
    """Where a chunk's time went, in milliseconds."""

    total_ms: float
    model_ms: float  # DiT / procedural render
    decode_ms: float  # VAE decode (0 for sim)
    jpeg_ms: float
    batch_size: int = 1
    queue_ms: float = 0.0  # request arrival -> step start


class ChunkReady(msgspec.Struct, tag=True, kw_only=True):
    """A generated chunk; followed by `num_frames` JPEG parts in order."""

    session_id: str
    chunk_index: int
    num_frames: int
    timings: ChunkTimings
    # Extra playback lead the engine asks for: request chunks this many seconds earlier, so that a
    # waiting engine task (open, prompt, test frame) finds a gap between chunks (0: none waiting).
    lead_s: float = 0.0
    # Video frames this session can still generate before its length limit (global attention:
    # the end of the RoPE table); None when it streams without end. Seconds left = frames_left / fps.
    frames_left: int | None = None


class PromptChanged(msgspec.Struct, tag=True, kw_only=True):
    """Answer to SetPrompt: the prompt now in use, or why it was refused (the old one stays)."""

    session_id: str
    prompt: str
    error: str | None = None
    code: str | None = None


class TestFrame(msgspec.Struct, tag=True, kw_only=True):
    """Answer to RenderTestFrame; followed by one JPEG part unless `error` is set."""

    request_id: str
    error: str | None = None
    code: str | None = None  # with error: "bad_field" (the request) or "busy" (no room in the engine now)


class EngineError(msgspec.Struct, tag=True, kw_only=True):
    """A failure the front must act on.

    `session_id` set and `fatal` false: that session's request failed (bad
    image, out of positions, ...), the engine goes on. `fatal` true: the
    engine is about to exit and the front should restart it.
    """

    code: str
    message: str
    session_id: str | None = None
    fatal: bool = False


class SignatureLoad(msgspec.Struct, kw_only=True):
    """What rank 0 learned about one batching signature: batch limit, step times, capacity at 16 fps."""

    signature: str
    size: str  # "W*H" of the sessions opened with it
    sessions: int  # open now
    batch_limit: int  # learned largest batch
    step_ms: dict[int, float] = {}  # batch size -> estimated step time (EMA)
    session_ms: float | None = None  # step time per session at the batch limit
    capacity: float | None = None  # sessions it could hold at the target fps alone
    batches: int = 0  # steps run
    late_batches: int = 0  # steps that made a session late that a one-session step would not have


class Heartbeat(msgspec.Struct, tag=True, kw_only=True):
    """Sent about twice a second by rank 0's I/O thread while the engine lives."""

    sent_at: float
    busy_since: float | None  # wall-clock start of the step in progress, if any
    sessions: int
    queued_steps: int
    chunk_ms_p50: float | None = None
    chunk_ms_p95: float | None = None
    ranks: list[RankHealth] = []
    gpus: list[GpuInfo] = []
    batching: list[SignatureLoad] = []
    mixed_batches: int = 0  # steps whose sessions had different signatures (always 0 unless a bug)
    tasks: int = 0  # engine tasks (opens, prompts, test frames) waiting or in progress
    task_ms: dict[str, float] = {}  # task kind -> expected milliseconds of one slice
    lead_ms: float = 0.0  # extra playback lead the engine asks of sessions now


ToEngine = (
    OpenSession | StepChunk | SetPrompt | ResetSession | CloseSession | RenderTestFrame | CancelTestFrame | Shutdown
)
ToFront = (
    EngineReady | EngineProgress | SessionOpened | ChunkReady | PromptChanged | TestFrame | EngineError | Heartbeat
)

_encoder = msgspec.msgpack.Encoder()
_to_engine = msgspec.msgpack.Decoder(ToEngine)
_to_front = msgspec.msgpack.Decoder(ToFront)


def encode(msg: msgspec.Struct) -> bytes:
    """Encode one protocol struct (either direction)."""
    return _encoder.encode(msg)


def decode_to_engine(data: bytes) -> ToEngine:
    """Decode a front -> engine header; raises msgspec.DecodeError on garbage."""
    return _to_engine.decode(data)


def decode_to_front(data: bytes) -> ToFront:
    """Decode an engine -> front header; raises msgspec.DecodeError on garbage."""
    return _to_front.decode(data)
