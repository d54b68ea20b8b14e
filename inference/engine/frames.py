"""JPEG encoding of generated frames (rank 0, off the model's critical path when possible)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    """(H, W, 3) uint8 RGB -> baseline JPEG bytes."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.dtype} {frame.shape}")
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def decode_image(data: bytes, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB; raises ValueError on anything else."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ("JPEG", "PNG", "WEBP"):
            raise ValueError(f"image format {img.format!r} is not JPEG, PNG or WEBP")
        if img.width * img.height > max_pixels:
            raise ValueError(f"image is {img.width}x{img.height}; at most {max_pixels} pixels are accepted")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ValueError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ValueError(f"image could not be decoded: {exc}") from None
