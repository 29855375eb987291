"""A store that answers "not now" (BUSY, READONLY, CLUSTERDOWN, ...) is an outage, not a bad call, and
one queue's (or the registry's) failure costs the other queues' jobs nothing (issue 13 items 5-7)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from redis import exceptions as redis_errors

from backend.config import Settings
from backend.workers.handlers import HandlerRegistry
from backend.workers.job_store import JobStore, StoreUnavailableError
from backend.workers.models import Claim, JobSpec, JobState, WorkerInfo
from backend.workers.orchestration import Worker
from backend.workers.redis.errors import TRANSIENT_CODES, mapped_errors
from backend.workers.redis.per_queue import QueueWarnings
from backend.workers.redis_job_store import RedisJobStore
from tests.redis_server import RedisServer, start_server


@pytest.mark.parametrize("code", TRANSIENT_CODES)
@pytest.mark.parametrize("wrapped", [False, True])
def test_every_not_now_reply_is_an_outage(code: str, wrapped: bool) -> None:
    text = f"{code} the server cannot serve this now"
    if wrapped:  # as Redis words an error a script's redis.call met
        text = f"Error running script (call to f_ab12): @user_script:7: -{text}"
    with pytest.raises(StoreUnavailableError), mapped_errors("redis"):
        raise redis_errors.ResponseError(text)


def test_a_bad_call_is_not_an_outage() -> None:
    with pytest.raises(redis_errors.ResponseError), mapped_errors("redis"):
        raise redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")


@pytest.fixture
def busy_redis() -> Iterator[RedisServer]:
    """A private server whose scripts count as slow (BUSY to everyone else) after 100 ms."""
    server = start_server("--busy-reply-threshold", "100")
    yield server
    server.cleanup()


SLOW_SCRIPT = """
local t = redis.call('TIME')
while true do
  local n = redis.call('TIME')
  if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) >= tonumber(ARGV[1]) then return 1 end
end
"""


async def test_results_finished_while_another_clients_script_runs_are_kept(busy_redis: RedisServer) -> None:
    """Another client's 3 s script makes every call answer BUSY while 5 jobs finish: their results
    are kept and sent again, each job ran once and is done, long before its lease could expire."""
    store = RedisJobStore.from_url(busy_redis.url, prefix="bbtest-busy")
    registry = HandlerRegistry()
    runs: Counter[str] = Counter()

    @registry.task("t.work")
    async def work(n: int) -> int:
        runs[str(n)] += 1
        await asyncio.sleep(1.0)
        return n

    settings = Settings(heartbeat_seconds=0.5, lease_seconds=30.0, concurrency=5, shutdown_grace_seconds=2.0)
    worker = Worker(store, settings, registry, worker_id="w-busy")
    try:
        jobs = [await store.enqueue(JobSpec(name="t.work", args=[n])) for n in range(5)]
        await worker.start()
        for _ in range(200):
            if worker.running == 5:
                break
            await asyncio.sleep(0.02)
        assert worker.running == 5
        with redis.Redis.from_url(busy_redis.url) as other:
            busy = asyncio.to_thread(other.eval, SLOW_SCRIPT, 0, 3_000_000)
            assert await busy == 1  # the handlers ended (and tried to report) during it
        assert worker.state.outage.since is not None or worker.jobs_done < 5
        for _ in range(500):  # 10 s: far below the 30 s lease, so nothing was re-run to get here
            done = [await store.get(job.id) for job in jobs]
            if all(job is not None and job.state is JobState.DONE for job in done):
                break
            await asyncio.sleep(0.02)
        states = [(job.state, job.attempts) for job in done if job is not None]
        assert states == [(JobState.DONE, 1)] * 5
        assert runs == Counter({str(n): 1 for n in range(5)})
        assert worker.outcomes_discarded == 0
    finally:
        await worker.stop()
        await store.close()


async def test_a_failing_queue_costs_the_others_nothing_in_a_claim(store: JobStore) -> None:
    """The second queue's claim script fails (a key of the wrong type): the jobs claimed from the
    first are returned, not left running under nobody; a claim that gets nothing raises."""
    assert isinstance(store, RedisJobStore)
    jobs = [await store.enqueue(JobSpec(name="bagbot.noop", queue="qa")) for _ in range(3)]
    await store.redis.set(store.keys.queue("qb").hlimits, "not a hash")
    for order in (["qa", "qb"], ["qb", "qa"]):
        claimed = await store.claim("w1", order, 10, 30.0)
        assert sorted(job.id for job in claimed) == sorted(job.id for job in jobs)
        for job in claimed:
            assert await store.complete(Claim(job.queue, job.id, job.token or "")) is JobState.DONE
        jobs = [await store.enqueue(JobSpec(name="bagbot.noop", queue="qa")) for _ in range(3)]
    for job in await store.claim("w1", ["qa"], 10, 30.0):
        await store.complete(Claim(job.queue, job.id, job.token or ""))
    with pytest.raises(Exception, match="WRONGTYPE"):
        await store.claim("w1", ["qa", "qb"], 10, 30.0)


async def test_a_queue_that_keeps_failing_is_logged_once_per_queue_not_per_call(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A claim that gets jobs from a healthy queue used to drop the broken queues' errors silently,
    so a queue that stays broken (WRONGTYPE) was never reported. Now each broken queue is logged,
    once per interval: five claims, two broken queues, two warnings."""
    assert isinstance(store, RedisJobStore)
    for broken in ("qb", "qc"):
        await store.redis.set(store.keys.queue(broken).hlimits, "not a hash")
    with caplog.at_level(logging.WARNING, logger="bagbot.store"):
        for _ in range(5):
            await store.enqueue(JobSpec(name="bagbot.noop", queue="qa"))
            (job,) = await store.claim("w1", ["qb", "qa", "qc"], 10, 30.0)
            assert await store.complete(Claim(job.queue, job.id, job.token or "")) is JobState.DONE
    lines = [r.getMessage() for r in caplog.records if "event=queue_call_failed" in r.getMessage()]
    assert len(lines) == 2, lines
    for broken, line in zip(("qb", "qc"), lines, strict=True):
        assert f"queue={broken} " in line and "op=claim" in line and "WRONGTYPE" in line


def test_queue_warnings_repeat_after_their_interval_with_what_was_not_logged(
    caplog: pytest.LogCaptureFixture
) -> None:
    warnings = QueueWarnings(every=0.3)
    error = StoreUnavailableError("node down")
    with caplog.at_level(logging.WARNING, logger="bagbot.store"):
        for _ in range(3):
            warnings.warn("claim", "qb", error)
        warnings.warn("claim", "qc", error)  # another queue has its own interval
        time.sleep(0.4)
        warnings.warn("claim", "qb", error)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all(line.startswith("event=queue_call_failed op=claim") for line in lines)
    assert "queue=qb" in lines[0] and "not_logged_since" not in lines[0]
    assert "queue=qc" in lines[1]
    assert "queue=qb" in lines[2] and "not_logged_since=2 " in lines[2]


async def test_leases_are_extended_when_the_registry_fails(store: JobStore) -> None:
    """The heartbeat's registry write fails: it still raises, but only after every lease was
    extended, so the running job is not recovered when its first lease runs out."""
    assert isinstance(store, RedisJobStore)
    info = WorkerInfo(id="w1", host="h", pid=1, queues=["qa"], concurrency=1)
    await store.register_worker(info)
    await store.enqueue(JobSpec(name="bagbot.noop", queue="qa"))
    (job,) = await store.claim("w1", ["qa"], 1, 1.0)
    claim = Claim(job.queue, job.id, job.token or "")
    await store.redis.delete(store.keys.worker("w1"))
    await store.redis.set(store.keys.registry, "not a zset")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await store.heartbeat(info, [claim], 30.0)
    await asyncio.sleep(1.5)  # past the first 1 s lease
    assert await store.recover(["qa"]) == 0
    assert await store.complete(claim) is JobState.DONE
    await store.redis.delete(store.keys.registry)
