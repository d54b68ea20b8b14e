"""Fixtures for server tests (defined in serverkit.py so test modules can import its helpers by a unique name)."""

from tests.server.serverkit import server, server_factory  # noqa: F401  (pytest fixtures)
