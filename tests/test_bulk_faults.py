"""A bulk retry whose script reply is lost on the network (tests/tcp_proxy.py, a real Redis):
each job is still moved exactly once, and calling again finishes the rest.

The reply of a retry_many call is dropped after the script ran on Redis. Without client retries
the call fails with StoreUnavailableError and a second call moves what is left; with redis-py
re-sending the command, the re-sent batch finds its jobs already moved and leaves them.
"""

from __future__ import annotations

import pytest

from backend.workers.bulk import BulkFilter
from backend.workers.job_store import StoreUnavailableError
from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.tcp_proxy import TcpProxy
from tests.test_network_faults import arm, proxied_store

pytestmark = [pytest.mark.redis_only]


async def cancelled_jobs(store: RedisJobStore, n: int) -> list[str]:
    jobs = await store.enqueue_many([JobSpec("t.job", queue="bulk", delay=3600) for _ in range(n)])
    assert (await store.cancel_many(BulkFilter(queue="bulk"))).moved == n
    return [job.id for job in jobs]


async def each_moved_once(store: RedisJobStore, ids: list[str]) -> None:
    counts = (await store.counts())["bulk"]
    assert counts["enqueued"] == len(ids) and counts["cancelled"] == 0
    for job_id in ids:
        job = await store.get(job_id, "bulk")
        assert job is not None and job.state is JobState.ENQUEUED and job.attempts == 0
    assert len(await store.claim("w", ["bulk"], len(ids) + 10, 30)) == len(ids)


@pytest.mark.parametrize("retries", [0, 1])
async def test_a_lost_bulk_reply_moves_each_job_once(
    proxy: TcpProxy, redis_store: RedisJobStore, prefix: str, retries: int
) -> None:
    ids = await cancelled_jobs(redis_store, 450)  # three script batches of at most 200
    through = proxied_store(proxy, prefix, retries)
    try:
        await arm(proxy, through, "retry_many")
        if retries == 0:
            with pytest.raises(StoreUnavailableError):
                await through.retry_many(BulkFilter(queue="bulk"))
            again = await redis_store.retry_many(BulkFilter(queue="bulk"))
            assert (again.matched, again.moved, again.more) == (250, 250, False)
        else:
            result = await through.retry_many(BulkFilter(queue="bulk"))
            # the lost batch ran once; its re-sent copy found those jobs enqueued and left them
            assert (result.matched, result.moved, result.more) == (450, 250, False)
    finally:
        await through.close()
    await each_moved_once(redis_store, ids)
