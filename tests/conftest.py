"""Shared fixtures: a real Redis server (from REDIS_URL or started here) and a random key prefix."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from backend.api.app import create_app
from backend.config import Settings
from backend.workers.job_store import JobStore
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.redis_job_store import RedisJobStore
from tests.feature_workers import Spawner
from tests.redis_server import RedisServer, delete_keys, delete_prefix, in_ci
from tests.tcp_proxy import TcpProxy


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


def keys_under(url: str, prefix: str) -> list[str]:
    """The keys under `prefix` on the server at `url` (SCAN, as delete_keys does)."""
    import redis

    with redis.Redis.from_url(url, decode_responses=True) as client:
        return sorted(client.scan_iter(match=f"{prefix}:*", count=1000))


@pytest.fixture(autouse=True)
def no_keys_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the shared server (REDIS_URL, or the session's redis-server) leaves no key under its
    prefix: set up before the test's other fixtures, so this runs after all their teardowns."""
    if not {"redis_url", "prefix"} <= set(request.fixturenames):
        yield
        return
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("prefix")
    assert keys_under(url, prefix) == [], "the prefix was in use before the test"
    yield
    left = keys_under(url, prefix)
    if left:
        asyncio.run(delete_prefix(url, prefix))
        pytest.fail(f"the test left {len(left)} keys under {prefix} on the shared server: {left[:5]}")


@pytest.fixture
def delete_prefix_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """For tests whose subprocesses (workers, backends, CLI) write under the test's prefix on the
    shared server: delete it when the test ends, before no_keys_left_behind looks."""
    yield
    if {"redis_url", "prefix"} <= set(request.fixturenames):
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("prefix")
        asyncio.run(delete_prefix(url, prefix))


@pytest.fixture
async def redis_store(redis_url: str, prefix: str) -> AsyncIterator[RedisJobStore]:
    """A Redis store on the real server under this test's prefix; its keys are deleted afterwards."""
    store = RedisJobStore.from_url(redis_url, prefix=prefix)
    try:
        yield store
    finally:
        await delete_keys(store.redis, prefix)
        await store.close()


@pytest.fixture(params=["memory", "redis"])
async def app_store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[JobStore]:
    """The two stores a deployment runs the backend on: embedded memory, or a real Redis."""
    if request.param == "memory":
        from backend.workers.memory_job_store import MemoryJobStore

        yield MemoryJobStore()
        return
    url: str = request.getfixturevalue("redis_url")
    built = RedisJobStore.from_url(url, prefix=prefix)
    try:
        yield built
    finally:
        await built.close()
        await delete_prefix(url, prefix)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A real 3-master Redis Cluster: REDIS_CLUSTER_URL (any one node) when given, else started here."""
    given = os.environ.get("REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    from tests.redis_cluster import RedisClusterNodes

    failures: list[str] = []
    for _ in range(3):  # a port taken between choosing and binding it: try again on fresh ones
        candidate = RedisClusterNodes()
        try:
            cluster = candidate.start()
            break
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            candidate.cleanup()
            failures.append(f"{type(exc).__name__}: {exc}")
    else:
        if in_ci():
            pytest.fail(f"CI needs a real Redis Cluster: {failures}")
        pytest.skip(f"no Redis Cluster: {failures}")
    try:
        yield cluster.url
    finally:
        cluster.cleanup()


STORE_KINDS = ["memory", "fakeredis", "redis", "cluster"]


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[JobStore]:
    """Every store the conformance suite holds to one contract: memory, fakeredis, a real Redis,
    and a real 3-master Redis Cluster.

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

        url = request.getfixturevalue("redis_cluster_url" if kind == "cluster" else "redis_url")
        built = RedisJobStore.from_url(url, prefix=prefix, cluster=kind == "cluster")
    try:
        yield built
    finally:
        await built.close()
        if kind == "redis":
            await delete_prefix(request.getfixturevalue("redis_url"), prefix)
        elif kind == "cluster":
            await delete_cluster_prefix(request.getfixturevalue("redis_cluster_url"), prefix)


async def delete_cluster_prefix(url: str, prefix: str) -> int:
    """`delete_prefix` on every master of a cluster (keys of one prefix span many slots)."""
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster.from_url(url, decode_responses=True)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for key in keys:
            await client.delete(key)
        return len(keys)
    finally:
        await client.aclose()


@pytest.fixture
def worker_tasks() -> str:
    """The BAGBOT_TASKS of the workers `spawner` starts; a test module overrides it for its own tasks."""
    return "tests.tasks_features"


@pytest.fixture
def spawner(tmp_path: Path, redis_url: str, prefix: str, worker_tasks: str) -> Iterator[Spawner]:
    """Real worker processes on the test server and prefix, all stopped at teardown."""
    spawn = Spawner(tmp_path, redis_url, prefix, tasks=worker_tasks)
    yield spawn
    spawn.stop_all()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the test server: a test cuts, stalls or drops its traffic."""
    target = urlparse(redis_url)
    p = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    yield p
    p.close()


@pytest.fixture
async def mem() -> AsyncIterator[MemoryJobStore]:
    """An embedded memory store of the test's own."""
    store = MemoryJobStore()
    yield store
    await store.close()


@pytest.fixture
async def mem_client(mem: MemoryJobStore) -> AsyncIterator[httpx.AsyncClient]:
    """The API on `mem`, called in-process (ASGI), no server."""
    app = create_app(Settings(), store=mem)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as c:
        yield c
