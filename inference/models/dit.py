"""The LingBot-World-Fast causal DiT: one chunk of latent frames per call, for a batch of session slots."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from inference.models.config import DiTConfig
from inference.models.dit_blocks import DiTBlock, FloatLinear, Head, run_in_weight_dtype
from inference.models.attention import takes_key_bias
from inference.models.kv_cache import CachePlan, DiTCache, SelfAttentionCache, TextCache
from inference.models.packed_linear import Linear
from inference.models.rope import RotaryTables, rotations
from inference.models.sequence import LOCAL, LocalSequence, Rope

CONDITION_CHANNELS_I2V = 20  # 4 mask + 16 image latent
TIME_ROWS = 7  # a time condition's rows: the embedding e, then the six modulation rows of its projection
# Kept and run in float32 whatever the load dtype (the reference's float32 autocast regions).
FLOAT32_MODULES = ("time_embedding", "time_projection", "head")


def sinusoidal_embedding(freq_dim: int, t: torch.Tensor) -> torch.Tensor:
    """(B,) timesteps -> (B, freq_dim) float64: [cos, sin] of t * 10000^(-i/half)."""
    half = freq_dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t, freqs)  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class CausalDiT(nn.Module):
    """Causal Wan DiT with camera control; parameter names match the reference `WanModelFast`."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim, patch = config.dim, config.patch_size
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=patch, stride=patch)
        self.patch_embedding_wancamctrl = Linear(config.control_channels * config.patch_volume, dim)
        self.c2ws_hidden_states_layer1 = Linear(dim, dim)
        self.c2ws_hidden_states_layer2 = Linear(dim, dim)
        self.text_embedding = nn.Sequential(
            Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), Linear(dim, dim))
        self.time_embedding = nn.Sequential(FloatLinear(config.freq_dim, dim), nn.SiLU(), FloatLinear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), FloatLinear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            DiTBlock(dim, config.ffn_dim, config.num_heads, config.qk_norm, config.cross_attn_norm, config.eps)
            for _ in range(config.num_layers))
        self.head = Head(dim, config.out_dim, config.patch_volume, config.eps)
        self.rope = RotaryTables(config.head_dim)
        self.sequence: LocalSequence = LOCAL

    def use_sequence(self, sequence: LocalSequence) -> None:
        """Lay chunks out over ranks as `sequence` says (caches made afterwards hold its share of heads)."""
        self.sequence = sequence
        for block in self.blocks:
            block.self_attn.sequence = sequence

    @staticmethod
    def storage_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
        """The dtype parameter `name` is stored in when the model is loaded in `dtype` (float32 islands stay)."""
        return torch.float32 if name.split(".", 1)[0] in FLOAT32_MODULES else dtype

    def keep_islands_float32(self) -> "CausalDiT":
        """Return the float32 islands to float32 after a wholesale cast such as `.to(torch.bfloat16)`."""
        for name in FLOAT32_MODULES:
            getattr(self, name).float()
        return self

    def rebuild_buffers(self, device: torch.device | str) -> None:
        """Recompute the non-persistent RoPE tables (needed after building on the meta device)."""
        self.rope.rebuild(device)

    @property
    def rope_frames(self) -> int:
        """Latent frame positions of the RoPE table (the reference's 1024 unless set)."""
        return self.rope.frame_positions

    def set_rope_frames(self, frames: int) -> None:
        """Set the RoPE frame table length; caches made afterwards re-anchor (window) or stop (global) there."""
        self.rope.set_frame_positions(frames)

    def new_cache(self, *, capacity: int, frame_seqlen: int, kv_frames: int | None = None,
                  local_attn_size: int | None = None, sink_size: int | None = None,
                  max_attention_tokens: int | None = None, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None, compact_text: bool | None = None) -> DiTCache:
        """Allocate caches for `capacity` session slots.

        Window mode (local_attn_size != -1, default from the config) holds
        local_attn_size frames with sink_size pinned frames and streams forever
        (positions re-anchor at the end of the RoPE table); global mode holds
        `kv_frames` frames per slot (default: the RoPE table's length) and
        raises CacheFull beyond, PositionLimitReached past the table.
        compact_text (default: where attention takes a key bias, the CPU) stores
        each prompt's padding once (TextCache).
        """
        cfg = self.config
        local = cfg.local_attn_size if local_attn_size is None else local_attn_size
        sink = cfg.sink_size if sink_size is None else sink_size
        window = local != -1
        frames = local if window else (self.rope_frames if kv_frames is None else kv_frames)
        if frames <= 0:
            raise ValueError(f"global-mode cache needs kv_frames > 0 (got {kv_frames}); or pass local_attn_size")
        weight = self.patch_embedding.weight
        dtype = weight.dtype if dtype is None else dtype
        device = weight.device if device is None else device
        shape = dict(num_layers=cfg.num_layers, capacity=capacity, num_heads=cfg.num_heads,
                     head_dim=cfg.head_dim, dtype=dtype, device=device)
        self_kv = SelfAttentionCache(kv_tokens=frames * frame_seqlen, frame_seqlen=frame_seqlen, window=window,
                                     sink_frames=sink, max_attention_tokens=max_attention_tokens,
                                     rope_frames=self.rope_frames,
                                     **{**shape, "num_heads": self.sequence.local_heads(cfg.num_heads)})
        compact = takes_key_bias(torch.device(device)) if compact_text is None else compact_text
        text = TextCache(text_len=cfg.text_len, compact=compact, **shape)
        return DiTCache(self_kv=self_kv, text=text)

    @torch.no_grad()
    def set_prompt(self, cache: DiTCache, slot: int, context: torch.Tensor) -> None:
        """Encode a prompt's text features (L_text, text_dim) into a slot's cross-attention K/V."""
        cfg = self.config
        if context.ndim != 2 or context.shape[1] != cfg.text_dim or context.shape[0] > cfg.text_len:
            raise ValueError(f"context shape {tuple(context.shape)}: expected (L <= {cfg.text_len}, {cfg.text_dim})")
        weight = self.text_embedding[0].weight
        padded = torch.zeros(1, cfg.text_len, cfg.text_dim, dtype=weight.dtype, device=weight.device)
        padded[0, :context.shape[0]] = context.to(padded)  # padded rows are attended, as in the reference
        embedded = self.text_embedding(padded)  # (1, text_len, dim)
        kv = [block.cross_attn.project_context(embedded) for block in self.blocks]  # (1, text_len, heads, head_dim)
        cache.text.set(slot, torch.stack([k[0] for k, _ in kv]), torch.stack([v[0] for _, v in kv]), context.shape[0])

    def time_condition(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps -> (B, 7, dim) float32: the time embedding e (row 0) and its projection e0, the six
        modulation rows every block adds (rows 1-6). It depends on the timesteps and the time layers alone, so
        a pipeline computes it once per timestep value and reuses it in every chunk (`TimeConditions`)."""
        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t).float())  # (B, dim)
        e0 = self.time_projection(e).unflatten(1, (6, -1))  # (B, 6, dim)
        return torch.cat([e[:, None], e0], dim=1)

    def embed_control(self, control: torch.Tensor) -> torch.Tensor:
        """Control (B, C, F, h, w) -> camera tokens (B, L, dim): patchify like the latent, Linear, residual MLP."""
        b, c, f, h, w = control.shape
        self.check_control(control)
        pf, ph, pw = self.config.patch_size
        patches = control.reshape(b, c, f // pf, pf, h // ph, ph, w // pw, pw)  # (B, C, f, pf, h, ph, w, pw)
        # Token order (f h w), channel order (c pf ph pw) as in the reference rearrange.
        patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (f // pf) * (h // ph) * (w // pw), -1)
        tokens = run_in_weight_dtype(self.patch_embedding_wancamctrl, patches)  # (B, L, dim)
        hidden = self.c2ws_hidden_states_layer2(F.silu(self.c2ws_hidden_states_layer1(tokens)))
        return tokens + hidden

    def check_control(self, control: torch.Tensor) -> None:
        if control.shape[1] != self.config.control_channels:
            raise ValueError(f"control has {control.shape[1]} channels; a '{self.config.control_type}' model "
                             f"expects {self.config.control_channels}")

    def forward(self, x: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor,
                control: torch.Tensor | ChunkCamera | None, cache: DiTCache, start_frames: Sequence[int],
                slots: Sequence[int] | None = None, *, step=None, static: bool = False,
                keys_only: bool = False) -> torch.Tensor | None:
        """Flow prediction (B, out_dim, F, h, w) for one chunk of each batch item.

        x (B, 16, F, h, w) noisy latent; y (B, 20, F, h, w) condition ('i2v');
        t (B,) timesteps or their `time_condition` (B, 7, dim); control (B, C, F, h, w), a ChunkCamera (embedded once
        for all calls of a chunk) or None; start_frames: host ints, each item's
        first latent frame; slots: host ints, each item's cache slot (default
        0..B-1). Writes this chunk's keys into the cache. The device work runs
        in `step` (default `self.step`; a compiled or graph-captured one from
        inference/models/dit_step.py), static=True lays the cache plan out for it.
        keys_only=True (a cache update, whose prediction nobody reads) writes the
        keys and returns None: the last block stops once its keys are stored.
        """
        batch = x.shape[0]
        slots = list(range(batch)) if slots is None else list(slots)
        start_frames = [int(s) for s in start_frames]
        if len(slots) != batch or len(start_frames) != batch:
            raise ValueError(f"batch {batch}: got {len(slots)} slots and {len(start_frames)} start_frames")
        grid = self.check_latent(x, y)
        frame_seqlen = grid[1] * grid[2]
        if frame_seqlen != cache.self_kv.frame_seqlen:
            raise ValueError(f"latent grid {grid} gives {frame_seqlen} tokens per frame; "
                             f"the cache was built for {cache.self_kv.frame_seqlen}")
        self.rope.check_grid(grid)  # before the cache moves: an error leaves it intact
        time = t if t.ndim == 3 else self.time_condition(t.to(self.patch_embedding.weight.device))
        if time.shape != (batch, TIME_ROWS, self.config.dim):
            raise ValueError(f"timesteps {tuple(t.shape)}: expected ({batch},) or a time condition "
                             f"({batch}, {TIME_ROWS}, {self.config.dim})")
        camera = control if control is None or isinstance(control, ChunkCamera) else ChunkCamera(control)
        if camera is not None:
            self.check_control(camera.control)
        length = grid[0] * frame_seqlen
        plan = cache.plan(slots, [s * frame_seqlen for s in start_frames], length, static=static)  # may re-anchor
        plan.keys_only = keys_only
        rope = self.rope.for_grid(grid, plan.rope_starts)  # RoPE frames: absolute until a slot re-anchors
        camera_input = None if camera is None else camera.input_for(self, rope)
        return (step or self.step)(x, y, time, camera_input, rope, cache, plan)

    def step(self, x: torch.Tensor, y: torch.Tensor | None, time: torch.Tensor,
             camera: torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]] | None, rope: Rope, cache: DiTCache,
             plan: CachePlan) -> torch.Tensor:
        """The device work of one forward, from tensors and the cache plan alone (no host reads, no Python
        values that change between calls of one (batch, size) signature: it compiles and graph-captures).

        time: the `time_condition` (B, 7, dim) of the timesteps; camera: the chunk's camera tokens (B, L, dim),
        or each block's reused modulation (this rank's tokens).
        """
        tokens, grid = self.embed_latent(x, y)  # (B, L, dim) float32
        length = tokens.shape[1]
        e, e0 = time[:, 0], time[:, 1:]  # (B, dim), (B, 6, dim) float32
        per_layer = camera if isinstance(camera, list) else None
        tokens, rope, camera = self.sequence.split(tokens, rope, None if per_layer is not None else camera)
        freqs = rotations(*rope)  # (B, L, 1, head_dim/2) rotations of q and k
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            block_camera = per_layer[layer] if per_layer is not None else camera
            if layer == last and plan.keys_only:  # a cache update: the last block's keys are all it is for
                return block(tokens, e0, freqs, block_camera, None, cache.self_kv, layer, plan, keys_only=True)
            tokens = block(tokens, e0, freqs, block_camera, cache.text.layer(layer, plan), cache.self_kv, layer, plan)
        return self.unpatchify(self.sequence.gather(self.head(tokens, e), length), grid)

    def check_latent(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[int, int, int]:
        """The patch grid (F, h, w) of a latent (+ condition); raises on a wrong channel count or missing y."""
        channels = x.shape[1]
        if self.config.model_type == "i2v":
            if y is None:
                raise ValueError("an 'i2v' DiT needs the condition y (B, 20, F, h, w)")
            channels += y.shape[1]
        if channels != self.config.in_dim:
            raise ValueError(f"latent+condition has {channels} channels; expected in_dim {self.config.in_dim}")
        return tuple(n // p for n, p in zip(x.shape[2:], self.config.patch_size))

    def embed_latent(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Concatenate latent and condition, Conv3d patch embed -> tokens (B, L, dim) and grid (F, h, w)."""
        if self.config.model_type == "i2v":
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        weight = self.patch_embedding.weight
        embedded = self.patch_embedding(x.to(weight.dtype))  # (B, dim, F, h, w) in patches
        grid = tuple(embedded.shape[2:])
        return embedded.flatten(2).transpose(1, 2).float(), grid  # (B, L, dim)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, L, patch_volume * out_dim) -> (B, out_dim, F*pf, h*ph, w*pw)."""
        b = tokens.shape[0]
        f, h, w = grid
        pf, ph, pw = self.config.patch_size
        c = self.config.out_dim
        out = tokens.view(b, f, h, w, pf, ph, pw, c)  # channel order (pf ph pw c) as the head emits it
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, c, f, pf, h, ph, w, pw)
        return out.reshape(b, c, f * pf, h * ph, w * pw)


class ChunkCamera:
    """A chunk's camera condition (B, C, F, h, w), embedded once and shared by every DiT call of that chunk.

    reuse=True also keeps each block's camera modulation (two (B, L, dim)
    float32 tensors per block): the denoising steps and the cache update of a
    chunk then run the camera MLPs once instead of five times. That memory is
    small on a CPU-sized model and large on the real one (40 blocks x 2 x
    4680 tokens x 5120 x 4 bytes = 7.7 GB per item at 832x480), which the
    memory plan does not count: callers turn it on for the CPU only.
    """

    def __init__(self, control: torch.Tensor, *, reuse: bool = False):
        self.control = control
        self.reuse = reuse
        self.tokens: torch.Tensor | None = None  # (B, L, dim) camera tokens of the whole chunk
        self.modulations: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per block, this rank's tokens

    def input_for(self, dit: CausalDiT, rope: Rope) -> torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]]:
        """What CausalDiT.step takes: the camera tokens, or (reuse) every block's modulation of this rank's tokens."""
        if self.tokens is None:
            self.tokens = dit.embed_control(self.control.to(dit.patch_embedding.weight.device))
        if not self.reuse:
            return self.tokens
        if self.modulations is None:
            local = dit.sequence.split(self.tokens, rope, None)[0]  # this rank's share of the tokens
            self.modulations = [block.camera_modulation(local) for block in dit.blocks]
        return self.modulations


class TimeConditions:
    """Each timestep value's `time_condition`, computed once per batch size and kept for every later chunk.

    A chunk calls the DiT at the same few timesteps every time (the sampler's
    steps, then 0 for the cache update), and their condition depends on the
    timesteps and the time layers alone: three float32 linears, one of them
    reading a dim x 6 dim weight, that would otherwise run in every call.
    Entries are dropped when a time layer's weights change (in place, as
    load_state_dict does, or replaced).
    """

    def __init__(self, dit: CausalDiT):
        self.dit = dit
        self.entries: dict[tuple[int, int], torch.Tensor] = {}
        self.weights: tuple = ()

    def get(self, timestep: int, batch: int) -> torch.Tensor:
        """The (batch, 7, dim) condition of `batch` items at `timestep` (a host int: no device read)."""
        weights = tuple((id(p), p.data_ptr(), p._version) for module in (self.dit.time_embedding,
                                                                       self.dit.time_projection)
                        for p in module.parameters())
        if weights != self.weights:
            self.entries.clear()
            self.weights = weights
        key = (int(timestep), batch)
        if key not in self.entries:
            device = self.dit.patch_embedding.weight.device
            t = torch.full((batch,), int(timestep), dtype=torch.int64, device=device)
            self.entries[key] = self.dit.time_condition(t)
        return self.entries[key]
