"""Load `.pth` state dicts of the LingBot-World checkpoint onto a module, with clear errors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# The repository users download (MODEL.md "Checkpoint layout users download").
CHECKPOINT_REPO = "robbyant/lingbot-world-base-cam"
# How many key names an error message lists before it summarises the rest.
_MAX_KEYS_SHOWN = 12


def download_command(model_dir: str | Path) -> str:
    """The command that (re)downloads the checkpoint folder into model_dir."""
    return f"huggingface-cli download {CHECKPOINT_REPO} --local-dir {model_dir}"


class CheckpointFileMissing(FileNotFoundError):
    """A checkpoint file the user was meant to download is not on disk."""


class CheckpointKeyMismatch(ValueError):
    """A state dict whose key names or shapes do not match the model built for it."""


def missing_file_error(path: Path, what: str, model_dir: Path) -> CheckpointFileMissing:
    """The error for a checkpoint file that is absent: names it and says how to get it."""
    return CheckpointFileMissing(
        f"{what} file {path} not found: the checkpoint download is incomplete. "
        f"Download the checkpoint folder again with: {download_command(model_dir)}")


def read_state_dict(path: str | Path, *, what: str, model_dir: str | Path | None = None) -> dict:
    """Open a torch `.pth` state dict lazily (mmap, weights only); tensors stay on CPU pages.

    `what` names the file's role in messages ("VAE", "umT5 encoder"); `model_dir`
    is the checkpoint folder the download command should target (default: the
    file's folder).
    """
    path = Path(path)
    model_dir = Path(model_dir) if model_dir is not None else path.parent
    if not path.is_file():
        raise missing_file_error(path, what, model_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated or non-zip file: the usual sign of a partial download
        raise CheckpointKeyMismatch(
            f"{what} file {path} could not be read as a torch state dict ({type(exc).__name__}: "
            f"{exc}); if the download was interrupted, run: {download_command(model_dir)}") from exc
    if not isinstance(state, dict):
        raise CheckpointKeyMismatch(
            f"{what} file {path} holds a {type(state).__name__}, expected a state dict (name -> tensor)")
    return state


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_KEYS_SHOWN])
    more = len(names) - _MAX_KEYS_SHOWN
    return shown + (f" ... (+{more} more)" if more > 0 else "")


def check_keys(module: nn.Module, state: dict, *, source: str | Path) -> None:
    """Raise CheckpointKeyMismatch listing missing, unexpected and mis-shaped keys (strict load)."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict(keep_vars=True).items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k} {tuple(state[k].shape)} != {expected[k]}"
                       for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if not (missing or unexpected or misshaped):
        return
    parts = [f"state dict {source} does not match {type(module).__name__}:"]
    if missing:
        parts.append(f"missing {len(missing)} keys: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {_listing(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} shape mismatches (file != model): {_listing(misshaped)}")
    parts.append("(is the file for a different model or config?)")
    raise CheckpointKeyMismatch(" ".join(parts))


def assign_state_dict(module: nn.Module, state: dict, *, device: torch.device | str,
                      dtype: torch.dtype, source: str | Path) -> nn.Module:
    """Strictly load `state` into `module` (usually built on the meta device), tensor by tensor
    moved to device/dtype, so the weights exist once on the target and never twice in host memory."""
    check_keys(module, state, source=source)
    placed = {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
              for name, t in state.items()}
    module.load_state_dict(placed, strict=True, assign=True)
    return module.requires_grad_(False).eval()
