"""Shared steps for the browser tests: open the page, start a world, read the canvas."""

from __future__ import annotations

import time

import numpy as np

AUTH_TOKEN_FOR_TESTS = "browser-test-token"

# Shrinks the canvas to a small thumbnail so comparisons ignore JPEG noise and stay cheap.
_SAMPLE_JS = """([w, h]) => {
  const view = document.getElementById('view');
  const thumb = document.createElement('canvas');
  thumb.width = w; thumb.height = h;
  const ctx = thumb.getContext('2d');
  ctx.drawImage(view, 0, 0, w, h);
  return {drawn: window.__worldDebug.frames.drawn,
          pixels: Array.from(ctx.getImageData(0, 0, w, h).data)};
}"""


def open_page(page, server):
    """Load the page and wait until its WebSocket is connected."""
    page.goto(server.base_url)
    page.wait_for_function("() => window.__worldDebug && window.__worldDebug.connected", timeout=15000)


def start_session(page):
    """Press Start and wait for the server's session reply (before the first frame)."""
    page.click("#start")
    page.wait_for_function("() => window.__worldDebug.session !== null", timeout=30000)


def start_world(page, min_frames: int = 3):
    """Press Start and wait until frames are being drawn."""
    page.click("#start")
    page.wait_for_function(
        f"() => window.__worldDebug.frames.drawn >= {min_frames}", timeout=30000)


def sample(page, width: int = 64, height: int = 36) -> tuple[int, np.ndarray]:
    """(frames drawn so far, RGB thumbnail of the canvas as float32 (height, width, 3))."""
    result = page.evaluate(_SAMPLE_JS, [width, height])
    rgba = np.asarray(result["pixels"], dtype=np.float32).reshape(height, width, 4)
    return result["drawn"], rgba[..., :3]


def wait_new_frames(page, after: int, count: int = 2, timeout: float = 15000):
    page.wait_for_function(
        f"() => window.__worldDebug.frames.drawn >= {after + count}", timeout=timeout)


def change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute per-channel difference between two thumbnails (0..255)."""
    return float(np.abs(a - b).mean())


def wait_for_picture(page, condition, timeout_s: float = 15.0, size: tuple[int, int] = (64, 36)) -> np.ndarray:
    """Sample the canvas until `condition(thumbnail)` holds; returns that thumbnail (or the last one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, pixels = sample(page, *size)
        if condition(pixels) or time.monotonic() > deadline:
            return pixels
        page.wait_for_timeout(200)


def horizontal_shift(before: np.ndarray, after: np.ndarray, most: int = 40) -> tuple[int, float]:
    """(s, error): the picture moved s columns to the left from `before` to `after` (negative: to the right).

    A camera turning right moves what it sees to the left. Only the upper half is compared: the sky and
    far hills move almost as a whole under a turn, the near ground much less.
    """
    top = before.shape[0] // 2
    a, b = before[:top], after[:top]
    width = a.shape[1]
    best = (0, float("inf"))
    for s in range(-most, most + 1):
        if s >= 0:
            err = float(np.abs(a[:, s:] - b[:, :width - s]).mean())
        else:
            err = float(np.abs(a[:, :s] - b[:, -s:]).mean())
        if err < best[1]:
            best = (s, err)
    return best
