"""Progress reported by running handlers (async and sync), on real worker processes and Redis:
stored on the job record, rate-limited (one write per job per 0.5 s, the latest value wins),
fenced by the claim token, and announced as an event for jobs that opted in."""

from __future__ import annotations

import asyncio
import time

import pytest

from backend.workers.handlers import report_progress
from backend.workers.models import JobSpec, JobState
from backend.workers.orchestration import PROGRESS_INTERVAL
from backend.workers.redis_job_store import RedisJobStore
from tests.feature_workers import Spawner, wait_state

pytestmark = [pytest.mark.redis_only]


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


@pytest.mark.parametrize("handler", ["features.progress_async", "features.progress_sync"])
async def test_progress_shows_on_the_job_while_it_runs(
    store: RedisJobStore, spawner: Spawner, handler: str
) -> None:
    await spawner.start(1)
    seen: list[tuple[float, str]] = []
    events: list[str] = []

    async def listen() -> None:
        async for job_id, what in store.job_events(["default"]):
            if job_id == "p1":
                events.append(what)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.3)
    started = time.monotonic()
    job = await store.enqueue(JobSpec(handler, args=[60, 0.05], id="p1", events=True))  # ~3 s
    try:
        while True:
            current = await store.get(job.id)
            assert current is not None
            if current.progress is not None:
                seen.append((current.progress, current.progress_message or ""))
            if current.is_terminal:
                break
            await asyncio.sleep(0.1)
    finally:
        elapsed = time.monotonic() - started
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    assert current.state is JobState.DONE
    values = [value for value, _ in seen]
    assert len(set(values)) >= 2 and values == sorted(values)  # it moved, never backwards
    assert any(message.startswith(("step", "item")) for _, message in seen)
    # rate limit: at most one write per PROGRESS_INTERVAL (60 calls made), each one an event
    writes = events.count("progress")
    assert 2 <= writes <= elapsed / PROGRESS_INTERVAL + 2
    assert events[0] == "running" and events[-1] == "done"


def test_report_progress_outside_a_job_raises() -> None:
    with pytest.raises(LookupError):
        report_progress(0.5)


async def test_progress_of_a_finished_claim_is_refused(store: RedisJobStore) -> None:
    await store.enqueue(JobSpec("features.progress_async", args=[1], id="p2"))
    (job,) = await store.claim("w", ["default"], 1, 30)
    from backend.workers.models import Claim

    claim = Claim(job.queue, job.id, job.token or "")
    assert await store.progress(claim, 3, "three")
    await store.complete(claim)
    assert not await store.progress(claim, 4, "too late")
    final = await wait_state(store, job.id, JobState.DONE)
    assert (final.progress, final.progress_message) == (3.0, "three")
