"""Rolling deploys with real worker processes: a worker that lacks a handler (an old version still
running) hands its jobs back, uncounted, for a worker that has it; the job fails UnknownHandler only
once no live worker has had the handler for BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff
from tests.worker_procs import WorkerProcess, eventually, read_records, starts_by_job, worker_env

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]

OLD = "tests.tasks_for_tests"
NEW = "tests.tasks_for_tests,tests.tasks_rolling"


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


async def state_of(store: RedisJobStore, job_id: str) -> JobState | None:
    got = await store.get(job_id)
    return None if got is None else got.state


class Fleet:
    def __init__(self, tmp: Path, redis_url: str, prefix: str) -> None:
        self.tmp, self.redis_url, self.prefix = tmp, redis_url, prefix
        self.record = tmp / "record.txt"
        self.procs: list[WorkerProcess] = []

    async def start(self, tasks: str, **env: str) -> WorkerProcess:
        full = worker_env(self.redis_url, self.prefix, self.record, BAGBOT_TASKS=tasks, **env)
        proc = WorkerProcess(self.tmp, f"worker{len(self.procs)}", full)
        self.procs.append(proc)
        await proc.wait_for_log("✓ Worker registration successful")
        return proc


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Fleet]:
    spawned = Fleet(tmp_path, redis_url, prefix)
    yield spawned
    for proc in spawned.procs:
        proc.stop()


async def test_a_mixed_fleet_runs_every_job_of_a_new_handler_once(store: RedisJobStore, fleet: Fleet) -> None:
    """An old worker (without tests.rolling_new) and a new one: all 20 jobs end done, each run once,
    none charged an attempt it did not run, though the old worker claimed some of them."""
    old = await fleet.start(OLD, BAGBOT_CONCURRENCY="4", BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS="60")
    await fleet.start(NEW, BAGBOT_CONCURRENCY="1", BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS="60")
    jobs = await store.enqueue_many([JobSpec("tests.rolling_new", max_attempts=1) for _ in range(20)])

    async def all_done() -> bool:
        return (await store.counts())["default"]["done"] == 20

    await eventually(all_done, 120, "20 jobs done")
    starts = starts_by_job(fleet.record)
    for job in jobs:
        got = await store.get(job.id)
        assert got is not None and got.state is JobState.DONE and got.attempts == 1, got
        assert [ex.attempt for ex in starts[job.id]] == [1]  # ran once, as its first attempt
    assert "job_handed_back" in old.log()  # the old worker did claim some, and gave them back


async def test_with_no_worker_that_has_it_the_job_fails_after_the_grace_time(
    store: RedisJobStore, fleet: Fleet
) -> None:
    """Only old workers: the job is handed back until the grace time has passed, then fails
    UnknownHandler; not before."""
    grace = 4.0
    await fleet.start(OLD, BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS=str(grace))
    enqueued = time.monotonic()
    job = await store.enqueue(JobSpec("tests.rolling_new"))

    async def handed_back() -> bool:
        got = await store.get(job.id)
        return got is not None and got.state is JobState.SCHEDULED

    await eventually(handed_back, 30, "handed back")

    async def failed() -> bool:
        got = await store.get(job.id)
        assert got is not None
        if got.state is JobState.FAILED:
            return True
        assert got.state in {JobState.SCHEDULED, JobState.ENQUEUED, JobState.RUNNING}, got.state
        assert got.attempts <= 1  # hand-backs charge nothing
        return False

    await eventually(failed, 60, "failed")
    assert time.monotonic() - enqueued >= grace
    got = await store.get(job.id)
    assert got is not None and got.last_error is not None and got.last_error.type == "UnknownHandler"
    assert got.attempts == 1
    assert read_records(fleet.record) == []


async def test_a_worker_that_has_the_handler_keeps_the_job_alive_past_the_grace_time(
    store: RedisJobStore, fleet: Fleet
) -> None:
    """A job that waited longer than the grace time still does not fail while a live worker advertises
    its handler: here the new worker is busy (concurrency 1, a long job), the old one keeps handing back."""
    grace = 2.0
    await fleet.start(NEW, BAGBOT_CONCURRENCY="1", BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS=str(grace))
    busy = await store.enqueue(JobSpec("tests.record", kwargs={"sleep": 2 * grace + 2}))

    async def running() -> bool:
        got = await store.get(busy.id)
        return got is not None and got.state is JobState.RUNNING

    await eventually(running, 30, "the new worker busy")
    old = await fleet.start(OLD, BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS=str(grace))
    job = await store.enqueue(JobSpec("tests.rolling_new"))

    async def done() -> bool:
        got = await store.get(job.id)
        assert got is not None and got.state is not JobState.FAILED, got.last_error
        return got.state is JobState.DONE

    await eventually(done, 60, "done by the new worker once it is free")
    assert "job_handed_back" in old.log()
    got = await store.get(job.id)
    assert got is not None and got.attempts == 1


async def test_workers_list_their_handlers(store: RedisJobStore, fleet: Fleet) -> None:
    await fleet.start(OLD)
    await fleet.start(NEW)
    workers = await store.list_workers()
    by_new = sorted(workers, key=lambda w: len(w.handlers))
    assert "tests.rolling_new" not in by_new[0].handlers and "tests.record" in by_new[0].handlers
    assert "tests.rolling_new" in by_new[1].handlers and "bagbot.echo" in by_new[1].handlers


async def test_a_handlers_max_attempts_applies_to_jobs_that_set_none(
    store: RedisJobStore, fleet: Fleet
) -> None:
    """@task(max_attempts=5), enqueued without max_attempts by a process that does not import it: five
    runs, and current_job().max_attempts says 5; a job that says 2 gets 2."""
    await fleet.start(NEW, BAGBOT_CONCURRENCY="4")
    quick = Backoff(base=0.01, cap=0.01, jitter=0)
    jobs = [await store.enqueue(JobSpec("tests.policy_five", backoff=quick)),
            await store.enqueue(JobSpec("tests.policy_five", backoff=quick, max_attempts=2))]

    async def both_failed() -> bool:
        states = [await state_of(store, job.id) for job in jobs]
        return all(state is JobState.FAILED for state in states)

    await eventually(both_failed, 60, "both failed")
    lines = [line.split() for line in fleet.record.read_text().splitlines() if " policy " in line]
    runs = {j.id: [(int(ma), int(att)) for jid, ma, att, _, _ in lines if jid == j.id] for j in jobs}
    assert runs[jobs[0].id] == [(5, a) for a in range(1, 6)]
    assert runs[jobs[1].id] == [(2, 1), (2, 2)]
    shown = await store.get(jobs[0].id)
    assert shown is not None and shown.max_attempts == 5 and shown.attempts == 5
