"""Handlers that do unexpected things, in real worker processes on a real Redis.

Whatever a handler raises (BaseException included) fails or retries that job only, at once and
with its real type; the worker keeps running and heartbeating. A sync handler past its timeout
keeps its slot and its job until its thread returns: no second run overlaps it, and no job waits
behind it in the thread pool to be charged an attempt it never started.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from backend.workers.models import Job, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff
from tests.feature_workers import Spawner, wait_state
from tests.worker_procs import eventually, read_records

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]

# name -> (error type, text the message contains)
FAULTS = {
    "faults.sys_exit": ("SystemExit", "sync handler called sys.exit"),
    "faults.async_exit0": ("SystemExit", "0"),
    "faults.keyboard": ("KeyboardInterrupt", "raised by the handler"),
    "faults.async_keyboard": ("KeyboardInterrupt", "raised by the async handler"),
    "faults.generator_exit": ("GeneratorExit", "not a generator"),
    "faults.custom": ("Custom", "custom base exception"),
    "faults.bad_str": ("BadStr", "str() failed"),
    "faults.unreadable": ("Unreadable", "str() and repr() both raised"),
    "faults.own_cancel": ("CancelledError", "the handler's own CancelledError"),
}


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


@pytest.fixture
def worker_tasks() -> str:
    return "tests.tasks_faults"


async def heartbeat_of(store: RedisJobStore, worker_pid: int) -> float:
    for info in await store.list_workers():
        if info.pid == worker_pid:
            return info.last_heartbeat
    raise AssertionError(f"worker {worker_pid} is not in the registry")


async def test_any_exception_fails_only_its_job_and_the_worker_runs_on(
    store: RedisJobStore, spawner: Spawner
) -> None:
    (worker,) = await spawner.start(1, BAGBOT_CONCURRENCY="4")
    long = await store.enqueue(JobSpec("tests.sleeper", args=[3.0]))  # running through all the faults
    faults: dict[str, Job] = {}
    healthy: list[Job] = []
    for name in FAULTS:
        faults[name] = await store.enqueue(JobSpec(name, max_attempts=1))
        healthy.append(await store.enqueue(JobSpec("tests.record")))
    retried = await store.enqueue(JobSpec("faults.keyboard", max_attempts=2, backoff=Backoff(base=0.1)))

    for name, job in faults.items():
        final = await wait_state(store, job.id, JobState.FAILED, JobState.DONE, timeout=30)
        kind, text = FAULTS[name]
        assert final.state is JobState.FAILED and final.attempts == 1, name
        assert final.last_error is not None and final.last_error.type == kind, (name, final.last_error)
        assert text in final.last_error.message, (name, final.last_error)  # reported, not LeaseExpired
    again = await wait_state(store, retried.id, JobState.FAILED, timeout=30)
    assert again.attempts == 2 and again.last_error is not None
    assert again.last_error.type == "KeyboardInterrupt"
    for job in [*healthy, long]:
        assert (await wait_state(store, job.id, JobState.DONE, JobState.FAILED)).state is JobState.DONE

    # still alive, still heartbeating, still claiming
    assert worker.proc.poll() is None
    first = await heartbeat_of(store, worker.pid)
    await eventually(lambda: _beat_after(store, worker.pid, first), 10, "a later heartbeat")
    late = await store.enqueue(JobSpec("tests.record"))
    assert (await wait_state(store, late.id, JobState.DONE)).attempts == 1
    assert "LeaseExpired" not in worker.log() and "job_crashed" not in worker.log()
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def _beat_after(store: RedisJobStore, pid: int, first: float) -> bool:
    return await heartbeat_of(store, pid) > first


async def test_sync_timeout_never_overlaps_and_charges_no_one_else(
    store: RedisJobStore, spawner: Spawner
) -> None:
    """Concurrency 1: the runaway thread holds the only slot. Before, the slot was freed at the
    timeout; the trivial jobs were claimed, queued behind the thread, timed out there (charged an
    attempt they never started), and the runaway job ran again beside its first run."""
    (worker,) = await spawner.start(1, BAGBOT_CONCURRENCY="1")
    spec = JobSpec("faults.runaway", args=[3.0], max_attempts=2, backoff=Backoff(base=0.1))
    runaway = await store.enqueue(spec)
    await eventually(lambda: _started(spawner, runaway.id), 30, "runaway started")
    trivial = await store.enqueue_many([JobSpec("faults.trivial") for _ in range(4)])

    final = await wait_state(store, runaway.id, JobState.FAILED, JobState.DONE, timeout=60)
    assert final.state is JobState.FAILED and final.attempts == 2
    assert final.last_error is not None and final.last_error.type == "JobTimeout"
    for job in trivial:
        done = await wait_state(store, job.id, JobState.DONE, JobState.FAILED, timeout=60)
        assert done.state is JobState.DONE and done.attempts == 1, done.last_error
    runs = [r for r in read_records(spawner.record) if r.job_id == runaway.id]
    assert [r.event for r in runs] == ["start", "end", "start", "end"]  # one run at a time
    assert runs[1].at <= runs[2].at
    assert "event=job_timeout_thread_running" in worker.log()
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_cancelled_sync_jobs_thread_keeps_its_slot(store: RedisJobStore, spawner: Spawner) -> None:
    """Cancel ends the job, but its thread runs on: the jobs after it must not queue behind it."""
    (worker,) = await spawner.start(1, BAGBOT_CONCURRENCY="1")
    slow = await store.enqueue(JobSpec("faults.runaway", args=[3.0], timeout=60))
    await eventually(lambda: _started(spawner, slow.id), 30, "slow sync job started")
    await store.cancel(slow.id)
    await wait_state(store, slow.id, JobState.CANCELLED, timeout=20)
    trivial = await store.enqueue_many([JobSpec("faults.trivial") for _ in range(3)])
    for job in trivial:
        done = await wait_state(store, job.id, JobState.DONE, JobState.FAILED, timeout=60)
        assert done.state is JobState.DONE and done.attempts == 1, done.last_error
    ends = [r.at for r in read_records(spawner.record) if r.job_id == slow.id and r.event == "end"]
    firsts = [r.at for r in read_records(spawner.record) if r.job_id in {j.id for j in trivial}]
    assert ends and min(firsts) >= ends[0]  # they waited for the thread, unclaimed
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0
    await asyncio.sleep(0)


async def _started(spawner: Spawner, job_id: str) -> bool:
    return any(r.job_id == job_id and r.event == "start" for r in read_records(spawner.record))
