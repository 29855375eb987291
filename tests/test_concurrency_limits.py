"""Per-key concurrency limits under load: real worker processes on a real Redis.

Each handler run counts itself in Redis on start and end (an atomic script keeps the
maximum), so the test reads the largest number of jobs of one key that ever ran at
once across every worker. (tests/test_limits.py is about payload and memory limits.)
"""

from __future__ import annotations

import pytest

from backend.workers.models import JobSpec
from backend.workers.redis_job_store import RedisJobStore
from tests.feature_workers import Spawner
from tests.tasks_features import read_overlap
from tests.worker_procs import eventually, starts_by_job

pytestmark = [pytest.mark.redis_only]


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


async def test_limits_are_never_exceeded_across_workers(
    store: RedisJobStore, spawner: Spawner, redis_url: str, prefix: str
) -> None:
    await spawner.start(4, BAGBOT_CONCURRENCY="8")
    specs = [JobSpec("features.limited_job", args=["cust-a", 0.05], limit_key="cust-a", limit=3)
             for _ in range(60)]
    specs += [JobSpec("features.limited_job", args=["cust-b", 0.03], limit_key="cust-b", limit=1)
              for _ in range(30)]
    specs += [JobSpec("features.limited_handler", args=[0.05]) for _ in range(40)]  # handler limit=2
    specs += [JobSpec("features.limited_job", args=["free", 0.05]) for _ in range(60)]  # no limit
    jobs = await store.enqueue_many(specs)

    async def all_done() -> bool:
        return (await store.counts())["default"]["done"] == len(jobs)

    await eventually(all_done, 90, "every job done")
    assert read_overlap(redis_url, prefix, "cust-a") <= 3
    assert read_overlap(redis_url, prefix, "cust-b") == 1
    assert read_overlap(redis_url, prefix, "handler") <= 2
    assert read_overlap(redis_url, prefix, "cust-a") >= 2  # the limit is a cap, not a queue of one
    assert read_overlap(redis_url, prefix, "free") > 3  # jobs without a key are not held back
    starts = starts_by_job(spawner.record)
    assert len(starts) == len(jobs) and all(len(runs) == 1 for runs in starts.values())
    # nothing is left parked or holding a slot
    qkeys = store.keys.queue("default")
    assert await store.redis.zcard(qkeys.parked) == 0
    for key in ("cust-a", "cust-b", "h:features.limited_handler"):
        assert await store.redis.scard(qkeys.limit_prefix + "run:" + key) == 0
