"""The page survives a server restart on the same ports."""

from __future__ import annotations

import pytest

from browser_helpers import open_page, start_world

pytestmark = pytest.mark.browser


def test_server_restart_is_survived(page, own_server, artifacts_dir):
    """After the server restarts on the same ports the page reconnects, re-inits and frames flow again."""
    open_page(page, own_server)
    page.fill("#prompt", "a quiet harbour at dawn")
    start_world(page)
    http_port, ws_port = own_server.http_port, own_server.ws_port

    own_server.stop()
    page.wait_for_function("() => !window.__worldDebug.connected", timeout=15000)
    page.wait_for_function(
        "() => document.getElementById('message').dataset.code === 'connection_lost'", timeout=15000)
    assert page.get_attribute("#conn-state", "data-state") in ("waiting", "reconnecting")
    page.screenshot(path=str(artifacts_dir / "connection-lost.png"))

    own_server.start(http_port=http_port, ws_port=ws_port)
    received_before = page.evaluate("() => window.__worldDebug.frames.received")
    page.wait_for_function(
        f"() => window.__worldDebug.frames.received > {received_before + 5}", timeout=30000)
    assert page.text_content("#conn-state").strip() == "Reconnected"
    debug = page.evaluate("() => ({sent: window.__worldDebug.sent, session: window.__worldDebug.session})")
    assert debug["sent"]["init"] == 2
    assert debug["session"] is not None
    assert page.input_value("#prompt") == "a quiet harbour at dawn"
