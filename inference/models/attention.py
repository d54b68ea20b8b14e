"""The one attention function of the DiT: FlashAttention 3 or 2 on a GPU, else SDPA; on the CPU matmul-softmax-matmul.

The DiT's attention is short and wide: a chunk of a few hundred queries
against a window of a few hundred cached keys (or the text's). For those
shapes on the CPU, two batched matmuls and a softmax run about twice as
fast as SDPA's CPU flash kernel (bench/dit_efficiency.py prints both), so
CPU tensors take the direct path. Its scores are float32 whatever the input
dtype: bfloat16 scores lose the softmax's precision where attention is peaky
(4-10x the error of SDPA), float32 ones match it. bfloat16 q and k reach
float32 scores at the bfloat16 rate, and their softmax in the same pass,
through our kernel (`cpu_kernels`) where the CPU has AVX512-BF16.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from inference.models import cpu_kernels

_import_errors: dict[str, str] = {}  # why a flash build is unusable (missing, or built against another torch)

try:  # FlashAttention 3 (Hopper build)
    import flash_attn_interface as _fa3
except Exception as exc:  # noqa: BLE001 - a missing or broken build means "not available"
    _fa3, _import_errors["fa3"] = None, f"{type(exc).__name__}: {exc}"

try:  # FlashAttention 2
    import flash_attn as _fa2
except Exception as exc:  # noqa: BLE001
    _fa2, _import_errors["fa2"] = None, f"{type(exc).__name__}: {exc}"

FLASH_DTYPES = (torch.float16, torch.bfloat16)
FA2_MAX_HEAD_DIM = 256
FA3_CAPABILITY = (9, 0)  # FlashAttention 3 kernels are built for sm_90 (Hopper) only
FA3_HEAD_DIMS = (64, 128, 256)  # compiled by every FA3 release (some add others); the DiT's is 128


@functools.lru_cache(maxsize=None)
def _compute_capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def attention_backend(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None) -> str:
    """Which kernel `attention` will use for these inputs: 'fa3', 'fa2', 'sdpa' or 'direct' (CPU)."""
    if q.device.type == "cpu":
        return "direct"
    flash_ok = (q.is_cuda and key_mask is None and q.dtype in FLASH_DTYPES and k.dtype == q.dtype
                and q.shape[-1] <= FA2_MAX_HEAD_DIM and q.shape[-1] % 8 == 0)
    if not flash_ok:
        return "sdpa"
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    if _fa3 is not None and _compute_capability(index) == FA3_CAPABILITY and q.shape[-1] in FA3_HEAD_DIMS:
        return "fa3"
    if _fa2 is not None and _compute_capability(index)[0] >= 8:
        return "fa2"
    return "sdpa"


def backend_report(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The backend the DiT gets on this device/dtype, with the reason when a GPU falls back to SDPA; on the CPU
    in bfloat16, how the scores are multiplied (`cpu_kernels.status`)."""
    if device.type == "cpu":
        return f"direct (bf16: {cpu_kernels.status()})" if dtype == torch.bfloat16 else "direct"
    if device.type != "cuda":
        return "sdpa"
    probe = torch.empty(1, 1, 1, head_dim, device=device, dtype=dtype)
    backend = attention_backend(probe, probe)
    if backend != "sdpa":
        return backend
    major, minor = _compute_capability(probe.device.index)
    why = [f"{name} unavailable ({err})" for name, err in _import_errors.items()]
    if dtype not in FLASH_DTYPES:
        why.append(f"dtype {str(dtype).removeprefix('torch.')} is not fp16/bf16")
    if head_dim % 8 or head_dim > FA2_MAX_HEAD_DIM:
        why.append(f"head_dim {head_dim} is not a multiple of 8 up to {FA2_MAX_HEAD_DIM}")
    return f"sdpa ({'; '.join(why) or f'no flash kernel for sm_{major}{minor}'})"


def takes_key_bias(device: torch.device) -> bool:
    """Whether attention on `device` adds a float key bias for free (the direct path): text K/V may be compressed."""
    return device.type == "cpu"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax(q k^T / sqrt(head_dim) + bias) v, no causal mask.

    q (B, Lq, heads, head_dim), k and v (B, Lk, heads, head_dim); key_mask
    (B, Lk): bool, True where a key may be attended, or float32, a bias added
    to each key's scores (0 attended, -inf hidden, log(n) for a key standing
    for n equal ones). Only SDPA and the direct path take it.
    Returns (B, Lq, heads, head_dim) in q's dtype.
    """
    backend = attention_backend(q, k, key_mask)
    if backend == "direct":
        return direct_attention(q, k, v, key_mask)
    if backend == "fa3":
        out = _fa3.flash_attn_func(q, k, v, causal=False)
        # Some FA3 releases return (out, softmax_lse).
        return out[0] if isinstance(out, tuple) else out
    if backend == "fa2":
        return _fa2.flash_attn_func(q, k, v, causal=False)
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Lk)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype), attn_mask=mask)
    return out.transpose(1, 2).to(q.dtype)  # (B, Lq, heads, head_dim)


SCORE_BLOCK_BYTES = 4 << 20  # float32 scores of one direct-attention block (the issue-14 chunk, 8 x 180 x 600, fits)


def direct_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Two batched matmuls around a float32 softmax: q k^T in float32, p v in q's dtype. Layouts as `attention`.

    The scores are materialised, so eagerly they are computed a block of
    heads at a time, SCORE_BLOCK_BYTES each (a large model's chunk would
    otherwise hold heads x queries x keys floats at once; the memory plan
    counts activations per token, as flash kernels need). A compiled step
    takes one block (its key count may be a dynamic size).
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bias = None if key_mask is None else key_bias(key_mask)  # (B, Lk) float32
    per_head = lq * lk * 4
    if torch.compiler.is_compiling() or b * h * per_head <= SCORE_BLOCK_BYTES:
        return attention_block(q, k, v, bias)
    heads = max(1, SCORE_BLOCK_BYTES // per_head)
    out = q.new_empty(b, lq, h, d)
    for i in range(b):
        item_bias = None if bias is None else bias[i:i + 1]
        for j in range(0, h, heads):
            part = slice(j, j + heads)
            out[i:i + 1, :, part] = attention_block(q[i:i + 1, :, part], k[i:i + 1, :, part], v[i:i + 1, :, part],
                                                    item_bias)
    return out


def direct_attention_bytes(batch: int, heads: int, queries: int, keys: int, head_dim: int) -> int:
    """Transient bytes one `direct_attention` call adds at a forward's peak: its largest block's float32 scores
    and the head-first float32 copies of q and k they are made from. (Measured: the later softmax phase holds
    the scores and the probabilities but meets fewer activations, so the scores' phase sets a forward's peak.)
    The bfloat16 kernel (`cpu_kernels`) allocates less, its bfloat16 probabilities and packed keys: this figure
    is an upper bound there."""
    per_head = queries * keys * 4
    block = batch * heads if batch * heads * per_head <= SCORE_BLOCK_BYTES else min(heads, max(
        1, SCORE_BLOCK_BYTES // per_head))
    return block * (per_head + head_dim * 4 * (queries + keys))


def attention_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`direct_attention` of one block in one piece; bias (B, Lk) float32 or None."""
    b, lq, h, d = q.shape
    if cpu_kernels.usable(q, k):  # bfloat16 on an AVX512-BF16 CPU: scores and softmax in one pass
        probs = cpu_kernels.bf16_probs(q, k, bias, d ** -0.5)
    else:
        probs = torch.softmax(scores_of(q, k, bias), dim=-1).to(q.dtype)
    vh = heads_first(v, q.dtype)  # (B*H, Lk, D)
    return torch.bmm(probs, vh).view(b, h, lq, d).transpose(1, 2)  # (B, Lq, H, D)


def scores_of(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """float32 scores q k^T / sqrt(head_dim) + bias (B*H, Lq, Lk) of q (B, Lq, H, D) and k (B, Lk, H, D): q and k
    converted to float32 and multiplied there (the bfloat16 kernel forms the same exact products)."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    qh, kh = heads_first(q, torch.float32), heads_first(k, torch.float32)  # (B*H, Lq or Lk, D)
    if bias is None:
        bias, beta = qh.new_empty(b * h, lq, lk), 0.0  # beta 0: the product alone
    else:
        bias, beta = bias.repeat_interleave(h, dim=0)[:, None, :], 1.0  # (B*H, 1, Lk)
    return torch.baddbmm(bias, qh, kh.transpose(1, 2), beta=beta, alpha=d ** -0.5)


def heads_first(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, H, D) -> a contiguous (B*H, L, D) copy in `dtype` (one pass, the layout batched matmuls read)."""
    b, length, h, d = x.shape
    out = torch.empty(b, h, length, d, dtype=dtype, device=x.device)
    out.copy_(x.transpose(1, 2))
    return out.view(b * h, length, d)


def key_bias(key_mask: torch.Tensor) -> torch.Tensor:
    """A (B, Lk) key mask as a float32 score bias: bool True -> 0, False -> -inf; a float one as it is."""
    if key_mask.is_floating_point():
        return key_mask.float()
    return torch.zeros(key_mask.shape, dtype=torch.float32, device=key_mask.device).masked_fill_(
        ~key_mask, float("-inf"))
