"""Settings of the prompt upsampler and how they are read from the environment.

Environment variables read by `UpsamplerConfig.from_env` (the README table is
built from this list):

| variable | default | meaning |
|---|---|---|
| `UPSAMPLER` | `0` | `1` starts the upsampler; `0` disables it (prompts pass through) |
| `UPSAMPLER_MODEL` | `Qwen/Qwen2.5-VL-7B-Instruct` | vision-language model given to `vllm serve` |
| `UPSAMPLER_CMD` | (unset) | shell-split command used instead of `vllm serve`; the model and flags are appended, `{model}` `{host}` `{port}` are substituted |
| `UPSAMPLER_PORT` | `0` | loopback port of the child; `0` picks a free port at every start |
| `UPSAMPLER_GPUS` | (parent's) | `CUDA_VISIBLE_DEVICES` of the child, e.g. `7` for a dedicated GPU |
| `UPSAMPLER_GPU_MEMORY` | `0.25` | `--gpu-memory-utilization`: fraction of the GPU's TOTAL memory vLLM may take |
| `UPSAMPLER_MAX_MODEL_LEN` | `4096` | `--max-model-len` (tokens, image tokens included) |
| `UPSAMPLER_MAX_NUM_SEQS` | `4` | `--max-num-seqs`: requests vLLM batches at once |
| `UPSAMPLER_EXTRA_ARGS` | (unset) | shell-split extra `vllm serve` flags, e.g. `--enforce-eager` |
| `UPSAMPLER_TIMEOUT_S` | `20` | per-request timeout; on expiry the user's prompt is used |
| `UPSAMPLER_STARTUP_TIMEOUT_S` | `900` | time allowed from launch to a healthy server (downloads included) |

vLLM reserves `gpu_memory_utilization x total memory` of the GPU, counting
memory other processes already hold as used: start the upsampler before the
world model on a shared GPU, or give it its own GPU with `UPSAMPLER_GPUS`.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# Model-name fragments of VLMs that need vLLM's mistral tokenizer mode.
MISTRAL_TOKENIZER_MODELS = ("pixtral", "mistral-small-3")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(kw_only=True)
class UpsamplerConfig:
    """Everything the upsampler process, its supervision and its client need."""

    enabled: bool = False
    # Off means upsample() hands the user's prompt back untouched and nothing is launched.
    model: str = DEFAULT_MODEL
    # Hugging Face id or local path of the vision-language model vLLM serves.
    served_model_name: str = "prompt-upsampler"
    # Name the child answers to in the OpenAI API (`--served-model-name`).
    command: list[str] | None = None
    # Replaces `vllm serve`; model and flags are appended; `{model}` `{host}` `{port}` substituted.
    host: str = "127.0.0.1"
    # Loopback address the child binds to; the child has no authentication, so never public.
    port: int = 0
    # Port of the child; 0 picks a free one at every (re)start.
    gpus: str | None = None
    # CUDA_VISIBLE_DEVICES of the child; None keeps the parent's value.
    gpu_memory_utilization: float = 0.25
    # Fraction of the GPU's total memory vLLM reserves (weights + KV cache + activations).
    max_model_len: int = 4096
    # Context length in tokens; a 1024-pixel image costs roughly 1,300 of them.
    max_num_seqs: int = 4
    # Requests vLLM runs at once; small keeps the KV reservation small.
    images_per_prompt: int = 1
    # `--limit-mm-per-prompt` image count (videos are set to 0).
    tokenizer_mode: str | None = None
    # `--tokenizer-mode`; None picks `mistral` for Pixtral-class models, else vLLM's default.
    extra_args: list[str] = field(default_factory=list)
    # Further `vllm serve` flags, appended last.
    request_timeout_s: float = 20.0
    # Per-request limit; on expiry the user's prompt is used and the breaker counts a failure.
    startup_timeout_s: float = 900.0
    # Launch-to-healthy limit (a first run downloads the weights); then the child is restarted.
    health_interval_s: float = 2.0
    # Pause between health probes of a ready child.
    health_timeout_s: float = 5.0
    # Limit of one health probe.
    health_failures_to_restart: int = 3
    # Consecutive failed probes after which a ready child counts as hung and is restarted.
    restart_backoff_s: float = 2.0
    # First pause before a restart; doubles after each failed start.
    restart_backoff_max_s: float = 120.0
    # Longest pause between restarts.
    breaker_failures: int = 3
    # Consecutive failed requests that open the circuit breaker.
    breaker_cooldown_s: float = 60.0
    # While open, requests fall back at once; afterwards one trial request is let through.
    stop_grace_s: float = 10.0
    # Time between SIGTERM and SIGKILL of the child's process group.
    max_pending: int = 16
    # Requests in flight at most; beyond it a request falls back at once ("busy").
    cache_size: int = 256
    # Entries of the LRU cache of rewrites; 0 disables caching.
    temperature: float = 0.2
    # Sampling temperature of the rewrite.
    max_tokens: int = 220
    # Token limit of the rewrite (about 100 words plus slack).
    seed: int = 0
    # Sampling seed, so one prompt and image give one rewrite.
    word_cap: int = 120
    # Rewrites are cut to this many words.
    image_max_side: int = 1024
    # Longer images are downscaled before upload, keeping image tokens within max_model_len.
    log_dir: Path | None = None
    # Folder of `upsampler.log` and `upsampler.pid`; None uses a folder under the system temp dir.

    def __post_init__(self) -> None:
        if self.log_dir is not None:
            self.log_dir = Path(self.log_dir)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization={self.gpu_memory_utilization!r}: expected a fraction in (0, 1]"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port!r}: expected 0..65535 (0 = pick a free port)")
        if not _is_loopback(self.host):
            raise ValueError(f"host={self.host!r}: expected a loopback address such as 127.0.0.1")
        if self.command is not None and not self.command:
            raise ValueError("command=[]: expected None (use `vllm serve`) or a non-empty argv list")
        for name in ("max_model_len", "max_num_seqs", "images_per_prompt", "breaker_failures",
                     "health_failures_to_restart", "max_pending", "max_tokens", "word_cap",
                     "image_max_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 1")
        for name in ("request_timeout_s", "startup_timeout_s", "health_interval_s",
                     "health_timeout_s", "restart_backoff_s", "restart_backoff_max_s",
                     "breaker_cooldown_s", "stop_grace_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected seconds > 0")
        if self.cache_size < 0:
            raise ValueError(f"cache_size={self.cache_size!r}: expected >= 0 (0 disables the cache)")

    def resolved_tokenizer_mode(self) -> str | None:
        """The `--tokenizer-mode` to pass, or None to leave vLLM's default."""
        if self.tokenizer_mode is not None:
            return self.tokenizer_mode
        lowered = self.model.lower()
        if any(fragment in lowered for fragment in MISTRAL_TOKENIZER_MODELS):
            return "mistral"
        return None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ,
                 run_dir: Path | None = None) -> UpsamplerConfig:
        """Read the UPSAMPLER_* variables listed in this module's docstring."""
        try:
            return cls(**_settings_from_env(environ, run_dir))
        except ValueError as exc:
            raise ValueError(f"{exc} (check the UPSAMPLER_* environment variables)") from None


def _settings_from_env(environ: Mapping[str, str], run_dir: Path | None) -> dict:
    return dict(
        enabled=_flag(environ, "UPSAMPLER", default=False),
        model=environ.get("UPSAMPLER_MODEL", "").strip() or DEFAULT_MODEL,
        command=_argv(environ, "UPSAMPLER_CMD") or None,
        port=_number(environ, "UPSAMPLER_PORT", int, 0),
        gpus=environ.get("UPSAMPLER_GPUS", "").strip() or None,
        gpu_memory_utilization=_number(environ, "UPSAMPLER_GPU_MEMORY", float, 0.25),
        max_model_len=_number(environ, "UPSAMPLER_MAX_MODEL_LEN", int, 4096),
        max_num_seqs=_number(environ, "UPSAMPLER_MAX_NUM_SEQS", int, 4),
        extra_args=_argv(environ, "UPSAMPLER_EXTRA_ARGS"),
        request_timeout_s=_number(environ, "UPSAMPLER_TIMEOUT_S", float, 20.0),
        startup_timeout_s=_number(environ, "UPSAMPLER_STARTUP_TIMEOUT_S", float, 900.0),
        log_dir=run_dir,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r}: expected 0 or 1")


def _number(environ: Mapping[str, str], name: str, kind: type, default: float | int):
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"{name}={raw!r}: expected {expected}") from None


def _argv(environ: Mapping[str, str], name: str) -> list[str]:
    raw = environ.get(name, "")
    try:
        return shlex.split(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r}: expected a shell-quoted command line ({exc})") from None
