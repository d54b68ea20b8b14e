"""The LingBot checkpoint folder: file names, optional tiny-model sidecars, and loading DiT, VAE and text encoder.

Real downloads (MODEL.md "Checkpoint layout users download") carry no VAE or
umT5 config, and no engine settings. Tiny random checkpoints written by
`python -m inference.tools.make_tiny_checkpoint` add three sidecar json files
that a real download lacks; each one, when absent, means "the real model":

- `Wan2.1_VAE.config.json` next to `Wan2.1_VAE.pth`: the VAE shape, in the
  fixture's `vae_config.json` format (absent: the real Wan2.1 VAE);
- `models_t5_umt5-xxl-enc-bf16.config.json` next to the umT5 weights: the
  encoder shape, in the fixture's `t5_config.json` format (absent: umT5-XXL);
- `lingbot_engine.json` in the checkpoint root: `{"sizes": [...],
  "default_size": "W*H"}` (absent: LINGBOT_SIZES, default 832*480).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.engine.base import LINGBOT_SIZES
from inference.models.checkpoint import CheckpointError, load_dit_checkpoint
from inference.models.config import DiTConfig
from inference.models.dit import CausalDiT
from inference.models.fp8 import quantize_blocks
from inference.models.t5 import T5_CHECKPOINT_FILE, T5_TOKENIZER_DIR, T5Config, TextEncoder
from inference.models.vae import VAEConfig, WanVAE, load_vae
from inference.models.weights import download_command

DIT_DIR = "lingbot_world_fast"
VAE_FILE = "Wan2.1_VAE.pth"
VAE_SIDECAR = "Wan2.1_VAE.config.json"
T5_SIDECAR = "models_t5_umt5-xxl-enc-bf16.config.json"
ENGINE_SIDECAR = "lingbot_engine.json"
DEFAULT_SIZE = "832*480"
DIT_DOWNLOAD = "huggingface-cli download robbyant/lingbot-world-fast --local-dir {}"


class ModelFolderError(FileNotFoundError):
    """The checkpoint folder is missing a file or holds one that cannot be used."""


@dataclass(kw_only=True)
class SizePolicy:
    """Which W*H sizes sessions may ask for, and the default."""

    sizes: list[str]
    """Allowed sizes, 'W*H'."""
    default_size: str
    """Size of warm-up and of /test-frame requests for an invalid size."""


@dataclass(kw_only=True)
class LingbotModels:
    """Everything loaded from one checkpoint folder."""

    dit: CausalDiT
    vae: WanVAE
    text: TextEncoder
    sizes: SizePolicy


def missing(path: Path, what: str, command: str) -> ModelFolderError:
    return ModelFolderError(f"{what} {path} not found: the checkpoint folder is incomplete. "
                            f"Download it with: {command}")


def check_folder(model_dir: Path) -> None:
    """Raise naming the first missing piece of the layout and the command that downloads it."""
    if not model_dir.is_dir():
        raise missing(model_dir, "checkpoint folder", download_command(model_dir))
    dit_dir = model_dir / DIT_DIR
    if not (dit_dir / "config.json").is_file():
        raise missing(dit_dir / "config.json", "DiT config", DIT_DOWNLOAD.format(dit_dir))
    for name, what in ((VAE_FILE, "VAE weights"), (T5_CHECKPOINT_FILE, "umT5 weights"),
                       (T5_TOKENIZER_DIR, "tokenizer folder")):
        path = model_dir / name
        if not path.exists():
            raise missing(path, what, download_command(model_dir))


def read_size_policy(model_dir: Path) -> SizePolicy:
    """Sizes from lingbot_engine.json, else the real model's LINGBOT_SIZES."""
    path = model_dir / ENGINE_SIDECAR
    if not path.is_file():
        return SizePolicy(sizes=list(LINGBOT_SIZES), default_size=DEFAULT_SIZE)
    raw = json.loads(path.read_text())
    sizes = [str(s) for s in raw.get("sizes", LINGBOT_SIZES)]
    default = str(raw.get("default_size", sizes[0]))
    for size in sizes:
        w, _, h = size.partition("*")
        if not (w.isdigit() and h.isdigit() and int(w) % 16 == 0 and int(h) % 16 == 0):
            raise ValueError(f"{path}: size {size!r} must be 'W*H' with W and H multiples of 16")
    if default not in sizes:
        raise ValueError(f"{path}: default_size {default!r} is not one of {sizes}")
    return SizePolicy(sizes=sizes, default_size=default)


def read_vae_config(model_dir: Path) -> VAEConfig:
    path = model_dir / VAE_SIDECAR
    return VAEConfig.from_json(path) if path.is_file() else VAEConfig.wan21()


def read_t5_config(model_dir: Path) -> T5Config:
    path = model_dir / T5_SIDECAR
    return T5Config.from_json(path) if path.is_file() else T5Config.umt5_xxl()


def read_dit_config(model_dir: Path) -> DiTConfig:
    return DiTConfig.from_json(model_dir / DIT_DIR / "config.json")


def load_models(model_dir: str | Path, *, device: torch.device, dtype: torch.dtype,
                progress: bool | None = None, weights: str = "bf16",
                t5_device: torch.device | str | None = None) -> LingbotModels:
    """Load DiT and umT5 + tokenizer straight onto device/dtype (the VAE in float32); clear errors on missing files.

    weights='fp8' stores the DiT blocks' linear weights as float8 (inference/models/fp8.py) right after
    loading; t5_device (e.g. 'cpu') keeps the text encoder off the DiT's device (slower prompt changes).
    """
    model_dir = Path(model_dir)
    if weights not in ("bf16", "fp8"):
        raise ValueError(f"weights {weights!r}: expected 'bf16' (the checkpoint's dtype) or 'fp8'")
    check_folder(model_dir)
    try:
        dit = load_dit_checkpoint(model_dir / DIT_DIR, device=device, dtype=dtype, progress=progress)
    except CheckpointError as exc:
        raise ModelFolderError(str(exc)) from exc
    if weights == "fp8":
        quantize_blocks(dit, dit.blocks)
    # The VAE stays float32 on every device, as the reference's VAE wrapper keeps it (bf16 costs decode fidelity).
    vae = load_vae(model_dir / VAE_FILE, device=device, dtype=torch.float32, config=read_vae_config(model_dir),
                   model_dir=model_dir)
    t5_config = read_t5_config(model_dir)
    if t5_config.dim != dit.config.text_dim:
        raise ValueError(f"umT5 width {t5_config.dim} does not match the DiT text_dim {dit.config.text_dim}; "
                         f"{model_dir} mixes files of different models")
    text = TextEncoder.from_checkpoint(model_dir, device=device if t5_device is None else t5_device, dtype=dtype,
                                       config=t5_config)
    return LingbotModels(dit=dit, vae=vae, text=text, sizes=read_size_policy(model_dir))
