"""Redis Cluster: queues spread over the masters, workers killed mid-run, nothing lost or run twice.

The conformance suite runs against the cluster too (the `cluster` case of the `store`
fixture); these tests add what only a cluster has: several slots, several nodes.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from backend.workers.models import Claim, Completion, JobSpec, JobState, WorkerInfo
from backend.workers.redis_job_store import RedisJobStore
from tests.conftest import delete_cluster_prefix
from tests.worker_procs import WorkerProcess, eventually, read_records, starts_by_job, worker_env

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]


@pytest.fixture
async def cluster_store(redis_cluster_url: str, prefix: str) -> AsyncIterator[RedisJobStore]:
    store = RedisJobStore.from_url(redis_cluster_url, prefix=prefix)  # detects the cluster itself
    yield store
    await store.close()
    await delete_cluster_prefix(redis_cluster_url, prefix)


async def queues_on_each_node(store: RedisJobStore, count: int = 3) -> list[str]:
    """Queue names whose keys live on `count` different masters."""
    client: RedisCluster = store.redis
    await client.initialize()  # loads the slot map
    by_node: dict[str, str] = {}
    for i in range(1000):
        queue = f"q{i}"
        node = client.get_node_from_key(store.keys.queue(queue).ready)
        assert node is not None
        by_node.setdefault(node.name, queue)
        if len(by_node) == count:
            return sorted(by_node.values())
    raise AssertionError("could not spread queues over the masters")


async def test_the_cluster_is_detected_from_any_node_url(cluster_store: RedisJobStore) -> None:
    assert cluster_store.cluster
    health = await cluster_store.health()
    assert health.ok and health.maxmemory_policy == "noeviction"


async def test_queues_on_different_nodes_share_one_store(cluster_store: RedisJobStore) -> None:
    queues = await queues_on_each_node(cluster_store)
    for queue in queues:
        await cluster_store.enqueue_many([JobSpec("t.job", queue=queue) for _ in range(5)])
    await cluster_store.register_worker(WorkerInfo(id="w1", queues=queues))
    claimed = await cluster_store.claim("w1", queues, 15, 30)
    assert sorted({job.queue for job in claimed}) == queues and len(claimed) == 15
    done = [Completion(Claim(j.queue, j.id, j.token or ""), 0.01) for j in claimed]
    states = await cluster_store.finish(done)
    assert states == [JobState.DONE] * 15
    counts = await cluster_store.counts()
    assert {queue: counts[queue]["done"] for queue in queues} == dict.fromkeys(queues, 5)
    snapshot = await cluster_store.metrics()
    runs = {queue: snapshot.queues[queue].runs[("t.job", "done")] for queue in queues}
    assert runs == dict.fromkeys(queues, 5)
    assert set(snapshot.heartbeat_ages) == {"w1"}
    listed = await cluster_store.list_jobs(limit=100)
    assert len(listed.jobs) == 15 and listed.cursor is None
    assert await cluster_store.next_wakeup(queues) is None


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    procs: list[WorkerProcess] = []
    yield procs
    for proc in procs:
        proc.stop()


async def test_a_killed_worker_loses_nothing_on_a_cluster(
    cluster_store: RedisJobStore, redis_cluster_url: str, prefix: str, tmp_path: Path,
    workers: list[WorkerProcess],
) -> None:
    queues = await queues_on_each_node(cluster_store)
    record = tmp_path / "record.txt"
    env = worker_env(redis_cluster_url, prefix, record, BAGBOT_QUEUES=",".join(queues),
                     BAGBOT_CONCURRENCY="8")
    for index in range(3):
        workers.append(WorkerProcess(tmp_path, f"cluster-worker{index}", env))
    for proc in workers:
        await proc.wait_for_log("✓ Worker registration successful")
    per_queue = 150
    for queue in queues:
        await cluster_store.enqueue_many(
            [JobSpec("tests.record", queue=queue, kwargs={"sleep": 0.02}) for _ in range(per_queue)]
        )
    total = per_queue * len(queues)
    victim = workers[0]

    async def victim_busy() -> bool:
        return sum(1 for ex in read_records(record) if ex.pid == victim.pid) >= 20

    await eventually(victim_busy, 60, "victim ran some jobs")
    victim.send(signal.SIGKILL)
    assert await victim.wait() == -signal.SIGKILL

    async def all_done() -> bool:
        counts = await cluster_store.counts()
        return sum(counts[queue]["done"] for queue in queues) == total

    await eventually(all_done, 120, f"{total} jobs done on the cluster")
    starts = starts_by_job(record)
    assert len(starts) == total
    for runs in starts.values():
        if len(runs) > 1:  # only a job the victim had started runs again, once, elsewhere
            assert sorted(r.pid == victim.pid for r in runs) == [False, True]
    for proc in workers[1:]:
        proc.send(signal.SIGTERM)
        assert await proc.wait() == 0


def test_check_looks_at_every_master(redis_cluster_url: str, prefix: str) -> None:
    """`bagbot check` refuses a cluster where any one master could evict jobs."""
    import subprocess
    import sys

    import redis

    from tests.worker_procs import ROOT

    def check() -> subprocess.CompletedProcess[str]:
        env = {"REDIS_URL": redis_cluster_url, "BAGBOT_PREFIX": prefix, "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "-m", "backend.cli", "check"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    assert check().returncode == 0
    cluster = redis.RedisCluster.from_url(redis_cluster_url)
    primaries = cluster.get_primaries()  # type: ignore[no-untyped-call]
    other = next(node for node in primaries if f":{node.port}/" not in redis_cluster_url)
    node = redis.Redis(host=other.host, port=other.port)
    node.config_set("maxmemory-policy", "allkeys-lru")
    try:
        refused = check()
        assert refused.returncode == 1
        assert f"allkeys-lru (on cluster node 127.0.0.1:{other.port})" in refused.stdout + refused.stderr
    finally:
        node.config_set("maxmemory-policy", "noeviction")
        node.close()
        cluster.close()
