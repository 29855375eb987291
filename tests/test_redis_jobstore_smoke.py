"""Smoke tests for the Redis job store: the staging guide's "Verify Job Store Operations"
items plus worker registration and heartbeats. Exactly six tests.

    pytest tests/test_redis_jobstore_smoke.py -v                                   # fakeredis
    REDIS_URL=redis://localhost:6379/0 pytest tests/test_redis_jobstore_smoke.py -v  # a real server

Against a real server every key lives under a random prefix, and exactly those
keys are deleted afterwards (SCAN MATCH prefix, then DEL): nothing else in that
database is read, changed or flushed.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable

import fakeredis
import pytest
import redis.asyncio as aioredis

from backend.workers.models import Claim, Job, JobError, JobSpec, JobState, WorkerInfo
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff

MakeStore = Callable[[], RedisJobStore]
BOOM = JobError("RuntimeError", "boom")


@pytest.fixture
async def make_store() -> AsyncIterator[MakeStore]:
    """Builds RedisJobStores on one backend (each with its own connection), all under one prefix."""
    url = os.environ.get("REDIS_URL")
    prefix = f"bbsmoke-{uuid.uuid4().hex[:12]}"
    server = fakeredis.FakeServer()
    made: list[RedisJobStore] = []

    def build() -> RedisJobStore:
        if url:
            store = RedisJobStore.from_url(url, prefix=prefix)
        else:
            client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
            store = RedisJobStore(client, prefix=prefix)
        made.append(store)
        return store

    try:
        yield build
    finally:
        for store in made:
            await store.close()
        if url:
            client = aioredis.Redis.from_url(url, decode_responses=True)
            try:
                keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


def claim_of(job: Job) -> Claim:
    assert job.token is not None
    return Claim(job.queue, job.id, job.token)


async def claim_soon(store: RedisJobStore, within: float = 5.0) -> Job:
    deadline = time.monotonic() + within
    while True:
        jobs = await store.claim("smoke-worker", ["default"], 1, 30)
        if jobs:
            return jobs[0]
        assert time.monotonic() < deadline, "no job became claimable"
        await asyncio.sleep(0.05)


async def test_exclusive_claiming(make_store: MakeStore) -> None:
    """Only one worker claims each job, with several workers racing on separate connections."""
    producer = make_store()
    jobs = await producer.enqueue_many([JobSpec("smoke.noop", args=[i]) for i in range(300)])
    workers = [make_store() for _ in range(10)]

    async def drain(index: int, store: RedisJobStore) -> list[str]:
        taken: list[str] = []
        while batch := await store.claim(f"worker-{index}", ["default"], 3, 60):
            taken += [job.id for job in batch]
            await asyncio.sleep(0)
        return taken

    results = await asyncio.gather(*(drain(i, store) for i, store in enumerate(workers)))
    claimed = Counter(job_id for taken in results for job_id in taken)
    assert set(claimed) == {job.id for job in jobs}
    assert set(claimed.values()) == {1}, "a job was claimed twice"
    assert (await producer.counts())["default"]["running"] == 300


async def test_retry_scheduling_with_correct_backoff(make_store: MakeStore) -> None:
    """A failed job is rescheduled after a delay within its backoff bounds, then runs again."""
    store = make_store()
    backoff = Backoff(base=0.6, cap=0.9, jitter=0.5)  # 0.3-0.6 s, then 0.45-0.9 s (capped)
    job = await store.enqueue(JobSpec("smoke.fail", max_attempts=4, backoff=backoff))
    for attempt in (1, 2, 3):
        running = await claim_soon(store)
        assert running.id == job.id and running.attempts == attempt
        before = time.time()
        assert await store.fail(claim_of(running), BOOM) is JobState.RETRY_SCHEDULED
        after = time.time()
        waiting = await store.get(job.id)
        assert waiting is not None and waiting.state is JobState.RETRY_SCHEDULED and waiting.run_at
        low, high = backoff.bounds(attempt)
        assert before + low - 0.05 <= waiting.run_at <= after + high + 0.05
        assert await store.claim("early", ["default"], 1, 30) == [], "claimable before its backoff passed"
    metrics = (await store.metrics()).queues["default"]
    assert metrics.retries == {"smoke.fail": 3}
    assert metrics.runs == {("smoke.fail", "retry"): 3}


async def test_state_transitions_enqueued_running_done(make_store: MakeStore) -> None:
    """enqueued → running → done, each step visible to another client."""
    store, observer = make_store(), make_store()
    job = await store.enqueue(JobSpec("smoke.echo", args=["hi"]))
    assert job.state is JobState.ENQUEUED
    seen = await observer.get(job.id)
    assert seen is not None and seen.state is JobState.ENQUEUED
    (running,) = await store.claim("smoke-worker", ["default"], 1, 30)
    assert running.state is JobState.RUNNING and running.worker == "smoke-worker"
    seen = await observer.get(job.id)
    assert seen is not None and seen.state is JobState.RUNNING
    assert await store.complete(claim_of(running), ["hi"], duration=0.01) is JobState.DONE
    done = await observer.get(job.id)
    assert done is not None and done.state is JobState.DONE and done.result == ["hi"]
    assert done.finished_at is not None and done.finished_at >= (done.started_at or 0)
    counts = (await observer.counts())["default"]
    assert (counts["enqueued"], counts["running"], counts["done"]) == (0, 0, 1)


async def test_attempts_tracking(make_store: MakeStore) -> None:
    """Each claim counts one attempt, a shutdown release does not, and the last one fails the job."""
    store = make_store()
    job = await store.enqueue(JobSpec("smoke.fail", max_attempts=3))
    running = await claim_soon(store)
    assert running.attempts == 1
    assert await store.release([claim_of(running)]) == 1
    released = await store.get(job.id)
    assert released is not None and released.attempts == 0 and released.state is JobState.ENQUEUED
    for attempt in (1, 2, 3):
        running = await claim_soon(store)
        assert running.attempts == attempt
        await store.fail(claim_of(running), BOOM, retry_delay=0)
    failed = await store.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.attempts == 3 and failed.last_error == BOOM


async def test_worker_registration_and_deregistration(make_store: MakeStore) -> None:
    store = make_store()
    info = WorkerInfo(id="smoke-w1", host="host-a", pid=4242, queues=["default"], concurrency=2)
    await store.register_worker(info)
    await store.register_worker(WorkerInfo(id="smoke-w2", host="host-b", pid=7))
    listed = await store.list_workers()
    assert [w.id for w in listed] == ["smoke-w1", "smoke-w2"]
    assert (listed[0].host, listed[0].pid, listed[0].queues, listed[0].concurrency) == (
        "host-a", 4242, ["default"], 2,
    )
    assert listed[0].started_at > 0
    await store.deregister_worker("smoke-w1")
    assert [w.id for w in await store.list_workers()] == ["smoke-w2"]
    await store.deregister_worker("smoke-w2")
    assert await store.list_workers() == []


async def test_heartbeats_recorded(make_store: MakeStore) -> None:
    """A heartbeat refreshes the worker's entry and extends its jobs' leases."""
    store = make_store()
    info = WorkerInfo(id="smoke-hb", queues=["default"])
    await store.register_worker(info)
    (registered,) = await store.list_workers()
    await store.enqueue(JobSpec("smoke.sleep"))
    (running,) = await store.claim(info.id, ["default"], 1, 0.8)
    await asyncio.sleep(0.2)
    reply = await store.heartbeat(info, [claim_of(running)], 30)
    stale, vanished = reply.stale, reply.vanished
    assert (stale, vanished) == ([], False)
    (beating,) = await store.list_workers()
    assert beating.last_heartbeat > registered.last_heartbeat and beating.running == 1
    assert 0 <= (await store.metrics()).heartbeat_ages["smoke-hb"] < 30
    await asyncio.sleep(0.8)  # past the claim's first lease: the heartbeat extended it
    assert await store.recover() == 0
    job = await store.get(running.id)
    assert job is not None and job.state is JobState.RUNNING and job.token == running.token
