"""Fixtures for engine-group tests: the real-server factory of the server tests."""

from tests.server.serverkit import server_factory  # noqa: F401  (pytest fixture)
