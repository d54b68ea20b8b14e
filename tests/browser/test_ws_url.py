"""The page's WebSocket URL derivation, run in the browser against the served module."""

from __future__ import annotations

import pytest

from browser_helpers import open_page

pytestmark = pytest.mark.browser

CONFIG = {"ws_port": 8765, "ws_path": "/"}

CASES = [
    # (page URL, config, expected WebSocket URL)
    ("http://localhost:8080/", CONFIG, "ws://localhost:8765/"),
    ("http://127.0.0.1:8080/some/page?x=1", CONFIG, "ws://127.0.0.1:8765/"),
    ("https://world.example.com/", CONFIG, "wss://world.example.com:8765/"),
    ("http://[::1]:8080/", CONFIG, "ws://[::1]:8765/"),
    ("http://10.0.0.5:8080/", {"ws_port": 9000, "ws_path": "/stream"}, "ws://10.0.0.5:9000/stream"),
    ("https://abc123xyz-8080.proxy.runpod.net/", CONFIG, "wss://abc123xyz-8765.proxy.runpod.net/"),
    ("https://my-pod-7-8080.proxy.runpod.net/app/", CONFIG, "wss://my-pod-7-8765.proxy.runpod.net/"),
    ("https://abc-8080.proxy.runpod.net/", {"ws_port": 8765, "ws_path": "/", "http_port": 8080},
     "wss://abc-8765.proxy.runpod.net/"),
    # A dash-number name that is not a proxy host keeps host:port.
    ("https://build-2024.example.com/", CONFIG, "wss://build-2024.example.com:8765/"),
    ("https://abc-8080.proxy.runpod.net/?ws=wss://other.host:9999/ws", CONFIG, "wss://other.host:9999/ws"),
    ("http://localhost:8080/?ws=ws%3A%2F%2F127.0.0.1%3A1234%2F", CONFIG, "ws://127.0.0.1:1234/"),
    ("https://example.com/?ws=https://example.com/socket", CONFIG, "wss://example.com/socket"),
]


def test_ws_url_derivation(page, server):
    """deriveWsUrl gives the right URL for http, https, RunPod proxy hosts and the ?ws= override."""
    open_page(page, server)
    results = page.evaluate(
        """async (cases) => {
            const { deriveWsUrl } = await import('./static/wsurl.js');
            return cases.map(([url, config]) => deriveWsUrl(url, config));
        }""",
        [[url, config] for url, config, _ in CASES],
    )
    assert results == [expected for _, _, expected in CASES]


def test_page_uses_ws_override_from_its_url(page, server):
    """A ?ws= parameter in the page URL decides where the page connects."""
    page.goto(f"{server.base_url}?ws=ws://127.0.0.1:{server.ws_port}/")
    page.wait_for_function("() => window.__worldDebug && window.__worldDebug.connected", timeout=15000)
    assert page.evaluate("() => window.__worldDebug.wsUrl") == f"ws://127.0.0.1:{server.ws_port}/"
