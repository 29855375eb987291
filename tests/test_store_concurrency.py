"""Exclusive claiming under contention, on a real Redis server only.

fakeredis and the memory store run every command in one process, so they
cannot show what 50 clients racing over separate connections do.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from backend.workers.models import Claim, Completion, JobSpec
from backend.workers.redis_job_store import RedisJobStore
from tests.conftest import delete_prefix

CLAIMERS = 50
JOBS = 5_000


@pytest.mark.redis_only
async def test_concurrent_claimers_take_every_job_exactly_once(redis_url: str, prefix: str) -> None:
    producer = RedisJobStore.from_url(redis_url, prefix=prefix)
    claimers = [RedisJobStore.from_url(redis_url, prefix=prefix) for _ in range(CLAIMERS)]
    try:
        specs = [JobSpec("t.race", args=[i], id=f"race-{i}") for i in range(JOBS)]
        await producer.enqueue_many(specs)
        assert (await producer.counts())["default"]["enqueued"] == JOBS

        async def claim_all(index: int, store: RedisJobStore) -> list[str]:
            """Claim until the queue is empty, batch sizes 1..5, completing each batch."""
            taken: list[str] = []
            while True:
                jobs = await store.claim(f"claimer-{index}", ["default"], 1 + index % 5, 300)
                if not jobs:
                    return taken
                taken += [job.id for job in jobs]
                claims = [Claim(job.queue, job.id, job.token or "") for job in jobs]
                results = await store.finish([Completion(claim, 0.001) for claim in claims])
                assert all(result is not None for result in results)

        per_claimer = await asyncio.gather(*(claim_all(i, s) for i, s in enumerate(claimers)))
        taken = Counter(job_id for ids in per_claimer for job_id in ids)
        assert sum(taken.values()) == JOBS
        assert set(taken) == {spec.id for spec in specs}
        assert max(taken.values()) == 1, f"claimed twice: {[i for i, n in taken.items() if n > 1][:10]}"
        assert sum(1 for ids in per_claimer if ids) > 1, "the claimers did not actually race"
        counts = (await producer.counts())["default"]
        assert (counts["done"], counts["enqueued"], counts["running"]) == (JOBS, 0, 0)
        runs = (await producer.metrics()).queues["default"].runs
        assert runs == {("t.race", "done"): JOBS}
    finally:
        for store in [producer, *claimers]:
            await store.close()
        await delete_prefix(redis_url, prefix)
