"""Fixtures for browser tests: the real server on loopback and headless Debian Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from browser_helpers import AUTH_TOKEN_FOR_TESTS
from tests.server.serverkit import ServerProcess

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts" / "browser"


def _start_server(run_dir: Path, extra_env: dict[str, str] | None = None):
    server = ServerProcess(run_dir, extra_env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A server shared by the tests that do not stop or reconfigure it."""
    yield from _start_server(tmp_path_factory.mktemp("run"))


@pytest.fixture
def own_server(tmp_path):
    """A server this test may stop and restart."""
    yield from _start_server(tmp_path)


@pytest.fixture
def grace_server(tmp_path):
    """A server that keeps a dropped world for 3 s (RESUME_GRACE_S)."""
    yield from _start_server(tmp_path, {"RESUME_GRACE_S": "3"})


@pytest.fixture
def auth_server(tmp_path):
    """A server that requires the access token `AUTH_TOKEN_FOR_TESTS`."""
    yield from _start_server(tmp_path, {"AUTH_TOKEN": AUTH_TOKEN_FOR_TESTS})


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, one per module: Playwright's sync API holds an event loop while it runs,
    so it is closed before other test areas (which use asyncio.run) start."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; the browser tests drive Debian's Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.js_errors = errors
    yield page
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
