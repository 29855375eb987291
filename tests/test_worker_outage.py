"""Redis restarted under a running worker: it keeps running, logs once, reconnects and resumes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff
from tests.redis_server import RedisServer, start_server
from tests.worker_procs import WorkerProcess, eventually, read_records, worker_env

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]
PREFIX = "bbtest-outage"


def private_server(persistent: bool) -> RedisServer:
    """A Redis of our own on a fixed port, so it can be stopped and started again under the worker."""
    extra = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
    return start_server(*extra)


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    server = private_server(persistent=True)
    yield server
    server.cleanup()


@pytest.fixture
def volatile_redis() -> Iterator[RedisServer]:
    server = private_server(persistent=False)
    yield server
    server.cleanup()


@pytest.fixture
async def worker_factory(tmp_path: Path) -> AsyncIterator[list[WorkerProcess]]:
    procs: list[WorkerProcess] = []
    yield procs
    for proc in procs:
        proc.stop()


async def test_result_finished_during_an_outage_is_reported_when_redis_is_back(
    persistent_redis: RedisServer, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    record = tmp_path / "record.txt"
    env = worker_env(persistent_redis.url, PREFIX, record, BAGBOT_LEASE_SECONDS="20")
    worker = WorkerProcess(tmp_path, "worker", env)
    worker_factory.append(worker)
    await worker.wait_for_log("✓ Worker registration successful")
    store = RedisJobStore.from_url(persistent_redis.url, prefix=PREFIX)
    try:
        job = await store.enqueue(JobSpec("tests.sleeper", args=[1.5]))

        async def started() -> bool:
            return any(ex.job_id == job.id for ex in read_records(record))

        await eventually(started, 30, "job started")
        persistent_redis.stop()  # graceful: the AOF keeps the running job
        await worker.wait_for_log("event=store_unavailable")

        async def ended() -> bool:
            return any(ex.event == "end" for ex in read_records(record))

        await eventually(ended, 30, "job ended while Redis was down")
        persistent_redis.start()
        await worker.wait_for_log("event=store_back", timeout=30)

        async def done() -> bool:
            got = await store.get(job.id)
            return got is not None and got.state is JobState.DONE

        await eventually(done, 30, "job done after the outage")
        got = await store.get(job.id)
        assert got is not None and got.attempts == 1 and got.result == "slept"
        assert [ex.event for ex in read_records(record)] == ["start", "end"]  # ran once, reported later

        more = await store.enqueue_many([JobSpec("tests.record") for _ in range(20)])

        async def more_done() -> bool:
            return (await store.counts())["default"]["done"] == 1 + len(more)

        await eventually(more_done, 30, "work after the outage")
    finally:
        await store.close()
    log = worker.log()
    assert log.count("event=store_unavailable") == 1, log  # one line per outage, no storm
    assert log.count("event=store_back") == 1
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_worker_survives_redis_losing_its_data(
    volatile_redis: RedisServer, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    record = tmp_path / "record.txt"
    worker = WorkerProcess(tmp_path, "worker", worker_env(volatile_redis.url, PREFIX, record))
    worker_factory.append(worker)
    await worker.wait_for_log("✓ Heartbeats being sent")
    volatile_redis.kill()  # no persistence: everything is gone
    await worker.wait_for_log("event=store_unavailable")
    volatile_redis.start()
    await worker.wait_for_log("worker entry vanished (Redis lost data?) – re-registered", timeout=30)
    store = RedisJobStore.from_url(volatile_redis.url, prefix=PREFIX)
    try:
        assert [w.pid for w in await store.list_workers()] == [worker.pid]
        jobs = await store.enqueue_many([JobSpec("tests.record") for _ in range(50)])

        async def all_done() -> bool:
            return (await store.counts())["default"]["done"] == len(jobs)

        await eventually(all_done, 30, "work after Redis came back empty")
    finally:
        await store.close()
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_outage_longer_than_the_lease_never_loses_or_overwrites(
    persistent_redis: RedisServer, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    """Redis is down past the job's lease: the kept result is either still accepted (nobody
    recovered the job yet) or rejected as stale and the job runs again. Never lost, never both."""
    record = tmp_path / "record.txt"
    worker = WorkerProcess(tmp_path, "worker", worker_env(persistent_redis.url, PREFIX, record))
    worker_factory.append(worker)
    await worker.wait_for_log("✓ Worker registration successful")
    store = RedisJobStore.from_url(persistent_redis.url, prefix=PREFIX)
    try:
        job = await store.enqueue(JobSpec("tests.sleeper", args=[0.5], backoff=Backoff(0.2, jitter=0)))

        async def started() -> bool:
            return any(ex.job_id == job.id for ex in read_records(record))

        await eventually(started, 30, "job started")
        persistent_redis.stop()
        await asyncio.sleep(4.0)  # twice the 2 s lease, on Redis's (wall) clock
        assert [ex.event for ex in read_records(record)] == ["start", "end"]
        persistent_redis.start()

        async def done() -> bool:
            got = await store.get(job.id)
            return got is not None and got.state is JobState.DONE

        await eventually(done, 30, "job done after the outage")
        got = await store.get(job.id)
        assert got is not None
        starts = [ex for ex in read_records(record) if ex.event == "start"]
        if got.attempts == 1:  # the report arrived before anyone recovered the lease
            assert len(starts) == 1
        else:  # recovered first: the late report was refused, the job ran again
            # Usually 2 attempts, each started once. Under load a re-run's lease (or a claim whose
            # reply was lost while reconnecting) can also run out first: that costs one more
            # attempt, never a lost job nor a run without its attempt being counted.
            assert got.attempts >= len(starts) >= 2
            assert got.last_error is not None and got.last_error.type == "LeaseExpired"
            assert "event=job_outcome_discarded" in worker.log()
    finally:
        await store.close()
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0
