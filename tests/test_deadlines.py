"""Job timeouts on one timer (backend/workers/deadlines.py): each expires on time whatever the
order of arming, a handler that swallows the cancellation keeps its result (as under
asyncio.timeout), a worker's own cancel still wins, and the heap stays small.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from backend.config import Settings
from backend.workers.deadlines import COMPACT_SLACK, Deadlines
from backend.workers.execution import Execution
from backend.workers.handlers import HandlerRegistry
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Claim, Job, JobSpec
from backend.workers.progress import ProgressWriter
from backend.workers.worker_state import Run

WORKER = "w-deadlines"
SETTINGS = Settings(job_timeout_seconds=30.0)


@pytest.fixture
async def store() -> AsyncIterator[MemoryJobStore]:
    mem = MemoryJobStore()
    yield mem
    await mem.close()


def fake_run(job_id: str = "j") -> Run:
    return Run(job=Job(id=job_id, name="t"), claim=Claim("default", job_id, "tok"), started=time.monotonic())


async def claimed(store: MemoryJobStore, spec: JobSpec) -> Run:
    await store.enqueue(spec)
    (job,) = await store.claim(WORKER, ["default"], 1, 30.0)
    return Run(job=job, claim=Claim(job.queue, job.id, job.token or ""), started=time.monotonic())


async def test_a_short_deadline_armed_after_a_long_one_expires_on_time() -> None:
    deadlines, loop = Deadlines(), asyncio.get_running_loop()
    long_run, short_run = fake_run("long"), fake_run("short")

    async def armed(run: Run, seconds: float) -> float:
        deadlines.arm(run, loop.time() + seconds, loop)
        started = loop.time()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        return loop.time() - started

    long_task = asyncio.create_task(armed(long_run, 30.0))
    await asyncio.sleep(0)
    waited = await asyncio.create_task(armed(short_run, 0.05))
    assert short_run.timed_out and 0.04 <= waited < 1.0
    assert not long_run.timed_out and long_run.deadline is not None
    deadlines.disarm(long_run)
    long_task.cancel()


async def test_disarmed_runs_are_compacted_away() -> None:
    deadlines, loop = Deadlines(), asyncio.get_running_loop()
    for index in range(1000):
        run = fake_run(str(index))
        deadlines.arm(run, loop.time() + 30.0, loop)
        deadlines.disarm(run)
    assert len(deadlines._heap) <= 2 + COMPACT_SLACK


async def test_a_handler_that_swallows_the_timeout_keeps_its_result(store: MemoryJobStore) -> None:
    registry = HandlerRegistry()

    @registry.task("t.stubborn")
    async def stubborn() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "finished anyway"
        return "slept"

    execution = Execution(registry, SETTINGS, WORKER, ProgressWriter(store, WORKER))
    run = await claimed(store, JobSpec("t.stubborn", timeout=0.05))
    completion = await asyncio.create_task(execution.execute(run))
    assert completion.error is None and completion.result == "finished anyway"
    assert run.timed_out


async def test_many_timeouts_each_fail_with_job_timeout(store: MemoryJobStore) -> None:
    registry = HandlerRegistry()

    @registry.task("t.hang")
    async def hang(seconds: float) -> None:
        await asyncio.sleep(seconds)

    execution = Execution(registry, SETTINGS, WORKER, ProgressWriter(store, WORKER))
    specs = [JobSpec("t.hang", args=[60], timeout=0.05 + 0.01 * (i % 3)) for i in range(6)]
    runs = [await claimed(store, spec) for spec in specs]
    quick = await claimed(store, JobSpec("t.hang", args=[0.01], timeout=5))
    started = time.monotonic()
    completions = await asyncio.gather(*(execution.execute(run) for run in [*runs, quick]))
    assert time.monotonic() - started < 5
    assert [c.error.type if c.error else None for c in completions] == ["JobTimeout"] * 6 + [None]
    assert execution.deadlines._armed == 0


async def test_a_cancel_by_the_worker_during_a_timeout_is_not_a_timeout(store: MemoryJobStore) -> None:
    registry = HandlerRegistry()

    @registry.task("t.slow_to_stop")
    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.1)  # still stopping when the worker cancels it too

    execution = Execution(registry, SETTINGS, WORKER, ProgressWriter(store, WORKER))
    run = await claimed(store, JobSpec("t.slow_to_stop", timeout=0.05))
    task = asyncio.create_task(execution.execute(run))
    await asyncio.sleep(0.08)  # the timeout expired, the handler is in its finally
    run.cancel_reason = "cancel"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
