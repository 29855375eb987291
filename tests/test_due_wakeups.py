"""An idle worker starts a delayed job, or a retry, when it is due, not at its next heartbeat.

The worker blocks on the store's wake-up list with a timeout of the next due time it knows of.
A job scheduled while it waits (a delayed enqueue, or a retry that its own report schedules after
the claim loop went to sleep) must wake it, so it can wait for the new due time instead. The
heartbeat here is 5 s (the default), so a job found only by the heartbeat starts seconds late.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from backend.config import Settings
from backend.workers.handlers import HandlerRegistry, default_registry
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Job, JobSpec, JobState
from backend.workers.orchestration import Worker
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff
from tests.redis_server import delete_keys

LATE = 2.0  # seconds: well under the 5 s heartbeat that used to find these jobs


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RedisJobStore]:
    if request.param == "memory":
        built: RedisJobStore = MemoryJobStore()
    else:
        prefix = request.getfixturevalue("prefix")
        built = RedisJobStore.from_url(request.getfixturevalue("redis_url"), prefix=prefix)
    yield built
    if request.param == "redis":
        await delete_keys(built.redis, built.keys.prefix)
    await built.close()


@pytest.fixture
async def worker(store: RedisJobStore) -> AsyncIterator[Worker]:
    registry = HandlerRegistry()
    for name in ("bagbot.noop", "bagbot.fail"):
        builtin = default_registry.get(name)
        assert builtin is not None
        registry.add(builtin)
    runner = Worker(store, Settings(heartbeat_seconds=5.0, concurrency=4), registry, worker_id="w-due")
    await runner.start()
    await asyncio.sleep(0.3)  # idle: blocked on the wake-up list
    yield runner
    await runner.stop()


async def until_done(store: RedisJobStore, job: Job, timeout: float = 15.0) -> Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await store.get(job.id, job.queue)
        if current is not None and current.state is JobState.DONE:
            return current
        assert asyncio.get_running_loop().time() < deadline, f"{job.id} not done: {current}"
        await asyncio.sleep(0.02)


async def test_a_delayed_job_starts_when_due_on_an_idle_worker(store: RedisJobStore, worker: Worker) -> None:
    job = await store.enqueue(JobSpec("bagbot.noop", delay=0.5))
    done = await until_done(store, job)
    assert done.started_at is not None and done.run_at is not None
    assert done.started_at - done.run_at < LATE


async def test_a_retry_starts_when_due_on_an_idle_worker(store: RedisJobStore, worker: Worker) -> None:
    job = await store.enqueue(JobSpec("bagbot.fail", kwargs={"times": 1}, backoff=Backoff(0.2, 0.2, 0.0)))
    done = await until_done(store, job)
    assert done.attempts == 2 and done.started_at is not None and done.run_at is not None
    assert done.started_at - done.run_at < LATE
