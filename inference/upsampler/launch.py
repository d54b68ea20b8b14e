"""The upsampler child's command line and its scrubbed environment.

The child is exec'd fresh (never forked from a process that touched CUDA) and
must not see torchrun's variables: a vLLM that inherits them joins the wrong
process group or waits for a rendezvous store nobody hosts.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from inference.upsampler.config import UpsamplerConfig

# Set by torchrun / torchelastic for its workers; meaningless or harmful in the child.
TORCHRUN_VARIABLES = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
    "ROLE_NAME", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "OMP_NUM_THREADS", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
)
TORCHELASTIC_PREFIX = "TORCHELASTIC_"
# What the child always gets, whatever the parent had.
CHILD_SETTINGS = {
    # vLLM's own workers must be spawned too, never forked.
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    # Ask NVML, not a CUDA context, whether CUDA works: the check then survives forks.
    "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
    # The tokenizers thread pool deadlocks when its process forks later.
    "TOKENIZERS_PARALLELISM": "false",
}


def child_environment(parent: Mapping[str, str], config: UpsamplerConfig) -> dict[str, str]:
    """A copy of the parent's environment without torchrun's variables, plus the child's settings."""
    env = {
        name: value for name, value in parent.items()
        if name not in TORCHRUN_VARIABLES and not name.startswith(TORCHELASTIC_PREFIX)
    }
    env.update(CHILD_SETTINGS)
    if config.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = config.gpus
    return env


def child_argv(config: UpsamplerConfig, port: int) -> list[str]:
    """`vllm serve <model>` (or the configured command) with the serving flags."""
    if config.command is None:
        prefix = [vllm_executable(), "serve"]
    else:
        fields = {"{model}": config.model, "{host}": config.host, "{port}": str(port)}
        prefix = [_substitute(part, fields) for part in config.command]
    flags = [
        "--host", config.host,
        "--port", str(port),
        "--served-model-name", config.served_model_name,
        "--gpu-memory-utilization", f"{config.gpu_memory_utilization:g}",
        "--max-model-len", str(config.max_model_len),
        "--max-num-seqs", str(config.max_num_seqs),
        "--limit-mm-per-prompt", json.dumps({"image": config.images_per_prompt, "video": 0}),
    ]
    tokenizer_mode = config.resolved_tokenizer_mode()
    if tokenizer_mode is not None:
        flags += ["--tokenizer-mode", tokenizer_mode]
    return [*prefix, config.model, *flags, *config.extra_args]


def vllm_executable() -> str:
    """The `vllm` script of this interpreter's environment, even when it is not on PATH."""
    beside = Path(sys.executable).with_name("vllm")
    return str(beside) if beside.exists() else "vllm"


def pick_port(config: UpsamplerConfig) -> int:
    """The configured port, or a port the kernel reports free right now when it is 0."""
    if config.port:
        return config.port
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((config.host, 0))
        return probe.getsockname()[1]


def _substitute(part: str, fields: Mapping[str, str]) -> str:
    for placeholder, value in fields.items():
        part = part.replace(placeholder, value)
    return part
