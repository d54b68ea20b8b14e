"""The page on a server that requires an access token."""

from __future__ import annotations

import pytest

from browser_helpers import AUTH_TOKEN_FOR_TESTS, open_page, start_world

pytestmark = pytest.mark.browser


def test_token_field_unlocks_the_stream(page, auth_server):
    """With auth required the page asks for a token, explains a refusal, and streams once it is given."""
    open_page(page, auth_server)
    assert page.is_visible("#token")
    page.click("#start")
    page.wait_for_function("() => document.getElementById('message').dataset.code === 'unauthorized'",
                           timeout=15000)
    assert "access token" in page.text_content("#message").lower()
    page.fill("#token", AUTH_TOKEN_FOR_TESTS)
    start_world(page)
    assert page.evaluate("() => sessionStorage.getItem('worldToken')") == AUTH_TOKEN_FOR_TESTS
