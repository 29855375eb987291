"""One master of a Redis Cluster killed: the queues on the other masters lose nothing (issue 13
items 6-7). A private cluster (not the session's: a master dies here), with
cluster-require-full-coverage off, so the surviving masters keep serving their slots."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from backend.workers.job_store import StoreUnavailableError
from backend.workers.models import Claim, JobSpec, JobState, WorkerInfo
from backend.workers.redis_job_store import RedisJobStore
from tests.redis_cluster import RedisClusterNodes
from tests.redis_server import RedisServer, in_ci

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]
R = TypeVar("R")


@pytest.fixture
def cluster() -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes()
    for node in nodes.nodes:
        node.extra_args += ["--cluster-require-full-coverage", "no"]
    try:
        nodes.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        nodes.cleanup()
        if in_ci():
            pytest.fail(f"CI needs a Redis Cluster: {exc}")
        pytest.skip(f"no Redis Cluster: {exc}")
    yield nodes
    nodes.cleanup()


@pytest.fixture
async def store(cluster: RedisClusterNodes) -> AsyncIterator[RedisJobStore]:
    built = RedisJobStore.from_url(cluster.url, prefix="bbtest-faults", cluster=True)
    await built.redis.initialize()  # the slot map, to find which node holds which queue
    yield built
    await built.close()


async def as_the_worker_does(call: Callable[[], Awaitable[R]]) -> R:
    """Retry through StoreUnavailableError, as the worker's loops do (redis-py re-reads the slot map
    after a node failed, and a call can fail meanwhile)."""
    for _ in range(50):
        with contextlib.suppress(StoreUnavailableError):
            return await call()
        await asyncio.sleep(0.1)
    return await call()


def node_of(store: RedisJobStore, cluster: RedisClusterNodes, key: str) -> RedisServer:
    port = int(store.redis.get_node_from_key(key).port)
    return next(node for node in cluster.nodes if node.port == port)


def queue_not_on(store: RedisJobStore, cluster: RedisClusterNodes, *avoid: RedisServer) -> str:
    for n in range(200):
        name = f"q{n}"
        if node_of(store, cluster, store.keys.queue(name).ready) not in avoid:
            return name
    raise AssertionError("no queue name off those nodes")


async def test_a_dead_master_costs_healthy_queues_nothing_in_a_claim(
    store: RedisJobStore, cluster: RedisClusterNodes
) -> None:
    """The master of the first queue dies: the second queue's 6 jobs are claimed and run once each,
    rather than left running under nobody to fail without running."""
    doomed = "q-doomed"
    dead = node_of(store, cluster, store.keys.queue(doomed).ready)
    healthy = queue_not_on(store, cluster, dead)
    await store.enqueue(JobSpec(name="bagbot.noop", queue=doomed))
    jobs = [await store.enqueue(JobSpec(name="bagbot.noop", queue=healthy)) for _ in range(6)]
    dead.kill()
    claimed = await store.claim("w1", [doomed, healthy], 10, 30.0)
    assert sorted(job.id for job in claimed) == sorted(job.id for job in jobs)
    for job in claimed:
        assert job.attempts == 1
        claim = Claim(job.queue, job.id, job.token or "")
        assert await as_the_worker_does(lambda c=claim: store.complete(c)) is JobState.DONE  # type: ignore[misc]


async def test_a_dead_registry_master_lets_no_lease_expire(
    store: RedisJobStore, cluster: RedisClusterNodes
) -> None:
    """Only the registry's master dies while jobs on the other masters run: each heartbeat still
    extends their leases, so none is recovered (restarted) while it runs; each finishes once."""
    registry = node_of(store, cluster, store.keys.registry)
    queue = queue_not_on(store, cluster, registry)
    info = WorkerInfo(id="w1", host="h", pid=1, queues=[queue], concurrency=3)
    await store.register_worker(info)
    for _ in range(3):
        await store.enqueue(JobSpec(name="bagbot.noop", queue=queue))
    claimed = await store.claim("w1", [queue], 3, 2.0)
    claims = [Claim(job.queue, job.id, job.token or "") for job in claimed]
    registry.kill()
    # Heartbeats over 3 s, past the 2 s lease of the claim; each extends by 6 s, so a slow call while
    # redis-py re-reads the slot map (a loaded machine) cannot let an extended lease run out.
    for beat in range(4):
        if beat:
            await asyncio.sleep(1.0)
        with pytest.raises(Exception):  # noqa: B017 - the registry's node is gone: any outage error
            await store.heartbeat(info, claims, 6.0)
    assert await as_the_worker_does(lambda: store.recover([queue])) == 0
    for claim in claims:
        assert await as_the_worker_does(lambda c=claim: store.complete(c)) is JobState.DONE  # type: ignore[misc]
