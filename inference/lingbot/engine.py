"""The `lingbot-fast` WorldEngine: LingBot-World-Fast sessions streamed chunk by chunk (KV window, or global).

Window mode (the default) streams without end: the KV cache re-anchors RoPE
positions when a session reaches the end of the table (kv_cache.py). Global
mode (`window=-1`, every frame attended) ends a session honestly at the table's
last position: each chunk reports the frames left, and the chunk past the end
is refused with `session_limit`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from inference.engine.base import (FPS, ChunkOutput, ChunkWork, EngineInfo, EngineUserError, SessionSpec,
                                   WorldEngine, parse_size)
from inference.lingbot.admission import GIB, MemoryGate, measure, module_bytes
from inference.lingbot.layout import LingbotModels, SizePolicy, load_models, read_size_policy
from inference.lingbot.pipeline import ChunkPipeline, ChunkRequest
from inference.lingbot.session import SessionStream, start_frame
from inference.lingbot.slots import SlotPool
from inference.models.attention import backend_report
from inference.models.fp8 import is_fp8
from inference.models.packed_linear import packed_bytes
from inference.models.vae import SPACE_STRIDE, StreamingDecoder
from inference.tools.memory_plan import Deployment, MemoryPlan, ModelShapes

log = logging.getLogger("engine.lingbot")

ENGINE_NAME = "lingbot-fast"
CHUNK_LATENTS = 3
DEFAULT_WINDOW = 12  # latent frames attended: 3 sink + 6 past + the chunk itself
DEFAULT_SINK = 3  # the first chunk (start image) stays in view forever
GLOBAL_WINDOW = -1  # window value of global attention: every frame of the session stays in the cache
SCRATCH_ID = "__lingbot_scratch__"


def pick_device(device: str | torch.device | None, dtype: torch.dtype | str | None
                ) -> tuple[torch.device, torch.dtype]:
    """cuda + bfloat16 when available, else cpu + float32; explicit values win."""
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def nearest_size(width: int, height: int, sizes: list[str]) -> str:
    """The allowed size closest to (width, height) in log scale of both sides."""
    def distance(size: str) -> float:
        w, h = (int(v) for v in size.split("*"))
        return abs(math.log(w / width)) + abs(math.log(h / height))
    return min(sizes, key=distance)


class LingbotFastEngine(WorldEngine):
    """LingBot-World-Fast behind the chunk interface; sessions of one signature share one batched DiT call."""

    def __init__(self, models: LingbotModels, *, model_name: str, window: int | None = None,
                 sink: int | None = None, rope_frames: int | None = None, decode: bool = True, admit: bool = True,
                 max_batch: int = 8, memory_limit_gb: float | None = None, rank: int = 0,
                 agree: Callable[[str | None], list[str | None]] | None = None, compile: bool | str = False,
                 cuda_graphs: bool = False):
        config = models.dit.config
        if window is None:
            window = config.local_attn_size if config.local_attn_size != -1 else DEFAULT_WINDOW
        if sink is None:
            sink = config.sink_size if config.local_attn_size != -1 else DEFAULT_SINK
        if rope_frames is not None:
            models.dit.set_rope_frames(rope_frames)  # before any cache: pools copy it
        rope_frames = models.dit.rope_frames
        if window == GLOBAL_WINDOW:
            sink = 0  # nothing is ever evicted
        elif sink < 0 or window < sink + CHUNK_LATENTS:
            raise ValueError(f"window {window} / sink {sink}: streaming needs a KV window (in latent frames) of at "
                             f"least sink + {CHUNK_LATENTS}, and sink >= 0 (or window {GLOBAL_WINDOW}: global)")
        elif window > rope_frames:
            raise ValueError(f"window {window} latent frames is longer than the RoPE table ({rope_frames} frames)")
        if cuda_graphs and window == GLOBAL_WINDOW:
            raise ValueError("--cuda-graphs with global attention (window -1): the attended length grows every "
                             "chunk, so every chunk would need a new graph; use a KV window")
        self.rope_frames = rope_frames
        self.max_latent_frames = rope_frames if window == GLOBAL_WINDOW else None  # None: sessions never end
        self.models = models
        self.model_name = model_name
        self.window, self.sink = window, sink
        self.device = models.dit.patch_embedding.weight.device
        self.dtype = models.dit.patch_embedding.weight.dtype
        self.decode = decode  # False on engine-group followers: no VAE decode, chunks come back without frames
        self.pipeline = ChunkPipeline(models.dit, decode=decode, compile=compile, cuda_graphs=cuda_graphs)
        self.pools: dict[str, SlotPool] = {}
        self.sessions: dict[str, SessionStream] = {}
        self.signatures: dict[str, str] = {}
        # agree: in an engine group, gathers every rank's admission verdict (all take or refuse together)
        self.memory = self._memory_gate(admit=admit, max_batch=max_batch, rank=rank, agree=agree,
                                        limit=None if memory_limit_gb is None else int(memory_limit_gb * GIB))
        self.attention = backend_report(self.device, self.dtype, config.head_dim)  # fixed once loaded
        (log.warning if self.attention.startswith("sdpa (") else log.info)(
            "rank %d attention on %s: %s; DiT step %s", rank, self.device, self.attention, self.pipeline.step_mode)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, device: str | torch.device | None = None,
                       dtype: torch.dtype | str | None = None, window: int | None = None, sink: int | None = None,
                       rope_frames: int | None = None, sizes: list[str] | None = None, progress: bool | None = None,
                       prepare: Callable[[LingbotModels], None] | None = None,
                       decode: bool = True, weights: str = "bf16", t5_device: str | None = None,
                       **options) -> "LingbotFastEngine":
        """Load the checkpoint folder (MODEL.md layout); `sizes` overrides the allowed W*H list.

        `prepare` sees the loaded models before any cache exists (the engine
        group applies its parallel layout there). decode=False (the group's
        followers) skips the VAE decode: chunks come back with no frames.
        weights='fp8' stores the DiT block linears as float8; t5_device='cpu'
        keeps the text encoder in host memory. Other options (admit,
        max_batch, memory_limit_gb, rank, compile, cuda_graphs) go to the
        constructor.
        """
        device, dtype = pick_device(device, dtype)
        models = load_models(model_dir, device=device, dtype=dtype, progress=progress, weights=weights,
                             t5_device=t5_device)
        if prepare is not None:
            prepare(models)
        if sizes is not None:
            policy = read_size_policy(Path(model_dir))
            models.sizes = SizePolicy(sizes=list(sizes), default_size=policy.default_size
                                      if policy.default_size in sizes else sizes[0])
        return cls(models, model_name=Path(model_dir).resolve().name, window=window, sink=sink,
                   rope_frames=rope_frames, decode=decode, **options)

    # -- interface ---------------------------------------------------------

    def info(self) -> EngineInfo:
        c = self.models.dit.config
        summary = (f"{self.model_name}: DiT dim {c.dim} x {c.num_layers} layers, {c.control_type}, "
                   f"{self.attention_summary()}, {str(self.dtype).removeprefix('torch.')}, "
                   f"step {self.pipeline.step_mode}"
                   f"{', fp8 DiT weights' if self.memory.plan.d.weights == 'fp8' else ''}")
        return EngineInfo(name=ENGINE_NAME, model=summary, device=str(self.device), sizes=list(self.models.sizes.sizes),
                          default_size=self.models.sizes.default_size,
                          first_chunk_frames=StreamingDecoder.video_frames_for(CHUNK_LATENTS, first_chunk=True),
                          chunk_frames=StreamingDecoder.video_frames_for(CHUNK_LATENTS, first_chunk=False),
                          max_latent_frames=self.max_latent_frames,
                          extra={"window": self.window, "sink": self.sink, "rope_frames": self.rope_frames,
                                 "control_type": c.control_type,
                                 "chunk_latents": CHUNK_LATENTS, "steps": self.pipeline.sampler.num_steps,
                                 "attention": self.attention, "step": self.pipeline.step_mode})

    def warm_up(self) -> None:
        """One throwaway first chunk at the default size (allocations, kernels, prompt cache)."""
        w, h = (int(v) for v in self.models.sizes.default_size.split("*"))
        self.render_test_frame("warm-up", 0, w, h)

    def signature(self, width: int, height: int) -> str:
        c = self.models.dit.config
        attention = (f"global{self.rope_frames}" if self.window == GLOBAL_WINDOW
                     else f"window{self.window}/sink{self.sink}")
        return (f"{ENGINE_NAME}|{width}*{height}|latents{CHUNK_LATENTS}|steps{self.pipeline.sampler.num_steps}"
                f"|{c.control_type}|{attention}")

    def open_session(self, spec: SessionSpec) -> str:
        width, height = parse_size(f"{spec.width}*{spec.height}", self.models.sizes.sizes)
        try:
            image = start_frame(spec.image, width, height).to(self.device)
        except ValueError as exc:
            raise EngineUserError("bad_field", str(exc)) from exc
        context = self.text_context(spec.prompt)
        self.close_session(spec.session_id)  # before taking a pool: closing may drop an emptied one
        sig = self.signature(width, height)
        pool = self.pools.get(sig)
        what = "a test frame" if spec.session_id == SCRATCH_ID else f"session {spec.session_id!r}"
        self.memory.check(self.open_sizes(), (width, height), slot_free=pool is not None and bool(pool.free),
                          what=what)
        if pool is None:
            frame_seqlen = self.tokens_per_frame(width, height)
            pool = self.pools[sig] = SlotPool(self.models.dit, frame_seqlen=frame_seqlen, window=self.window,
                                              sink=self.sink)
        slot = pool.acquire()
        self.models.dit.set_prompt(pool.cache, slot, context)
        self.sessions[spec.session_id] = SessionStream(
            session_id=spec.session_id, prompt=spec.prompt, seed=spec.seed, width=width, height=height, image=image,
            vae=self.models.vae, control_type=self.models.dit.config.control_type, chunk_latents=CHUNK_LATENTS,
            slot=slot, decode=self.decode)
        self.signatures[spec.session_id] = sig
        return sig

    def generate(self, works: list[ChunkWork]) -> list[ChunkOutput]:
        if not works:
            return []
        sessions = [self._session(w.session_id) for w in works]
        sigs = {self.signatures[w.session_id] for w in works}
        if len(sigs) != 1 or len({w.session_id for w in works}) != len(works):
            raise ValueError(f"one generate call takes distinct sessions of one signature, got {sorted(sigs)} "
                             f"for {[w.session_id for w in works]}")
        for work, session in zip(works, sessions):
            self._check_chunk(work, session)
        requests = [ChunkRequest(session=s, poses=w.poses, keys=w.keys) for w, s in zip(works, sessions)]
        results = self.pipeline.run(self.pools[sigs.pop()].cache, requests)
        # VAE time = condition encode + decode (ChunkOutput has one field for both)
        return [ChunkOutput(frames=r.frames, model_ms=r.dit_ms, decode_ms=r.condition_ms + r.decode_ms,
                            frames_left=self.frames_left(s)) for r, s in zip(results, sessions)]

    def set_prompt(self, session_id: str, prompt: str) -> None:
        """Swap the cross-attention K/V of the session's slot; its KV window and position are kept."""
        session = self._session(session_id)
        context = self.text_context(prompt)
        self.models.dit.set_prompt(self.pools[self.signatures[session_id]].cache, session.slot, context)
        session.prompt = prompt

    def reset(self, session_id: str) -> None:
        session = self._session(session_id)
        self.pools[self.signatures[session_id]].cache.reset(session.slot)
        session.restart()

    def close_session(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        sig = self.signatures.pop(session_id)
        pool = self.pools[sig]
        pool.release(session.slot)
        if not len(pool):
            del self.pools[sig]  # frees the cache memory of an unused size

    def render_test_frame(self, prompt: str, seed: int, width: int, height: int) -> np.ndarray:
        """The last frame of a throwaway session's first chunk at (width, height) or the nearest valid size.

        An engine that does not decode (a group follower) returns a black frame.
        """
        size = f"{width}*{height}"
        sizes = self.models.sizes.sizes
        if size not in sizes:
            size = nearest_size(max(width, 1), max(height, 1), sizes)
        w, h = (int(v) for v in size.split("*"))
        self.open_session(SessionSpec(session_id=SCRATCH_ID, prompt=prompt, seed=seed, width=w, height=h))
        try:
            frames = self.sessions[SCRATCH_ID].expected_frames()
            poses = np.broadcast_to(np.eye(4), (frames, 4, 4)).copy()
            keys = np.zeros((frames, 8), dtype=np.float32)
            out = self.generate([ChunkWork(session_id=SCRATCH_ID, chunk_index=0, poses=poses, keys=keys)])
        finally:
            self.close_session(SCRATCH_ID)
        frames = out[0].frames
        return frames[-1] if len(frames) else np.zeros((h, w, 3), dtype=np.uint8)

    def close(self) -> None:
        for session_id in list(self.sessions):
            self.close_session(session_id)

    def health(self) -> dict:
        """This rank's memory (used / planned / free MiB) and attention backend (with the step mode when it is
        not eager: 'direct, compiled', 'fa3, cuda graphs'), for /status."""
        step = self.pipeline.step_mode
        return {**self.memory.report(self.open_sizes()),
                "attention": self.attention if step == "eager" else f"{self.attention}, {step}"}

    # -- helpers -----------------------------------------------------------

    def open_sizes(self) -> dict[tuple[int, int], int]:
        """Open sessions per (width, height)."""
        sizes: dict[tuple[int, int], int] = {}
        for s in self.sessions.values():
            sizes[s.width, s.height] = sizes.get((s.width, s.height), 0) + 1
        return sizes

    def _memory_gate(self, *, admit: bool, max_batch: int, rank: int, limit: int | None, agree) -> MemoryGate:
        """The memory plan of this rank's layout, read off the loaded models."""
        m = self.models
        heads = m.dit.config.num_heads
        meshes = [p.device_mesh.size() for p in m.dit.parameters() if hasattr(p, "device_mesh")]
        t5_sharded = any(hasattr(p, "device_mesh") for p in m.text.model.parameters())
        t5_here = next(m.text.model.parameters()).device.type == self.device.type
        vae_dtype = str(m.vae.conv1.weight.dtype).removeprefix("torch.")
        deployment = Deployment(
            gpus=max(meshes, default=heads // m.dit.sequence.local_heads(heads)),
            gpu_mem_gib=measure(self.device).total / GIB, ulysses=heads // m.dit.sequence.local_heads(heads),
            dit_fsdp=bool(meshes), t5_fsdp=t5_sharded, t5_device="cuda" if t5_here else "cpu",
            weights="fp8" if is_fp8(m.dit) else "bf16", dtype=str(self.dtype).removeprefix("torch."),
            vae_dtype=vae_dtype, window=self.rope_frames if self.window == GLOBAL_WINDOW else self.window,
            sink=self.sink, max_batch=max_batch,  # a global cache holds the whole table
            direct_attention=backend_report(self.device, self.dtype, m.dit.config.head_dim).startswith("direct"))
        plan = MemoryPlan(deployment, ModelShapes(dit=m.dit.config, t5=m.text.model.config, vae=m.vae.config))
        weights = sum(module_bytes(part, self.device) for part in (m.dit, m.vae, m.text.model))
        weights += packed_bytes(m.dit) if self.device.type == "cpu" else 0  # bf16 CPU linears keep packed copies
        return MemoryGate(plan, self.device, weights_bytes=weights, rank=rank, limit_bytes=limit, enabled=admit,
                          agree=agree)

    def tokens_per_frame(self, width: int, height: int) -> int:
        _, ph, pw = self.models.dit.config.patch_size
        return (height // SPACE_STRIDE // ph) * (width // SPACE_STRIDE // pw)

    def text_context(self, prompt: str) -> torch.Tensor:
        """(L, text_dim) umT5 features of the prompt (cached per prompt), at most the DiT's text_len rows."""
        context = self.models.text.encode([prompt])[0]
        return context[: self.models.dit.config.text_len]

    def pool_of(self, session_id: str) -> SlotPool:
        return self.pools[self.signatures[session_id]]

    def _session(self, session_id: str) -> SessionStream:
        session = self.sessions.get(session_id)
        if session is None:
            raise EngineUserError("not_initialized", f"session {session_id!r} is not open on this engine")
        return session

    def attention_summary(self) -> str:
        if self.window == GLOBAL_WINDOW:
            return f"global attention up to {self.rope_frames} latent frames"
        return f"window {self.window}/sink {self.sink} latent frames"

    def frames_left(self, session: SessionStream) -> int | None:
        """Video frames the session can still generate before its length limit (None: it has none)."""
        if self.max_latent_frames is None:
            return None
        chunks = (self.max_latent_frames - session.latent_frames) // CHUNK_LATENTS
        return max(chunks, 0) * StreamingDecoder.video_frames_for(CHUNK_LATENTS, first_chunk=False)

    def _check_chunk(self, work: ChunkWork, session: SessionStream) -> None:
        """Refuse a chunk past a global-mode session's end or with the wrong number of poses, before any state moves."""
        limit = self.max_latent_frames
        if limit is not None and session.latent_frames + CHUNK_LATENTS > limit:
            video_frames = StreamingDecoder.video_frames_for(session.latent_frames, first_chunk=True)
            raise EngineUserError(
                "session_limit", f"session {work.session_id!r} reached the end of global attention after "
                f"{session.latent_frames} latent frames ({video_frames / FPS:.0f} s of video; the RoPE table holds "
                f"{limit}); reset it to continue, or run the engine with a KV window (--kv-window) to stream "
                f"without a limit", session_id=work.session_id)
        frames = session.expected_frames()
        if np.shape(work.poses) != (frames, 4, 4) or np.shape(work.keys) != (frames, 8):
            raise EngineUserError(
                "bad_field", f"session {work.session_id!r} chunk {work.chunk_index}: got poses "
                f"{np.shape(work.poses)} and keys {np.shape(work.keys)}, expected ({frames}, 4, 4) and ({frames}, 8)",
                session_id=work.session_id)
