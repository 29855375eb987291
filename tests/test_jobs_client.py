"""The application's API (`backend.jobs`): typed tasks, handles, results, the memory refusal, run_at.

Runs an in-process Worker on a real Redis (and on the memory store where the point is the
memory store), enqueueing only through `backend.jobs`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

import backend.client.handle as handle_mod
import backend.client.watch as watch_mod
from backend.client.watch import QueueFeed
from backend.config import Settings
from backend.jobs import (
    Client,
    ClientConfigError,
    InvalidJobError,
    JobCancelled,
    JobFailed,
    JobState,
    Progress,
    report_progress,
    task,
)
from backend.workers.handlers import HandlerRegistry
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import JobSpec
from backend.workers.orchestration import Worker
from backend.workers.redis_job_store import RedisJobStore

SETTINGS = Settings(heartbeat_seconds=0.2, lease_seconds=2.0, queues=("default", "other"))
registry = HandlerRegistry()


@task("client.add", registry=registry)
async def add(x: int, y: int = 1) -> int:
    return x + y


@task("client.shout", registry=registry, max_attempts=1)
def shout(text: str, *, times: int = 1) -> str:
    return (text.upper() + "!") * times


class Boom(RuntimeError):
    pass


@task("client.boom", registry=registry, max_attempts=1)
async def boom(reason: str) -> None:
    raise Boom(reason)


@task("client.slow", registry=registry, max_attempts=1)
async def slow(seconds: float) -> str:
    report_progress(0.5, "half")
    await asyncio.sleep(seconds)
    return "slept"


@pytest.fixture
async def client(redis_store: RedisJobStore) -> AsyncIterator[Client]:
    worker = Worker(redis_store, SETTINGS, registry, worker_id="w-client")
    await worker.start()
    try:
        async with Client(redis_store, owns_store=False) as opened:
            yield opened
    finally:
        await worker.stop()


def test_a_task_is_still_the_plain_function() -> None:
    assert shout("hi", times=2) == "HI!HI!"
    assert asyncio.run(add(2, y=3)) == 5
    assert add.__name__ == "add" and add.__doc__ is None
    handler = registry.get("client.add")
    assert handler is not None and handler.is_async and handler.fn is add.fn
    assert registry.get("client.boom") is not None and registry.get("client.boom").max_attempts == 1  # type: ignore[union-attr]


async def test_typed_results_come_back(client: Client) -> None:
    first = await client.enqueue(add, 2, y=40)
    second = await add.with_options(queue="other", priority=5).enqueue(1)  # the default client: `async with`
    assert second.queue == "other"
    assert await first.result(timeout=30) == 42
    assert await second.result(timeout=30) == 2
    text = await client.enqueue(shout, "hey", times=2)
    assert await text.result(timeout=30) == "HEY!HEY!"
    assert await text.status() is JobState.DONE
    again = client.job(first.id)  # a handle of an existing job, by id
    assert await again.result(timeout=5) == 42


async def test_options_are_not_mixed_into_the_handlers_kwargs(client: Client) -> None:
    handle = await add.with_options(id="opt-1", max_attempts=7, timeout=9, unique_key="u1").enqueue(1, y=2)
    job = await handle.info()
    assert (job.id, job.max_attempts, job.timeout, job.unique_key) == ("opt-1", 7, 9, "u1")
    assert job.kwargs == {"y": 2} and job.args == [1]
    assert await handle.result(timeout=30) == 3


async def test_a_failing_job_raises_job_failed_with_the_handlers_error(client: Client) -> None:
    handle = await client.enqueue(boom, "disk on fire")
    with pytest.raises(JobFailed) as caught:
        await handle.result(timeout=30)
    assert caught.value.error.type == "Boom" and caught.value.error.message == "disk on fire"
    assert "disk on fire" in str(caught.value) and "Boom" in caught.value.error.traceback


async def test_cancel_and_timeout(client: Client) -> None:
    later = await add.with_options(delay=3600).enqueue(1)
    assert await later.status() is JobState.SCHEDULED
    assert await later.cancel() is JobState.CANCELLED
    with pytest.raises(JobCancelled):
        await later.result(timeout=5)
    running = await client.enqueue(slow, 60)
    with pytest.raises(TimeoutError):
        await running.result(timeout=0.3)
    for _ in range(600):  # the worker writes progress at most every 0.5 s
        if (await running.progress()).message == "half":
            break
        await asyncio.sleep(0.05)
    assert await running.progress() == Progress(0.5, "half")
    await running.cancel()  # a running job: asked to stop, its worker stops it at a heartbeat
    with pytest.raises(JobCancelled):
        await running.result(timeout=30)


async def test_waiting_wakes_on_job_events_not_on_polling(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the client's subscription is in place, with every re-read an hour apart, only the
    job's events can end the wait in time."""
    warm = await client.enqueue(slow, 0.5)  # the queue's subscription is made and settles meanwhile
    assert (await warm.info()).events  # enqueue asks for events: one PUBLISH per state change
    assert await warm.result(timeout=30) == "slept"
    monkeypatch.setattr(handle_mod, "RECHECK_SECONDS", 3600.0)
    monkeypatch.setattr(handle_mod, "SETTLE_RECHECK_SECONDS", 3600.0)
    monkeypatch.setattr(watch_mod, "SETTLE_SECONDS", 0.0)
    handle = await client.enqueue(slow, 0.2)
    assert await handle.result(timeout=30) == "slept"


async def test_a_missed_event_is_covered_by_the_slow_re_read(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def deaf(self: QueueFeed) -> None:
        await asyncio.Event().wait()  # subscribed to nothing: every event lost

    monkeypatch.setattr(QueueFeed, "_dispatch", deaf)
    monkeypatch.setattr(handle_mod, "RECHECK_SECONDS", 0.2)
    handle = await client.enqueue(slow, 0.1)
    assert await handle.result(timeout=30) == "slept"


async def test_fresh_clients_one_after_another_all_get_their_results(
    redis_store: RedisJobStore, client: Client, redis_url: str, prefix: str
) -> None:
    """A new client's first wait races its own subscription, and closing it must not hang on a
    cancel redis-py swallowed while connecting (it did: results timed out, closes took 1 s+)."""
    env = {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix}
    for n in range(12):
        fresh = Client.from_env(env)
        try:
            assert await (await fresh.enqueue(add, n)).result(timeout=10) == n + 1
        finally:
            await asyncio.wait_for(fresh.close(), 10)


async def test_a_job_without_events_costs_nothing_and_can_still_be_awaited(client: Client) -> None:
    handle = await add.with_options(events=False).enqueue(5)
    assert not (await handle.info()).events
    assert await handle.result(timeout=30) == 6


async def test_enqueue_by_name_for_callers_without_the_handler(client: Client) -> None:
    handle = await client.enqueue_name("client.add", [1], {"y": 1}, queue="other")
    assert await handle.result(timeout=30) == 2


async def test_run_at_takes_an_aware_datetime_and_refuses_a_naive_one(client: Client) -> None:
    when = datetime.now(UTC) + timedelta(hours=2)
    handle = await add.with_options(run_at=when).enqueue(1)
    job = await handle.info()
    assert job.state is JobState.SCHEDULED and job.run_at == pytest.approx(when.timestamp(), abs=0.01)
    with pytest.raises(InvalidJobError, match="no time zone"):
        await add.with_options(run_at=datetime.now()).enqueue(1)  # naive on purpose
    with pytest.raises(InvalidJobError, match="no time zone"):
        JobSpec("x", run_at=datetime.now())  # type: ignore[arg-type]  # was a raw TypeError
    assert JobSpec("x", run_at=when).run_at == when.timestamp()  # type: ignore[arg-type]


def test_from_env_refuses_a_memory_store_saying_what_to_set() -> None:
    for env in ({}, {"JOB_STORE": "memory"}):
        with pytest.raises(ClientConfigError) as caught:
            Client.from_env(env)
        text = str(caught.value)
        assert "JOB_STORE=redis" in text and "REDIS_URL" in text and "no worker" in text
    with pytest.raises(ClientConfigError):
        Client.sync_from_env({})


async def test_a_memory_store_with_no_worker_in_this_process_is_refused() -> None:
    store = MemoryJobStore()
    plain = Client(store, owns_store=False)
    with pytest.raises(ClientConfigError, match="no worker runs in this process"):
        await plain.enqueue(add, 1)
    assert (await store.counts()) == {} or sum(sum(c.values()) for c in (await store.counts()).values()) == 0
    worker = Worker(store, SETTINGS, registry, worker_id="w-mem")
    await worker.start()
    try:
        async with Client(store) as client:
            assert await (await client.enqueue(add, 1)).result(timeout=30) == 2
    finally:
        await worker.stop()


async def test_the_sync_facade_needs_no_event_loop(
    redis_url: str, prefix: str, client: Client
) -> None:
    env = {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix}

    def script() -> tuple[int, str]:
        with Client.sync_from_env(env) as jobs:
            total = jobs.enqueue(add, 20, y=1).result(timeout=30)
            failing = jobs.enqueue(boom, "nope")
            try:
                failing.result(timeout=30)
            except JobFailed as exc:
                return total, exc.error.message
        raise AssertionError("no JobFailed")

    assert await asyncio.to_thread(script) == (21, "nope")
