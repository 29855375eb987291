"""Shared fixtures: a real Redis server (from REDIS_URL or started here) and a random key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from backend.workers.job_store import JobStore
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


STORE_KINDS = ["memory", "fakeredis", "redis"]


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[JobStore]:
    """Every store the conformance suite holds to one contract: memory, fakeredis, a real Redis.

    The Redis stores get this test's random prefix; the real server is only
    started (or REDIS_URL read) when a "redis" case runs.
    """
    kind: str = request.param
    built: JobStore
    if kind == "memory":
        from backend.workers.memory_job_store import MemoryJobStore

        built = MemoryJobStore()
    elif kind == "fakeredis":
        import fakeredis

        from backend.workers.redis_job_store import RedisJobStore

        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
        built = RedisJobStore(client, prefix=prefix)
    else:
        from backend.workers.redis_job_store import RedisJobStore

        url = request.getfixturevalue("redis_url")
        built = RedisJobStore.from_url(url, prefix=prefix)
    try:
        yield built
    finally:
        await built.close()
        if kind == "redis":
            await delete_prefix(request.getfixturevalue("redis_url"), prefix)


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete exactly the keys under `prefix` (SCAN, then DEL): never anyone else's data."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        await client.aclose()
