"""One lingbot-fast session's streaming state: start image, noise generator, camera, condition and decoder caches.

Start frame. A session's image is scaled to cover the session size (bicubic)
and centre-cropped; a session without an image starts from a uniform
mid-grey frame (pixel value 0 in [-1, 1]), which the model then fills in
from the prompt.

Condition. `y` = 4 mask channels (ones on the session's latent frame 0 only)
+ the VAE latent of [start image, black, black, ...], encoded chunk by
chunk with the causal streaming encoder (equal to encoding the whole video
at once). Once a black chunk's encode leaves every slot of the encoder's
causal cache unchanged, the cache is a fixed point and every later chunk's
latent is identical, so it is kept and the encoder (and its cache) dropped:
exact, and no VAE encode in steady state. The check compares each slot as
it is overwritten (no copy of the cache is kept) and costs one device sync
per chunk.

Camera. On a GPU the per-size camera-frame ray directions stay on the
device; per chunk only the (n, 3, 4) relative poses cross from the host and
the rays are rotated there (`StreamingCamera.chunk_on`, equal to the host
fold to float32 rounding). A CPU engine folds on the host, where it runs.

Noise. A torch.Generator seeded with the session seed draws each chunk's
initial noise and then the re-noising noise of each step, so the same seed
and poses give the same frames. (The reference draws the whole video's
initial noise up front, which a stream cannot; the distribution is the same.)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from inference.models.camera import StreamingCamera, StreamingCameraConfig
from inference.models.vae import TIME_STRIDE, SPACE_STRIDE, StreamingDecoder, StreamingEncoder, WanVAE
from inference.models.vae_layers import CausalCache

MASK_CHANNELS = 4


def start_frame(image: np.ndarray | None, width: int, height: int) -> torch.Tensor:
    """(H, W, 3) uint8 of any size (or None) -> (1, 3, 1, height, width) float32 in [-1, 1]."""
    if image is None:
        return torch.zeros(1, 3, 1, height, width)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"start image has shape {image.shape} and dtype {image.dtype}; expected (H, W, 3) uint8")
    pil = Image.fromarray(image)
    scale = max(width / pil.width, height / pil.height)
    cover = (max(width, round(pil.width * scale)), max(height, round(pil.height * scale)))
    pil = pil.resize(cover, Image.BICUBIC)
    left, top = (cover[0] - width) // 2, (cover[1] - height) // 2
    pixels = np.asarray(pil.crop((left, top, left + width, top + height)), dtype=np.float32)  # (H, W, 3)
    frame = torch.from_numpy(pixels / 127.5 - 1.0).permute(2, 0, 1)  # (3, H, W)
    return frame[None, :, None]  # (1, 3, 1, H, W)


class ChangeTrackingCache(CausalCache):
    """A causal cache that notes whether any write replaced a slot by different content (no copies kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: bool | torch.Tensor = False  # a device bool tensor while comparisons are pending

    def write(self, value) -> None:
        old = self.slots[self.cursor]
        if isinstance(old, torch.Tensor) and isinstance(value, torch.Tensor) and old.shape == value.shape:
            differs = torch.ne(old, value).any()  # stays on the device: no sync per slot
            self.changed = differs if self.changed is False else self.changed | differs
        elif old is not value:
            self.changed = True
        super().write(value)

    def take_changed(self) -> bool:
        """Whether anything changed since the last call (one device sync), then start counting afresh."""
        changed, self.changed = self.changed, False
        return bool(changed)


class ConditionStream:
    """The i2v condition y (1, 20, n, h, w) of each successive chunk of one session."""

    def __init__(self, vae: WanVAE, image: torch.Tensor, chunk_latents: int):
        self.vae = vae
        self.image = image  # (1, 3, 1, H, W) on the VAE's device
        self.chunk_latents = chunk_latents
        self.encoder: StreamingEncoder | None = StreamingEncoder(vae)
        self.encoder.cache = ChangeTrackingCache()
        self.steady: torch.Tensor | None = None
        self.chunks = 0

    @torch.no_grad()
    def next_chunk(self) -> torch.Tensor:
        if self.steady is not None:
            self.chunks += 1
            return self.steady
        n, first = self.chunk_latents, self.chunks == 0
        _, _, _, height, width = self.image.shape
        frames = TIME_STRIDE * n - (TIME_STRIDE - 1 if first else 0)
        video = torch.zeros(1, 3, frames, height, width, device=self.image.device)  # (1, 3, T, H, W) black
        if first:
            video[:, :, :1] = self.image
        latent = self.encoder.encode_chunk(video).float()  # (1, 16, n, h, w)
        mask = torch.zeros(1, MASK_CHANNELS, n, *latent.shape[-2:], device=latent.device)
        if first:
            mask[:, :, 0] = 1.0
        y = torch.cat([mask, latent], dim=1)  # (1, 20, n, h, w)
        self.chunks += 1
        changed = self.encoder.cache.take_changed()
        if not first and not changed:  # the cache this chunk started from is a fixed point: y never changes again
            self.steady = y
            self.encoder = None
        return y


class SessionStream:
    """Everything one session carries from chunk to chunk, apart from its DiT cache slot."""

    def __init__(self, *, session_id: str, prompt: str, seed: int, width: int, height: int,
                 image: torch.Tensor, vae: WanVAE, control_type: str, chunk_latents: int, slot: int,
                 decode: bool = True):
        self.session_id = session_id
        self.prompt = prompt
        self.seed = seed
        self.width, self.height = width, height
        self.latent_h, self.latent_w = height // SPACE_STRIDE, width // SPACE_STRIDE
        self.image = image
        self.vae = vae
        self.chunk_latents = chunk_latents
        self.slot = slot
        self.decode = decode  # False on engine-group followers: they never make frames
        self.camera = StreamingCamera(StreamingCameraConfig(height=height, width=width, chunk_latents=chunk_latents,
                                                            control_type=control_type))
        self.restart()

    def restart(self) -> None:
        """Back to the start image and pose: fresh noise stream, condition, camera and decoder (if it decodes)."""
        device = self.image.device
        self.generator = torch.Generator(device=device).manual_seed(self.seed)
        self.condition = ConditionStream(self.vae, self.image, self.chunk_latents)
        self.decoder = StreamingDecoder(self.vae) if self.decode else None
        self.camera.reset()
        self.latent_frames = 0  # latent frames generated so far = the next chunk's first RoPE frame
        self.chunks = 0

    def expected_frames(self) -> int:
        """Video frames of poses (and output) of the next chunk: 9 first, then 12 (for 3 latents)."""
        return self.camera.expected_frames()

    def noise(self, like_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Standard normal (1, ...) from the session's own generator."""
        return torch.randn(like_shape, generator=self.generator, device=device, dtype=torch.float32)

    def control(self, poses: np.ndarray, keys: np.ndarray, device: torch.device) -> torch.Tensor:
        """(F, 4, 4) poses + (F, 8) keys -> (1, C, n, h, w) float32 camera condition, built on device.

        On an accelerator the rays are rotated there (only the relative poses
        cross); on the CPU the host fold already runs where the DiT does.
        """
        if device.type == "cpu":
            return torch.from_numpy(self.camera.chunk(poses, keys))
        return self.camera.chunk_on(poses, keys, device)
