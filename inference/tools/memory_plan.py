"""Per-rank GPU memory of a LingBot-World-Fast deployment, and how many sessions of a size fit.

    python -m inference.tools.memory_plan --gpus 1 --gpu-mem 80 --size 832*480 [--weights fp8] [--t5-device cpu]
    python -m inference.tools.memory_plan --gpus 8 --gpu-mem 80 --dit-fsdp --t5-fsdp --size 1280*720
    python -m inference.tools.memory_plan --readme     # the README's "what fits where" table

Sizes are GiB (2^30 bytes; nvidia-smi's MiB / 1024). Everything is computed
from the model configs (`DiTConfig.a14b_fast()`, umT5-XXL, Wan2.1 VAE) and
the layout; the VAE caches are the exact tensor shapes of a streaming
encode/decode run on the meta device. Activation peaks per token / per
pixel are measured on this code (`inference/tools/memory_probe.py`, see
ACTIVATION_BYTES_PER_TOKEN); `bench/gpu_check.py` compares the plan with
the CUDA allocator's measured peak.

A session holds, on every rank: its self-attention KV window (its share of
heads under Ulysses), its prompt's cross-attention K/V (all heads), the
causal VAE encoder cache of its condition (until the condition reaches its
steady state) and, on rank 0 only, the VAE decoder cache. A step adds a
transient: the DiT activations of the batch, one layer's eviction shift,
the gathered FSDP2 blocks, the attention score block where attention runs
the direct path (the CPU), and (one session at a time) VAE decode/encode.
"""

from __future__ import annotations

import argparse
import functools
import math
from dataclasses import dataclass, field

import torch

from inference.models.attention import direct_attention_bytes
from inference.models.config import DiTConfig
from inference.models.t5 import T5Config
from inference.models.vae import SPACE_STRIDE, VAEConfig

GIB = 2**30
CHUNK_LATENTS = 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Peak live bytes per query token of one DiT forward, per unit of width (measured with memory_probe on this
# code, CPU, 1-layer models of head_dim 128; the residual stream is float32 whatever the weights):
# attention phase a*dim, FFN phase b*dim + c*ffn_dim, keyed by the activation dtype's bytes.
ACTIVATION_BYTES_PER_TOKEN = {2: (42.2, 25.5, 4.0), 4: (45.2, 29.2, 8.0)}
# The camera embedding before the blocks: bytes per control value (control_channels x patch volume) of its
# patchified copy and casts, keyed likewise; it is the peak only for narrow models (dim well under 512).
EMBED_BYTES_PER_CONTROL_VALUE = {2: 6.5, 4: 4.0}
# Peak live bytes per output pixel of one streaming VAE call on a steady chunk (decode 3 latents -> 12 frames,
# encode 12 frames), measured with memory_probe on CPU: an upper bound of cuDNN's, keyed by VAE dtype bytes.
VAE_DECODE_BYTES_PER_PIXEL = {2: 9_900, 4: 20_100}
VAE_ENCODE_BYTES_PER_PIXEL = {2: 8_300, 4: 19_500}
CUDA_CONTEXT_GIB = 0.75  # CUDA context, cuBLAS/cuDNN workspaces: outside PyTorch's allocator
NCCL_GIB = 0.75  # NCCL communicator buffers when the group spans several GPUs
FRAGMENTATION = 0.03  # share of the GPU the caching allocator loses to fragmentation


@dataclass(kw_only=True)
class Deployment:
    """What runs where: GPUs, their memory, the parallel layout and the dtypes."""

    gpus: int = 1
    """Ranks of the engine group (one GPU each)."""
    gpu_mem_gib: float = 80.0
    """Memory of each GPU, GiB."""
    ulysses: int | None = None
    """Ranks splitting each chunk's tokens (None: all of them)."""
    dit_fsdp: bool = False
    """DiT weights sharded over all ranks (FSDP2, one block gathered at a time)."""
    t5_fsdp: bool = False
    """umT5 weights sharded over all ranks."""
    t5_device: str = "cuda"
    """'cuda' or 'cpu' (the text encoder lives in host memory: no GPU bytes, slower prompt changes)."""
    weights: str = "bf16"
    """DiT weights: 'bf16' or 'fp8' (block linears as float8 e4m3, per-output-channel scales)."""
    dtype: str = "bfloat16"
    """Activations, KV caches, umT5 and non-fp8 DiT weights."""
    vae_dtype: str = "float32"
    """VAE weights and activations."""
    window: int = 12
    """KV window, latent frames (sink included)."""
    sink: int = 3
    """Latent frames pinned in the window."""
    max_batch: int = 8
    """Largest same-size batch the engine may run (its activations must fit)."""
    direct_attention: bool = False
    """Attention materialises its scores a block at a time (the CPU's direct path) instead of a flash kernel."""

    def __post_init__(self) -> None:
        self.ulysses = self.gpus if self.ulysses is None else self.ulysses
        if self.gpus < 1 or self.ulysses < 1 or self.gpus % self.ulysses:
            raise ValueError(f"gpus {self.gpus} / ulysses {self.ulysses}: ulysses must divide the GPU count")
        if self.weights not in ("bf16", "fp8"):
            raise ValueError(f"weights {self.weights!r}: expected 'bf16' or 'fp8'")
        if self.t5_device not in ("cuda", "cpu"):
            raise ValueError(f"t5_device {self.t5_device!r}: expected 'cuda' or 'cpu'")
        if self.t5_device == "cpu" and self.t5_fsdp:
            raise ValueError("t5_fsdp shards the text encoder over GPUs; it cannot also live on the CPU")
        if self.weights == "fp8" and self.dit_fsdp:
            raise ValueError("fp8 DiT weights are not sharded with FSDP2; use one of them")
        for name in ("dtype", "vae_dtype"):
            if getattr(self, name) not in DTYPE_BYTES:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {sorted(DTYPE_BYTES)}")

    def describe(self) -> str:
        parts = [f"{self.gpus}x{self.gpu_mem_gib:g} GiB"]
        if self.gpus > 1:
            parts.append(f"Ulysses {self.ulysses}")
        parts += [n for n, on in (("DiT FSDP2", self.dit_fsdp), ("T5 FSDP2", self.t5_fsdp)) if on]
        parts.append(f"DiT {self.weights}")
        if self.t5_device == "cpu":
            parts.append("T5 on CPU")
        parts.append(f"VAE {self.vae_dtype}")
        if (self.window, self.sink) != (12, 3):
            parts.append(f"KV window {self.window}/sink {self.sink}")
        return ", ".join(parts)


@dataclass(kw_only=True)
class ModelShapes:
    """The three networks' configs (default: the released model)."""

    dit: DiTConfig = field(default_factory=DiTConfig.a14b_fast)
    t5: T5Config = field(default_factory=T5Config.umt5_xxl)
    vae: VAEConfig = field(default_factory=VAEConfig.wan21)


def parse_size(size: str) -> tuple[int, int]:
    """'832*480' -> (832, 480); W and H multiples of 16."""
    w, _, h = size.partition("*")
    if not (w.isdigit() and h.isdigit()) or int(w) % 16 or int(h) % 16:
        raise ValueError(f"size {size!r}: expected 'W*H' with W and H multiples of 16")
    return int(w), int(h)


def by_repr(fn):
    """Memoise a function of (unhashable) config dataclasses and plain values by their repr."""
    memo: dict[str, object] = {}

    @functools.wraps(fn)
    def wrapper(*args):
        key = repr(args)
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]
    return wrapper


@by_repr
def dit_parameter_split(config: DiTConfig) -> tuple[int, int, int, int, int]:
    """(fp8-able linear weight elements, their output channels, other elements, float32-island elements,
    elements of one block)."""
    from inference.models.dit import FLOAT32_MODULES, CausalDiT

    with torch.device("meta"):
        model = CausalDiT(config)
    linear = channels = other = island = 0
    for name, p in model.named_parameters():
        if is_fp8_weight(name, p):
            linear += p.numel()
            channels += p.shape[0]
        elif name.split(".", 1)[0] in FLOAT32_MODULES:  # kept float32 whatever the weights' dtype
            island += p.numel()
        else:
            other += p.numel()
    block = sum(p.numel() for p in model.blocks[0].parameters())
    return linear, channels, other, island, block


def is_fp8_weight(name: str, p: torch.Tensor) -> bool:
    """Which DiT parameters `--weights fp8` stores as float8: the 2-D weights of the blocks' linears."""
    return name.startswith("blocks.") and name.endswith(".weight") and p.ndim == 2


@by_repr
def t5_parameters(config: T5Config) -> tuple[int, int]:
    """(all elements, elements of one block) of the text encoder."""
    from inference.models.t5 import T5Encoder

    with torch.device("meta"):
        model = T5Encoder(config)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.blocks[0].parameters())


@by_repr
def vae_parameters(config: VAEConfig) -> int:
    from inference.models.vae import WanVAE

    with torch.device("meta"):
        return sum(p.numel() for p in WanVAE(config).parameters())


@by_repr
def vae_cache_bytes(config: VAEConfig, width: int, height: int, dtype_bytes: int) -> tuple[int, int]:
    """(decoder, encoder) causal cache bytes of one session in steady state: the exact shapes, on meta."""
    from inference.models.vae import StreamingDecoder, StreamingEncoder, WanVAE

    dtype = torch.float32 if dtype_bytes == 4 else torch.bfloat16
    with torch.device("meta"):
        vae = WanVAE(config).to(dtype)
    decoder, encoder = StreamingDecoder(vae), StreamingEncoder(vae)
    h, w = height // SPACE_STRIDE, width // SPACE_STRIDE
    with torch.no_grad():
        for first in (True, False):
            decoder.decode_chunk(torch.empty(1, config.z_dim, CHUNK_LATENTS, h, w, device="meta"))
            frames = 4 * CHUNK_LATENTS - (3 if first else 0)
            encoder.encode_chunk(torch.empty(1, 3, frames, height, width, device="meta"))

    def held(cache) -> int:
        return sum(s.numel() * s.element_size() for s in cache.slots if isinstance(s, torch.Tensor))

    return held(decoder.cache), held(encoder.cache)


class MemoryPlan:
    """Bytes per rank of one deployment: weights, per session, per step transient; sessions that fit."""

    def __init__(self, deployment: Deployment, shapes: ModelShapes | None = None):
        self.d = deployment
        self.shapes = shapes or ModelShapes()
        self.bytes = DTYPE_BYTES[deployment.dtype]
        self.vae_bytes = DTYPE_BYTES[deployment.vae_dtype]

    # -- pieces --------------------------------------------------------------

    def weights(self, rank: int = 0) -> dict[str, int]:
        """Resident weight bytes on one rank (FSDP2 shards divided by the world)."""
        d, p = self.d, self.bytes
        linear, channels, other, island, _ = dit_parameter_split(self.shapes.dit)
        dit = (linear + 4 * channels if d.weights == "fp8" else linear * p) + other * p + island * 4
        t5_all, _ = t5_parameters(self.shapes.t5)
        t5 = 0 if d.t5_device == "cpu" else t5_all * p
        return {"DiT weights": dit // (d.gpus if d.dit_fsdp else 1),
                "umT5 weights": t5 // (d.gpus if d.t5_fsdp else 1),
                "VAE weights": vae_parameters(self.shapes.vae) * self.vae_bytes}

    def tokens_per_frame(self, width: int, height: int) -> int:
        _, ph, pw = self.shapes.dit.patch_size
        return (height // SPACE_STRIDE // ph) * (width // SPACE_STRIDE // pw)

    def session(self, width: int, height: int, rank: int = 0) -> dict[str, int]:
        """Bytes one open session of this size holds on a rank."""
        c, d, p = self.shapes.dit, self.d, self.bytes
        local_width = c.dim // d.ulysses  # this rank's share of heads x head_dim
        self_kv = 2 * c.num_layers * d.window * self.tokens_per_frame(width, height) * local_width * p
        text_kv = 2 * c.num_layers * c.text_len * c.dim * p
        decoder, encoder = vae_cache_bytes(self.shapes.vae, width, height, self.vae_bytes)
        return {"self-attention KV": self_kv, "prompt K/V": text_kv,
                "VAE decoder cache": decoder if rank == 0 else 0,
                "VAE encoder cache (until steady)": encoder}

    def step(self, width: int, height: int, batch: int, rank: int = 0) -> dict[str, int]:
        """Transient bytes of one step of `batch` sessions of this size (freed when it ends)."""
        c, d, p = self.shapes.dit, self.d, self.bytes
        tokens = batch * CHUNK_LATENTS * self.tokens_per_frame(width, height)
        local_tokens = math.ceil(tokens / d.ulysses)
        a, b, f = ACTIVATION_BYTES_PER_TOKEN[p]
        embed = EMBED_BYTES_PER_CONTROL_VALUE[p] * c.control_channels * c.patch_volume + 3 * p * c.dim
        per_token = max(a * c.dim + 512, b * c.dim + f * c.ffn_dim, embed)
        if d.ulysses > 1:  # all-to-all send/receive copies of q, k, v and the output
            per_token += 8 * p * c.dim
        window_tokens = d.window * self.tokens_per_frame(width, height)
        gather = 2 * batch * window_tokens * (c.dim // d.ulysses) * p if batch > 1 else 0  # rows read by index
        kept = (d.window - d.sink - CHUNK_LATENTS) * self.tokens_per_frame(width, height)
        out = {"DiT activations": int(local_tokens * per_token) + gather,
               "KV eviction (one layer)": kept * (c.dim // d.ulysses) * p}
        if d.direct_attention:  # on top of the attention phase's activations (measured with flash kernels)
            heads = c.num_heads // d.ulysses
            out["attention scores (direct path)"] = direct_attention_bytes(
                batch, heads, tokens // batch, window_tokens, c.head_dim)
        if d.dit_fsdp and d.gpus > 1:  # the running block and the prefetched next one, unsharded
            out["FSDP2 gathered blocks"] = 2 * dit_parameter_split(self.shapes.dit)[4] * p
        if d.weights == "fp8":  # weight-only path: one linear's weight dequantized at a time (cast, then scaled)
            out["fp8 dequantized weight"] = 2 * c.dim * c.ffn_dim * p
        pixels = width * height
        decode = VAE_DECODE_BYTES_PER_PIXEL[self.vae_bytes] * pixels if rank == 0 else 0
        encode = VAE_ENCODE_BYTES_PER_PIXEL[self.vae_bytes] * pixels
        out["VAE decode or encode (one session)"] = max(decode, encode)
        return out

    def text_encode(self) -> int:
        """Transient of encoding one prompt (at session open; not during a step)."""
        t = self.shapes.t5
        if self.d.t5_device == "cpu":
            return 0
        _, block = t5_parameters(t)
        gathered = 2 * block * self.bytes if self.d.t5_fsdp and self.d.gpus > 1 else 0
        scores = 3 * t.num_heads * t.text_len ** 2 * 4  # float32 scores, softmax, cast
        return gathered + scores + t.text_len * (6 * t.dim_ffn * self.bytes + 12 * t.dim * 4)

    def reserve(self) -> int:
        """Bytes of the GPU the allocator cannot use: CUDA context, NCCL, fragmentation."""
        gib = CUDA_CONTEXT_GIB + (NCCL_GIB if self.d.gpus > 1 else 0) + FRAGMENTATION * self.d.gpu_mem_gib
        return int(gib * GIB)

    # -- totals --------------------------------------------------------------

    def peak(self, sessions_by_size: dict[tuple[int, int], int], rank: int = 0) -> int:
        """Planned peak bytes of a rank holding these sessions (its largest step transient included)."""
        total = sum(self.weights(rank).values())
        transient = self.text_encode()
        for (w, h), n in sessions_by_size.items():
            if n:
                total += n * sum(self.session(w, h, rank).values())
                transient = max(transient, sum(self.step(w, h, min(n, self.d.max_batch), rank).values()))
        return total + transient

    def usable(self) -> int:
        return int(self.d.gpu_mem_gib * GIB) - self.reserve()

    def sessions_that_fit(self, width: int, height: int, limit: int = 64) -> int:
        """How many sessions of this size fit on every rank at once (0: not even one)."""
        ranks = (0, 1) if self.d.gpus > 1 else (0,)
        n = 0
        while n < limit and all(self.peak({(width, height): n + 1}, r) <= self.usable() for r in ranks):
            n += 1
        return n


def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def rank_table(plan: MemoryPlan, width: int, height: int) -> str:
    """Markdown table: every component on rank 0 (and the other ranks), with one session and the totals."""
    ranks = (0, 1) if plan.d.gpus > 1 else (0,)
    heads = ["rank 0"] + (["ranks 1.." + str(plan.d.gpus - 1)] if plan.d.gpus > 1 else [])
    rows: list[tuple[str, list[int]]] = []
    for group in (lambda r: plan.weights(r), lambda r: plan.session(width, height, r),
                  lambda r: plan.step(width, height, 1, r)):
        parts = [group(r) for r in ranks]
        rows += [(name, [p.get(name, 0) for p in parts]) for name in parts[0]]
    rows.append(("prompt encode (at open, not during a step)", [plan.text_encode()] * len(ranks)))
    rows.append(("reserve (CUDA context, NCCL, fragmentation)", [plan.reserve()] * len(ranks)))
    peak = [plan.peak({(width, height): 1}, r) + plan.reserve() for r in ranks]
    lines = [f"{plan.d.describe()}, {width}*{height}, window {plan.d.window}/sink {plan.d.sink} (GiB)", "",
             "| component | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    lines += [f"| {name} | " + " | ".join(gib(v) for v in values) + " |" for name, values in rows]
    lines.append("| **peak with one session** | " + " | ".join(f"**{gib(v)}**" for v in peak) + " |")
    lines.append("| GPU memory | " + " | ".join(f"{plan.d.gpu_mem_gib:.2f}" for _ in ranks) + " |")
    per_session = [sum(plan.session(width, height, r).values()) for r in ranks]
    lines.append("| each further session | " + " | ".join(gib(v) for v in per_session) + " |")
    lines += ["", f"sessions of {width}*{height} that fit: {plan.sessions_that_fit(width, height)}"]
    return "\n".join(lines)


README_DEPLOYMENTS = (
    Deployment(gpus=1, gpu_mem_gib=80),
    Deployment(gpus=1, gpu_mem_gib=80, t5_device="cpu"),
    Deployment(gpus=1, gpu_mem_gib=141),
    Deployment(gpus=2, gpu_mem_gib=80, dit_fsdp=True, t5_fsdp=True),
    Deployment(gpus=4, gpu_mem_gib=80, dit_fsdp=True, t5_fsdp=True),
    Deployment(gpus=8, gpu_mem_gib=80, dit_fsdp=True, t5_fsdp=True),
    Deployment(gpus=1, gpu_mem_gib=48, weights="fp8", t5_device="cpu"),
    Deployment(gpus=1, gpu_mem_gib=48, weights="fp8", t5_device="cpu", window=9),
    Deployment(gpus=1, gpu_mem_gib=80, weights="fp8", t5_device="cpu"),
)
README_SIZES = ((832, 480), (1280, 720))


def readme_table() -> str:
    """The README's 'what fits where' table (regenerate with --readme; a test keeps the README equal)."""
    heads = ["GPUs", "layout", "weights per rank", "per 832*480 session (rank 0)"]
    heads += [f"{w}*{h} sessions" for w, h in README_SIZES]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for d in README_DEPLOYMENTS:
        plan = MemoryPlan(d)
        layout = d.describe().split(", ", 1)[1]
        weights = sum(plan.weights(0).values())
        session = sum(plan.session(832, 480, 0).values())
        fits = [str(plan.sessions_that_fit(w, h)) for w, h in README_SIZES]
        lines.append(f"| {d.gpus} x {d.gpu_mem_gib:g} GiB | {layout} | {gib(weights)} GiB | {gib(session)} GiB | "
                     + " | ".join(fits) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.tools.memory_plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU")
    ap.add_argument("--size", default="832*480", help="W*H")
    ap.add_argument("--weights", choices=["bf16", "fp8"], default="bf16")
    ap.add_argument("--ulysses", type=int, default=None, help="default: all GPUs")
    ap.add_argument("--dit-fsdp", action="store_true")
    ap.add_argument("--t5-fsdp", action="store_true")
    ap.add_argument("--t5-device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--vae-dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--sink", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--readme", action="store_true", help="print the README's table of standard deployments")
    args = ap.parse_args(argv)
    if args.readme:
        print(readme_table())
        return 0
    try:
        width, height = parse_size(args.size)
        deployment = Deployment(gpus=args.gpus, gpu_mem_gib=args.gpu_mem, ulysses=args.ulysses,
                                dit_fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp, t5_device=args.t5_device,
                                weights=args.weights, vae_dtype=args.vae_dtype, window=args.window, sink=args.sink,
                                max_batch=args.max_batch)
    except ValueError as exc:
        ap.error(str(exc))
    print(rank_table(MemoryPlan(deployment), width, height))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
