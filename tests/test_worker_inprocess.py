"""The worker in-process on the memory store: handler policy, timeouts, stale claims, sync handlers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from backend.config import Settings
from backend.workers.handlers import HandlerRegistry, current_job, default_registry
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Claim, Job, JobSpec, JobState
from backend.workers.orchestration import Worker
from backend.workers.rules import Backoff

SETTINGS = Settings(heartbeat_seconds=0.1, lease_seconds=1.0, concurrency=4, shutdown_grace_seconds=2.0)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def finished(store: MemoryJobStore, job: Job, timeout: float = 20.0) -> Job:
    async def terminal() -> bool:
        current = await store.get(job.id)
        return current is not None and current.is_terminal

    await eventually(terminal, timeout)
    final = await store.get(job.id)
    assert final is not None
    return final


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry()


@pytest.fixture
async def store() -> AsyncIterator[MemoryJobStore]:
    mem = MemoryJobStore()
    yield mem
    await mem.close()


@pytest.fixture
async def worker(store: MemoryJobStore, registry: HandlerRegistry) -> AsyncIterator[Worker]:
    for name in ("bagbot.noop", "bagbot.echo", "bagbot.sleep", "bagbot.fail"):
        builtin = default_registry.get(name)
        assert builtin is not None
        registry.add(builtin)
    w = Worker(store, SETTINGS, registry, worker_id="w-test")
    await w.start()
    yield w
    await w.stop()


async def test_builtins_end_to_end(store: MemoryJobStore, worker: Worker) -> None:
    echo = await store.enqueue(JobSpec("bagbot.echo", args=[1, "a"], kwargs={"k": True}))
    plain = await store.enqueue(JobSpec("bagbot.echo", args=[1, 2]))
    fail = await store.enqueue(JobSpec("bagbot.fail", kwargs={"times": 2}, backoff=Backoff(0.01, jitter=0)))
    noop = await store.enqueue(JobSpec("bagbot.noop"))
    assert (await finished(store, echo)).result == {"args": [1, "a"], "kwargs": {"k": True}}
    assert (await finished(store, plain)).result == [1, 2]
    assert (await finished(store, noop)).state is JobState.DONE
    done = await finished(store, fail)
    assert done.state is JobState.DONE and done.attempts == 3
    assert done.result == {"attempt": 3, "failed_before": 2}


async def test_unknown_handler_is_handed_back_then_fails_after_the_grace_time(store: MemoryJobStore) -> None:
    """No worker has the handler: handed back (uncounted) until the grace time has passed, then
    UnknownHandler (tests/test_rolling_deploy.py does it with real processes and a mixed fleet)."""
    settings = replace(SETTINGS, unknown_handler_grace_seconds=0.5)
    w = Worker(store, settings, HandlerRegistry(), worker_id="w-lacks-it")
    await w.start()
    try:
        job = await store.enqueue(JobSpec("no.such.handler", max_attempts=5))
        started = await store.server_time()
        final = await finished(store, job)
    finally:
        await w.stop()
    assert final.state is JobState.FAILED and final.attempts == 1
    assert final.finished_at is not None and final.finished_at - started >= 0.5
    assert final.last_error is not None and final.last_error.type == "UnknownHandler"
    assert "no.such.handler" in final.last_error.message


async def test_timeout_is_a_failed_attempt(store: MemoryJobStore, worker: Worker) -> None:
    spec = JobSpec("bagbot.sleep", args=[30], timeout=0.1, max_attempts=2, backoff=Backoff(0.01, jitter=0))
    final = await finished(store, await store.enqueue(spec))
    assert final.state is JobState.FAILED and final.attempts == 2
    assert final.last_error is not None and final.last_error.type == "JobTimeout"


async def test_handler_policy(store: MemoryJobStore, registry: HandlerRegistry, worker: Worker) -> None:
    @registry.task("t.bad_input", no_retry=(ValueError,))
    async def bad_input() -> None:
        raise ValueError("never works")

    @registry.task("t.capped", max_attempts=2, backoff=Backoff(0.01, jitter=0))
    def capped() -> None:
        raise RuntimeError("sync failure")

    @registry.task("t.not_json")
    async def not_json() -> object:
        return {1, 2}

    @registry.task("t.timeout", timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(10)

    results = {}
    for name in ("t.bad_input", "t.capped", "t.not_json", "t.timeout"):
        given = None if name == "t.capped" else 5  # t.capped: the handler's max_attempts applies
        job = await store.enqueue(JobSpec(name, max_attempts=given, backoff=Backoff(0.01, jitter=0)))
        results[name] = await finished(store, job)
    assert results["t.bad_input"].attempts == 1 and results["t.bad_input"].state is JobState.FAILED
    assert results["t.capped"].attempts == 2 and results["t.capped"].last_error is not None
    assert results["t.capped"].last_error.message == "sync failure"
    not_json_error = results["t.not_json"].last_error
    assert results["t.not_json"].attempts == 1 and not_json_error is not None
    assert not_json_error.type == "NonJsonResult" and "JSON" in not_json_error.message
    assert results["t.timeout"].attempts == 5
    timeout_error = results["t.timeout"].last_error
    assert timeout_error is not None and timeout_error.type == "JobTimeout"


async def test_sync_handler_does_not_block_the_loop(
    store: MemoryJobStore, registry: HandlerRegistry, worker: Worker
) -> None:
    release = threading.Event()

    @registry.task("t.blocker")
    def blocker() -> dict[str, object]:
        # Blocks its thread until the test, running on the event loop, sets the event:
        # only possible if this thread is not the loop's.
        ctx = current_job()
        released = release.wait(timeout=30)
        return {"released": released, "job": ctx.job_id, "thread": threading.current_thread().name}

    blocked = await store.enqueue(JobSpec("t.blocker"))

    async def running() -> bool:
        job = await store.get(blocked.id)
        return job is not None and job.state is JobState.RUNNING

    await eventually(running)
    other = await finished(store, await store.enqueue(JobSpec("bagbot.echo", args=["meanwhile"])))
    assert other.state is JobState.DONE
    release.set()
    final = await finished(store, blocked)
    assert final.state is JobState.DONE
    assert final.result["released"] is True and final.result["job"] == blocked.id
    assert final.result["thread"] != threading.current_thread().name


async def test_lost_lease_cancels_the_handler_and_reports_nothing(
    store: MemoryJobStore, registry: HandlerRegistry, worker: Worker
) -> None:
    runs: list[str] = []

    @registry.task("t.hang_once")
    async def hang_once() -> str:
        runs.append("start")
        if len(runs) == 1:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                runs.append("cancelled")
                raise
        return "second run"

    job = await store.enqueue(JobSpec("t.hang_once"))
    await eventually(lambda: _true(len(runs) == 1))
    current = await store.get(job.id)
    assert current is not None and current.token is not None
    # Another actor takes the job away (as lease expiry would): the old claim is stale now.
    assert await store.release([Claim(current.queue, current.id, current.token)]) == 1
    final = await finished(store, job)
    assert final.state is JobState.DONE and final.result == "second run"
    # the next heartbeat learns the first claim is stale and cancels that handler
    await eventually(lambda: _true("cancelled" in runs))
    assert sorted(runs) == ["cancelled", "start", "start"]
    assert worker.outcomes_discarded == 0


async def test_graceful_stop_releases_unfinished_jobs(
    store: MemoryJobStore, registry: HandlerRegistry
) -> None:
    registry.add(default_registry.get("bagbot.sleep"))  # type: ignore[arg-type]
    settings = replace(SETTINGS, shutdown_grace_seconds=0.5)
    w = Worker(store, settings, registry, worker_id="w-stop")
    await w.start()
    short = await store.enqueue(JobSpec("bagbot.sleep", args=[0.1]))
    long = await store.enqueue(JobSpec("bagbot.sleep", args=[60]))

    async def both_running() -> bool:
        return w.running == 2

    await eventually(both_running)
    await w.stop()
    assert (await store.get(short.id)).state is JobState.DONE  # type: ignore[union-attr]
    back = await store.get(long.id)
    assert back is not None and back.state is JobState.ENQUEUED and back.attempts == 0
    assert await store.list_workers() == []


def test_registry_rejects_a_second_function_under_a_taken_name(registry: HandlerRegistry) -> None:
    @registry.task("t.same")
    def first() -> None: ...

    def second() -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        registry.task("t.same")(second)

    @registry.task
    def bare() -> None: ...

    assert "bare" in registry and registry.get("t.same") is not None


def test_current_job_outside_a_job() -> None:
    with pytest.raises(LookupError):
        current_job()


async def _true(value: bool) -> bool:
    return value


async def test_scheduled_job_starts_when_due_without_an_enqueue_to_wake_it(
    store: MemoryJobStore, worker: Worker
) -> None:
    await asyncio.sleep(0.05)  # the worker is idle, blocked in wait_for_jobs
    job = await store.enqueue(JobSpec("bagbot.echo", args=["later"], delay=0.3))
    assert job.state is JobState.SCHEDULED and job.run_at is not None
    final = await finished(store, job)
    assert final.state is JobState.DONE and final.result == ["later"]
    assert final.started_at is not None and final.started_at >= job.run_at


async def test_embedded_worker_counters_and_registry(store: MemoryJobStore, worker: Worker) -> None:
    jobs = [await store.enqueue(JobSpec("bagbot.noop")) for _ in range(20)]
    for job in jobs:
        await finished(store, job)
    await eventually(lambda: _true(worker.jobs_done == 20))
    (info,) = await store.list_workers()
    assert info.id == "w-test" and info.concurrency == SETTINGS.concurrency
