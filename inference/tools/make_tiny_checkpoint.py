"""Write a random-weight tiny LingBot checkpoint folder in the real download layout (for tests and benches).

    python -m inference.tools.make_tiny_checkpoint DIR [--seed N] [--control-type cam|act]
        [--window N --sink N] [--shards 2] [--sizes 64*48,48*32]

Layout (MODEL.md "Checkpoint layout users download") plus the sidecars the
loader reads for non-real shapes (see inference/lingbot/layout.py):

    DIR/lingbot_world_fast/config.json + diffusion_pytorch_model*.safetensors
    DIR/Wan2.1_VAE.pth + Wan2.1_VAE.config.json
    DIR/models_t5_umt5-xxl-enc-bf16.pth + models_t5_umt5-xxl-enc-bf16.config.json
    DIR/google/umt5-xxl/ (a real tiny tokenizer)
    DIR/lingbot_engine.json (valid sizes)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from inference.lingbot.layout import DIT_DIR, ENGINE_SIDECAR, T5_SIDECAR, VAE_FILE, VAE_SIDECAR
from inference.models.checkpoint import save_dit_checkpoint, split_into_shards
from inference.models.config import DiTConfig
from inference.models.dit import CausalDiT
from inference.models.t5 import T5_CHECKPOINT_FILE, T5_TOKENIZER_DIR, T5Config, T5Encoder
from inference.models.tokenizer import write_tiny_tokenizer
from inference.models.vae import VAEConfig, WanVAE

TINY_TEXT_LEN = 16
TINY_VOCAB = 256
TINY_SIZES = ("64*48", "48*32")
PERTURBATION = 0.02  # added noise so no weight keeps its tidy init value (as the fixture does)


def tiny_dit_config(control_type: str, window: int, sink: int) -> DiTConfig:
    return DiTConfig.tiny(control_type=control_type, text_dim=32, text_len=TINY_TEXT_LEN,
                          local_attn_size=window, sink_size=sink)


def tiny_vae_config() -> VAEConfig:
    return VAEConfig(dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                     temporal_downsample=[False, True, True])


def tiny_t5_config() -> T5Config:
    return T5Config(vocab_size=TINY_VOCAB, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2,
                    num_buckets=32, shared_pos=False, text_len=TINY_TEXT_LEN)


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter with seeded Gaussian noise (deterministic given the seed)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.add_(PERTURBATION * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module.eval()


def shard_limit(dit: CausalDiT, shards: int) -> int | None:
    """Smallest byte limit (in 1% steps above total/shards) at which the greedy split makes `shards` files."""
    if shards == 1:
        return None
    state = dit.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values())
    limit = -(-total // shards)
    while len(split_into_shards(state, limit)) > shards:
        limit += max(1, total // 100)
    if len(split_into_shards(state, limit)) != shards:
        raise ValueError(f"cannot split {total} bytes of {len(state)} tensors into {shards} shards")
    return limit


def vae_sidecar(config: VAEConfig) -> dict:
    """The fixture's vae_config.json format (VAEConfig.from_json reads it)."""
    kwargs = {k: v for k, v in asdict(config).items() if k not in ("latent_mean", "latent_std")}
    kwargs["temperal_downsample"] = kwargs.pop("temporal_downsample")  # the reference's spelling
    return {"WanVAE_kwargs": kwargs, "mean": list(config.latent_mean), "std": list(config.latent_std)}


def t5_sidecar(config: T5Config) -> dict:
    """The fixture's t5_config.json format (T5Config.from_json reads it)."""
    overrides = {k: v for k, v in asdict(config).items() if k != "text_len"}
    overrides["encoder_layers"] = overrides.pop("num_layers")
    return {"umt5_xxl_overrides": overrides, "text_len": config.text_len}


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def make_tiny_checkpoint(directory: str | Path, *, seed: int = 0, control_type: str = "cam", window: int = 12,
                         sink: int = 3, shards: int = 1, sizes: tuple[str, ...] = TINY_SIZES) -> Path:
    """Write the folder and return it; `shards` > 1 splits the DiT weights with an index json."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dit = randomise(CausalDiT(tiny_dit_config(control_type, window, sink)), seed + 1)
    save_dit_checkpoint(dit, directory / DIT_DIR, max_shard_bytes=shard_limit(dit, shards))
    torch.manual_seed(seed + 2)
    vae_config = tiny_vae_config()
    torch.save(randomise(WanVAE(vae_config), seed + 3).state_dict(), directory / VAE_FILE)
    write_json(directory / VAE_SIDECAR, vae_sidecar(vae_config))
    torch.manual_seed(seed + 4)
    t5_config = tiny_t5_config()
    torch.save(randomise(T5Encoder(t5_config), seed + 5).state_dict(), directory / T5_CHECKPOINT_FILE)
    write_json(directory / T5_SIDECAR, t5_sidecar(t5_config))
    write_tiny_tokenizer(directory / T5_TOKENIZER_DIR, vocab_size=TINY_VOCAB)
    write_json(directory / ENGINE_SIDECAR, {"sizes": list(sizes), "default_size": sizes[0]})
    return directory


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.tools.make_tiny_checkpoint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", help="folder to write (created if needed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--control-type", choices=["cam", "act"], default="cam")
    ap.add_argument("--window", type=int, default=12, help="KV window in latent frames (config local_attn_size)")
    ap.add_argument("--sink", type=int, default=3, help="pinned leading latent frames (config sink_size)")
    ap.add_argument("--shards", type=int, default=1, help="split the DiT safetensors into this many files")
    ap.add_argument("--sizes", default=",".join(TINY_SIZES), help="valid session sizes, W*H, comma separated")
    args = ap.parse_args(argv)
    sizes = tuple(s.strip() for s in args.sizes.split(",") if s.strip())
    out = make_tiny_checkpoint(args.directory, seed=args.seed, control_type=args.control_type, window=args.window,
                               sink=args.sink, shards=args.shards, sizes=sizes)
    print(f"wrote tiny checkpoint to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
