"""Shared fixtures: a real Redis server (from REDIS_URL or started here) and a random key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer, in_ci


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: REDIS_URL when given, else a private redis-server on a free port.

    Locally a missing redis-server skips the test with the reason; in CI it fails.
    """
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        if in_ci():
            pytest.fail(f"CI needs a real Redis: {exc}")
        pytest.skip(f"no real Redis: {exc}")
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, so tests never see or delete each other's keys."""
    return f"bbtest-{uuid.uuid4().hex[:10]}"
