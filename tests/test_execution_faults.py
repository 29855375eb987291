"""Handler faults in-process (the embedded worker, memory store): the fast half of
test_handler_faults.py, plus the unit behind "as much of the error as can be read"."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from backend.config import Settings
from backend.workers.handlers import HandlerRegistry
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import JobError, JobSpec, JobState
from backend.workers.orchestration import Worker
from tests.test_worker_inprocess import finished

SETTINGS = Settings(heartbeat_seconds=0.1, lease_seconds=1.0, concurrency=1, shutdown_grace_seconds=1.0)


class Unreadable(BaseException):
    def __str__(self) -> str:
        raise ValueError("no")

    def __repr__(self) -> str:
        raise ValueError("no")


def test_an_unreadable_exception_still_gives_its_type() -> None:
    error = JobError.from_exception(Unreadable())
    assert error.type == "Unreadable" and "both raised" in error.message


@pytest.fixture
async def store() -> AsyncIterator[MemoryJobStore]:
    mem = MemoryJobStore()
    yield mem
    await mem.close()


async def test_embedded_worker_survives_system_exit_and_keyboard_interrupt(store: MemoryJobStore) -> None:
    registry = HandlerRegistry()

    @registry.task("t.exit0")
    async def exit0() -> None:
        raise SystemExit(0)

    @registry.task("t.interrupt")
    def interrupt() -> None:
        raise KeyboardInterrupt

    @registry.task("t.ok")
    async def ok() -> str:
        return "ok"

    worker = Worker(store, SETTINGS, registry, worker_id="w-faults")
    await worker.start()
    try:
        for name, kind in (("t.exit0", "SystemExit"), ("t.interrupt", "KeyboardInterrupt")):
            job = await finished(store, await store.enqueue(JobSpec(name, max_attempts=1)))
            assert job.state is JobState.FAILED and job.last_error is not None and job.last_error.type == kind
        assert worker._task is not None and not worker._task.done()
        assert (await finished(store, await store.enqueue(JobSpec("t.ok")))).result == "ok"
    finally:
        await worker.stop()


async def test_a_runaway_thread_is_a_busy_slot(store: MemoryJobStore) -> None:
    registry = HandlerRegistry()
    release = threading.Event()

    @registry.task("t.stuck", timeout=0.2)
    def stuck() -> str:
        release.wait(30)
        return "late"

    @registry.task("t.quick", timeout=0.5)
    def quick() -> str:
        return "quick"

    worker = Worker(store, SETTINGS, registry, worker_id="w-runaway")
    await worker.start()
    try:
        runaway = await store.enqueue(JobSpec("t.stuck", max_attempts=1))
        await asyncio.sleep(0.5)  # well past its timeout: held, still running, slot taken
        assert (await store.get(runaway.id)).state is JobState.RUNNING  # type: ignore[union-attr]
        waiting = await store.enqueue(JobSpec("t.quick"))
        await asyncio.sleep(0.3)
        assert (await store.get(waiting.id)).state is JobState.ENQUEUED  # type: ignore[union-attr]
        release.set()
        timed_out = await finished(store, runaway)
        assert timed_out.last_error is not None and timed_out.last_error.type == "JobTimeout"
        done = await finished(store, waiting)
        assert done.state is JobState.DONE and done.attempts == 1
        assert worker.execution.runaway_threads == 0
    finally:
        release.set()
        await worker.stop()


async def test_a_result_whose_own_code_raises_fails_only_its_job(store: MemoryJobStore) -> None:
    registry = HandlerRegistry()

    class Key:
        def __repr__(self) -> str:
            raise SystemExit("from the result's __repr__")

    @registry.task("t.bad_result")
    async def bad_result() -> dict[object, int]:
        return {Key(): 1}

    worker = Worker(store, SETTINGS, registry, worker_id="w-result")
    await worker.start()
    try:
        job = await finished(store, await store.enqueue(JobSpec("t.bad_result")))
        assert job.state is JobState.FAILED and job.last_error is not None
        assert job.last_error.type == "NonJsonResult" and "__repr__" in job.last_error.message
        assert worker._task is not None and not worker._task.done()
    finally:
        await worker.stop()
