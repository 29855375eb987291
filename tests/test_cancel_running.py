"""Cancel of a running job, with real worker processes on a real Redis.

`cancel` on a running job records a request; the worker sees it at its next heartbeat,
cancels the handler (async: CancelledError; sync: the thread runs on and its outcome is
discarded) and reports running -> cancelled, fenced by its claim token. The job is not retried.
"""

from __future__ import annotations

import functools

import pytest

from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.feature_workers import Spawner, wait_state
from tests.worker_procs import eventually, read_records

pytestmark = [pytest.mark.redis_only]


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


def events_of(spawner: Spawner, job_id: str) -> list[str]:
    return [ex.event for ex in read_records(spawner.record) if ex.job_id == job_id]


async def test_cancel_a_running_async_and_a_running_sync_job(store: RedisJobStore, spawner: Spawner) -> None:
    await spawner.start(2)
    slow_async = await store.enqueue(JobSpec("features.long_async", args=[60], id="slow-async"))
    slow_sync = await store.enqueue(JobSpec("features.long_sync", args=[4], id="slow-sync"))
    for job in (slow_async, slow_sync):
        await wait_state(store, job.id, JobState.RUNNING)
        await eventually(functools.partial(_has, spawner, job.id, "start"), 30, "handler started")

    for job in (slow_async, slow_sync):
        asked = await store.cancel(job.id)
        assert asked.state is JobState.RUNNING and asked.cancel_requested

    for job in (slow_async, slow_sync):
        final = await wait_state(store, job.id, JobState.CANCELLED, timeout=20)
        assert final.attempts == 1 and final.finished_at is not None and final.result is None
    # the async handler got CancelledError; the sync one could not be interrupted
    await eventually(lambda: _has(spawner, slow_async.id, "cancelled"), 10, "async handler cancelled")
    await eventually(lambda: _has(spawner, slow_sync.id, "end"), 30, "sync thread ran to its end")
    after = await store.get(slow_sync.id)
    assert after is not None and after.state is JobState.CANCELLED and after.result is None  # discarded
    assert events_of(spawner, slow_async.id) == ["start", "cancelled"]
    assert events_of(spawner, slow_sync.id) == ["start", "end"]  # one run each: not retried
    logs = "".join(proc.log() for proc in spawner.procs)
    assert "event=job_cancelled" in logs and "event=job_cancel_requested" in logs

    # a cancelled job can be retried and then runs to completion
    quick = await store.enqueue(JobSpec("features.long_async", args=[0.1], id="quick"))
    assert (await wait_state(store, quick.id, JobState.DONE)).result == "finished"


async def test_cancel_of_a_waiting_job_keeps_its_meaning(store: RedisJobStore) -> None:
    later = await store.enqueue(JobSpec("features.long_async", args=[1], delay=3600))
    cancelled = await store.cancel(later.id)
    assert cancelled.state is JobState.CANCELLED and not cancelled.cancel_requested


async def _has(spawner: Spawner, job_id: str, event: str) -> bool:
    return event in events_of(spawner, job_id)
