"""A Redis that lost everything (FLUSHALL, or a restart without persistence, as on Render's free
plan): the backend and the workers notice within one heartbeat, say so in their logs, the backend
counts it in `bagbot_store_resets_total`, workers re-register, and both keep serving. New jobs are
visible through the API again (the queue index is put back)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis

from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import JobSpec
from backend.workers.redis_job_store import RedisJobStore
from tests.api_server import BackendProcess
from tests.conftest import delete_prefix
from tests.redis_server import RedisServer, start_server
from tests.test_chaos import metric, scrape
from tests.worker_procs import WorkerProcess, eventually, worker_env

PREFIX = "bbreset"


@pytest.fixture
def volatile_redis() -> Iterator[RedisServer]:
    server = start_server()  # no AOF, no RDB: a restart loses everything
    yield server
    server.cleanup()


async def test_watcher_sees_a_reset_and_restores_the_queue_index(redis_url: str, prefix: str) -> None:
    store = RedisJobStore.from_url(redis_url, prefix=prefix)
    other = RedisJobStore.from_url(redis_url, prefix=prefix)  # another process that enqueues
    try:
        watcher = store.reset_watch(["default"])
        assert watcher is not None and MemoryJobStore().reset_watch() is None
        await other.enqueue(JobSpec("bagbot.noop", queue="mail"))
        assert await watcher.check() is False
        assert await watcher.check() is False  # nothing changed

        await delete_prefix(redis_url, prefix)  # what a FLUSHALL does to this prefix
        job = await other.enqueue(JobSpec("bagbot.noop", queue="mail"))  # its queue cache is stale
        # A reset once left such jobs unfindable (the queue index gone, the stale cache not re-adding
        # it); the enqueue now sees the queue has no seq (enqueue.lua's `fresh`) and lists it again.
        assert await store.get(job.id) is not None
        assert await watcher.check() is True
        assert watcher.resets == 1
        assert await store.get(job.id) is not None  # found again: the queue index is back
        assert await store.queues() == ["default", "mail"]
        assert await watcher.check() is False
    finally:
        await store.close()
        await other.close()
        await delete_prefix(redis_url, prefix)


@pytest.mark.redis_only
@pytest.mark.slow
async def test_backend_and_worker_notice_a_reset_and_keep_serving(
    volatile_redis: RedisServer, tmp_path: Path
) -> None:
    record = tmp_path / "record.txt"
    env = worker_env(volatile_redis.url, PREFIX, record)
    backend = BackendProcess(tmp_path, env)
    worker = WorkerProcess(tmp_path, "worker", env)
    try:
        backend.wait_ready()
        await worker.wait_for_log("✓ Heartbeats being sent")
        async with httpx.AsyncClient(base_url=backend.base_url, timeout=10) as client:
            await run_jobs(client, 3)
            for resets, lose_data in enumerate((flushall, restart_without_persistence), start=1):
                lost_at = time.time()
                lose_data(volatile_redis)
                await wait_for_count(worker, "event=store_reset", resets)
                await wait_for_count(backend, "event=store_reset", resets)
                print(f"\nreset {resets} ({lose_data.__name__}) noticed after: worker"
                      f" {noticed(worker.log(), resets) - lost_at:.2f}s, backend"
                      f" {noticed(backend.log(), resets) - lost_at:.2f}s (heartbeat 0.5 s)")
                samples = scrape((await client.get("/api/metrics")).text)
                assert metric(samples, "bagbot_store_resets_total") == resets
                await run_jobs(client, 3)  # visible through the API and run by the same worker

                async def registered() -> bool:
                    return len((await client.get("/api/workers")).json()) == 1

                await eventually(registered, 30, "worker listed again")
        assert "worker entry vanished (Redis lost data?) – re-registered" in worker.log()
        assert worker.proc.poll() is None and backend.proc.poll() is None  # never restarted
        worker.send(signal.SIGTERM)
        assert await worker.wait() == 0
    finally:
        worker.stop()
        backend.stop()


def noticed(log: str, nth: int) -> float:
    """When the nth `event=store_reset` line was logged (its timestamp, this machine's clock)."""
    lines = [line for line in log.splitlines() if "event=store_reset" in line]
    stamp = datetime.strptime(lines[nth - 1][:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def flushall(server: RedisServer) -> None:
    with redis.Redis(port=server.port) as client:
        client.flushall()  # our own private server: nobody else's data


def restart_without_persistence(server: RedisServer) -> None:
    server.kill()
    server.start()


async def run_jobs(client: httpx.AsyncClient, count: int) -> None:
    ids = []
    for _ in range(count):
        for _ in range(100):  # right after a restart the backend may still be reconnecting
            response = await client.post("/api/jobs", json={"name": "tests.record"})
            if response.status_code == 201:
                ids.append(response.json()["id"])
                break
            assert response.status_code == 503, response.text
            await asyncio.sleep(0.1)

    async def all_done() -> bool:
        states = [(await client.get(f"/api/jobs/{job_id}")).json().get("state") for job_id in ids]
        return states == ["done"] * count

    await eventually(all_done, 30, f"{count} jobs done and visible")


async def wait_for_count(
    proc: WorkerProcess | BackendProcess, text: str, count: int, timeout: float = 30
) -> None:
    async def seen() -> bool:
        return proc.log().count(text) >= count

    await eventually(seen, timeout, f"{proc.name} logged {text!r} {count} times")
