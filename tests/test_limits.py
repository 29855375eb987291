"""Hostile or oversized input gets a clear answer, and a full Redis refuses cleanly.

- enqueue of an argument that is not JSON raises InvalidJobError naming the field (every store);
- a result larger than the worker's limit is stored as a marker with a preview;
- Redis out of memory (maxmemory, noeviction): enqueue raises StoreFullError in Python and the CLI
  exits non-zero saying so, no half-written job is left, and a job already running completes once
  memory is freed (while Redis is full its result waits in the worker; see docs/reliability.md).
(HTTP 507, payload size limits and the schemathesis fuzzing are in test_api.py / test_api_schema.py.)
"""

from __future__ import annotations

import asyncio
import decimal
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from backend.config import Settings
from backend.workers.handlers import HandlerRegistry
from backend.workers.job_store import JobStore, StoreFullError
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import JobSpec, JobState
from backend.workers.orchestration import Worker
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import InvalidJobError
from tests.redis_server import RedisServer, start_server
from tests.worker_procs import ROOT, WorkerProcess, eventually, read_records, worker_env

PREFIX = "bbtest-oom"


async def test_a_non_json_argument_is_refused_naming_the_field(store: JobStore) -> None:
    cases = [
        (JobSpec("t.job", args=[1, {"ok": [1, 2], "price": decimal.Decimal("1.5")}]), "args[1].price"),
        (JobSpec("t.job", kwargs={"user": {"tags": {"a", "b"}}}), "kwargs.user.tags"),
        (JobSpec("t.job", kwargs={"blob": b"\x00\x01"}), "kwargs.blob"),
    ]
    for spec, field in cases:
        with pytest.raises(InvalidJobError, match=field.replace("[", r"\[").replace("]", r"\]")):
            await store.enqueue(spec)
    assert await store.counts() == {}  # nothing was stored


async def test_an_oversized_result_is_stored_truncated_with_a_marker() -> None:
    store, registry = MemoryJobStore(), HandlerRegistry()

    @registry.task("t.big")
    async def big(size: int) -> str:
        return "x" * size

    settings = Settings(heartbeat_seconds=0.1, lease_seconds=5.0)
    worker = Worker(store, settings, registry, worker_id="w-limits")
    worker.max_result_bytes = 1000
    await worker.start()
    try:
        small = await store.enqueue(JobSpec("t.big", args=[900]))
        large = await store.enqueue(JobSpec("t.big", args=[50_000]))

        async def both_done() -> bool:
            jobs = [await store.get(small.id), await store.get(large.id)]
            return all(job is not None and job.state is JobState.DONE for job in jobs)

        await eventually(both_done, 20, "both jobs done")
    finally:
        await worker.stop()
    got_small, got_large = await store.get(small.id), await store.get(large.id)
    assert got_small is not None and got_small.result == "x" * 900  # within the limit: intact
    assert got_large is not None
    marker = got_large.result
    assert marker["truncated"] is True and marker["size"] == 50_002 and marker["limit"] == 1000
    assert marker["preview"] == '"' + "x" * 499 and len(str(marker)) < 1000


# -- Redis full -----------------------------------------------------------------------------------------


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    server = start_server("--maxmemory", "6mb")  # noeviction (RedisServer's default)
    yield server
    server.cleanup()


@pytest.fixture
async def raw(small_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(small_redis.url, decode_responses=True)
    yield client
    await client.aclose()


async def fill(client: aioredis.Redis) -> int:
    """Write filler keys until Redis refuses with OOM; returns how many were written.

    A refused 100 kB SET frees its own query buffer, which can bring Redis back just under
    maxmemory; so maxmemory is then lowered to a little below what is used, and Redis stays full
    until the fillers are deleted."""
    for i in range(10_000):
        try:
            await client.set(f"{PREFIX}-filler:{i}", "f" * 100_000)
        except ResponseError as exc:
            assert "maxmemory" in str(exc)
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", str(used - 256 * 1024))
            return i
    raise AssertionError("Redis never filled up")


async def snapshot(client: aioredis.Redis) -> list[str]:
    return sorted([key async for key in client.scan_iter(match=f"{PREFIX}:*", count=1000)])


@pytest.mark.redis_only
@pytest.mark.slow
async def test_full_redis_refuses_enqueue_cleanly_and_the_running_job_completes_after(
    small_redis: RedisServer, raw: aioredis.Redis, tmp_path: Path
) -> None:
    record = tmp_path / "record.txt"
    env = worker_env(small_redis.url, PREFIX, record, BAGBOT_LEASE_SECONDS="15")
    worker = WorkerProcess(tmp_path, "worker", env)
    store = RedisJobStore.from_url(small_redis.url, prefix=PREFIX)
    try:
        await worker.wait_for_log("✓ Heartbeats being sent")
        running = await store.enqueue(JobSpec("tests.sleeper", args=[1.5]))

        async def started() -> bool:
            return any(ex.job_id == running.id for ex in read_records(record))

        await eventually(started, 30, "job started")
        fillers = await fill(raw)
        before = await snapshot(raw)

        with pytest.raises(StoreFullError, match="out of memory"):
            await store.enqueue(JobSpec("bagbot.noop", id="during-oom", kwargs={"x": "y" * 1000}))
        with pytest.raises(StoreFullError):
            await store.enqueue_many([JobSpec("bagbot.noop") for _ in range(50)])
        ours = ("BAGBOT_", "JOB_STORE", "REDIS_URL")
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        cli_env.update(JOB_STORE="redis", REDIS_URL=small_redis.url, BAGBOT_PREFIX=PREFIX)
        cli = subprocess.run([sys.executable, "-m", "backend.cli", "enqueue", "bagbot.noop"], cwd=ROOT,
                             env=cli_env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 5 and "out of memory" in cli.stderr, cli.stdout + cli.stderr
        assert "Traceback" not in cli.stderr
        assert await snapshot(raw) == before  # no half-written job, index or counter
        assert await store.get("during-oom") is None
        assert (await store.counts())["default"]["running"] == 1  # reads keep working
        assert (await store.metrics()).queues["default"].enqueued == {"tests.sleeper": 1}

        async def ended() -> bool:
            return any(ex.event == "end" for ex in read_records(record))

        await eventually(ended, 30, "handler ended while Redis is full")
        await worker.wait_for_log("StoreFullError")  # its report was refused: the worker keeps it
        got = await store.get(running.id)
        assert got is not None and got.state is JobState.RUNNING

        await raw.delete(*[f"{PREFIX}-filler:{i}" for i in range(fillers)])

        async def done() -> bool:
            current = await store.get(running.id)
            return current is not None and current.state is JobState.DONE

        await eventually(done, 30, "the kept result landed once memory was freed")
        got = await store.get(running.id)
        assert got is not None and got.attempts == 1 and got.result == "slept"
        after = await store.enqueue(JobSpec("bagbot.noop"))
        assert after.state is JobState.ENQUEUED
        worker.send(signal.SIGTERM)
        assert await worker.wait() == 0
    finally:
        worker.stop()
        await store.close()
    await asyncio.sleep(0)
