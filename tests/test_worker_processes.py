"""Real worker processes on a real Redis: exclusive claims, kill -9, SIGTERM, timeouts and retries."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff
from tests.worker_procs import WorkerProcess, eventually, read_records, starts_by_job, worker_env

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


@pytest.fixture
def spawn(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[WorkerSpawner]:
    spawner = WorkerSpawner(tmp_path, redis_url, prefix)
    yield spawner
    for proc in spawner.procs:
        proc.stop()


class WorkerSpawner:
    def __init__(self, tmp: Path, redis_url: str, prefix: str) -> None:
        self.tmp, self.redis_url, self.prefix = tmp, redis_url, prefix
        self.record = tmp / "record.txt"
        self.procs: list[WorkerProcess] = []

    async def __call__(self, count: int = 1, **env: str) -> list[WorkerProcess]:
        new = []
        for _ in range(count):
            full = worker_env(self.redis_url, self.prefix, self.record, **env)
            new.append(WorkerProcess(self.tmp, f"worker{len(self.procs)}", full))
            self.procs.append(new[-1])
        for proc in new:
            await proc.wait_for_log("✓ Worker registration successful")
        return new


async def wait_all_done(store: RedisJobStore, total: int, timeout: float = 120.0) -> None:
    async def all_terminal() -> bool:
        counts = (await store.counts())["default"]
        return counts["done"] + counts["failed"] == total

    await eventually(all_terminal, timeout, f"{total} jobs terminal")


async def test_three_workers_run_every_job_exactly_once(store: RedisJobStore, spawn: WorkerSpawner) -> None:
    workers = await spawn(3, BAGBOT_CONCURRENCY="16")
    total = 6000  # 2,000 per worker
    jobs = await store.enqueue_many([JobSpec("tests.record") for _ in range(total)])
    await wait_all_done(store, total)
    assert (await store.counts())["default"]["done"] == total
    starts = starts_by_job(spawn.record)
    assert set(starts) == {job.id for job in jobs}
    assert [job_id for job_id, runs in starts.items() if len(runs) != 1] == []
    pids = {runs[0].pid for runs in starts.values()}
    assert pids <= {w.pid for w in workers} and len(pids) >= 2  # they really competed
    for w in workers:
        w.send(signal.SIGTERM)
    assert [await w.wait() for w in workers] == [0, 0, 0]
    assert await store.list_workers() == []


async def test_sigkill_reruns_exactly_the_killed_workers_in_flight_jobs(
    store: RedisJobStore, spawn: WorkerSpawner
) -> None:
    workers = await spawn(3, BAGBOT_CONCURRENCY="8")
    total = 900
    await store.enqueue_many([JobSpec("tests.record", kwargs={"sleep": 0.05}) for _ in range(total)])
    victim = workers[0]

    async def victim_busy() -> bool:
        return sum(1 for ex in read_records(spawn.record) if ex.pid == victim.pid) >= 40

    await eventually(victim_busy, 60, "victim ran some jobs")
    victim.send(signal.SIGKILL)
    assert await victim.wait() == -signal.SIGKILL
    # What the dead worker held: still `running` under its id until the leases expire.
    victim_id = next(w.id for w in await store.list_workers() if w.pid == victim.pid)
    in_flight: set[str] = set()
    cursor = None
    while True:
        page = await store.list_jobs(state=JobState.RUNNING, limit=500, cursor=cursor)
        in_flight |= {job.id for job in page.jobs if job.worker == victim_id}
        if (cursor := page.cursor) is None:
            break
    assert in_flight, "the victim was killed while idle; nothing was tested"

    await wait_all_done(store, total)
    assert (await store.counts())["default"]["done"] == total
    starts = starts_by_job(spawn.record)
    assert len(starts) == total
    twice = {job_id for job_id, runs in starts.items() if len(runs) > 1}
    started_by_victim = {job_id for job_id in in_flight if any(r.pid == victim.pid for r in starts[job_id])}
    # Every re-run is a job the victim held and had started; each ran exactly once more, elsewhere.
    assert twice and twice <= started_by_victim
    for job_id in started_by_victim:
        job = await store.get(job_id)
        assert job is not None
        if job_id in twice:
            assert sorted(r.pid == victim.pid for r in starts[job_id]) == [False, True]
            assert job.attempts == 2 and job.last_error is not None
            assert job.last_error.type == "LeaseExpired"
        else:  # its report was already on the wire when the victim died, and landed
            assert job.attempts == 1 and job.last_error is None
    # the dead worker's registry entry is reaped once its heartbeat is stale
    async def reaped() -> bool:
        return victim_id not in {w.id for w in await store.list_workers()}

    await eventually(reaped, 30, "dead worker reaped")
    for w in workers[1:]:
        w.send(signal.SIGTERM)
        assert await w.wait() == 0


async def test_sigterm_finishes_within_grace_and_releases_the_rest(
    store: RedisJobStore, spawn: WorkerSpawner
) -> None:
    (worker,) = await spawn(1, BAGBOT_CONCURRENCY="4", BAGBOT_SHUTDOWN_GRACE_SECONDS="3")
    short = await store.enqueue_many([JobSpec("tests.sleeper", args=[1.0]) for _ in range(2)])
    long = await store.enqueue_many([JobSpec("tests.sleeper", args=[120]) for _ in range(2)])

    async def all_running() -> bool:
        return (await store.counts())["default"]["running"] == 4

    await eventually(all_running, 30, "4 jobs running")
    worker.send(signal.SIGTERM)
    assert await worker.wait(30) == 0
    for job in short:
        got = await store.get(job.id)
        assert got is not None and got.state is JobState.DONE and got.attempts == 1
    for job in long:
        got = await store.get(job.id)
        assert got is not None and got.state is JobState.ENQUEUED and got.attempts == 0
        assert got.worker is None and got.token is None
    assert await store.list_workers() == []
    log = worker.log()
    assert "event=shutdown_started" in log and "event=jobs_released" in log and "event=worker_stopped" in log


async def test_second_signal_cuts_the_grace_short_but_still_releases(
    store: RedisJobStore, spawn: WorkerSpawner
) -> None:
    (worker,) = await spawn(1, BAGBOT_SHUTDOWN_GRACE_SECONDS="600")
    job = await store.enqueue(JobSpec("tests.sleeper", args=[600]))

    async def running() -> bool:
        got = await store.get(job.id)
        return got is not None and got.state is JobState.RUNNING

    await eventually(running, 30, "job running")
    worker.send(signal.SIGTERM)
    await worker.wait_for_log("event=shutdown_started")
    worker.send(signal.SIGINT)
    assert await worker.wait(30) == 0  # far less than the 600 s grace
    got = await store.get(job.id)
    assert got is not None and got.state is JobState.ENQUEUED and got.attempts == 0
    assert await store.list_workers() == []


async def test_timeout_and_retry_with_backoff_end_to_end(store: RedisJobStore, spawn: WorkerSpawner) -> None:
    (worker,) = await spawn(1)
    timed_out = await store.enqueue(JobSpec("tests.sleeper", args=[60], timeout=0.5, max_attempts=1))
    backoff = Backoff(base=0.4, cap=10, jitter=0.25)
    flaky = await store.enqueue(JobSpec("tests.flaky", kwargs={"times": 2}, max_attempts=5, backoff=backoff))
    await wait_all_done(store, 2, timeout=60)

    got = await store.get(timed_out.id)
    assert got is not None and got.state is JobState.FAILED and got.attempts == 1
    assert got.last_error is not None and got.last_error.type == "JobTimeout"

    got = await store.get(flaky.id)
    assert got is not None and got.state is JobState.DONE and got.attempts == 3 and got.result == 3
    assert got.last_error is not None and "planned failure 2/2" in got.last_error.message
    attempts = [ex for ex in read_records(spawn.record) if ex.job_id == flaky.id]
    assert [ex.attempt for ex in attempts] == [1, 2, 3]
    for previous, ex in itertools.pairwise(attempts):
        low, _ = backoff.bounds(previous.attempt)
        # the retry waited at least the backoff's lower bound (the clocks are one machine's)
        assert ex.at - previous.at >= low - 0.05
    snapshot = await store.metrics()
    assert snapshot.queues["default"].retries.get("tests.flaky") == 2
    log = worker.log()
    assert "✓ Retry scheduling working correctly" in log and "event=job_retry" in log
    assert "✓ Heartbeats being sent" in log and "✓ Jobs claimed exclusively" in log
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_job_that_keeps_killing_workers_ends_failed(
    store: RedisJobStore, spawn: WorkerSpawner
) -> None:
    """A poison job kills every worker that runs it: it is delivered max_attempts times, then fails,
    while the other jobs keep flowing (dead workers are replaced, as a platform restarts them)."""
    poison = await store.enqueue(JobSpec("tests.die", max_attempts=3, backoff=Backoff(0.1, jitter=0)))
    others = await store.enqueue_many([JobSpec("tests.record", kwargs={"sleep": 0.05}) for _ in range(300)])
    await spawn(2, BAGBOT_CONCURRENCY="4")
    replaced = 0

    async def settled() -> bool:
        nonlocal replaced
        for proc in list(spawn.procs):
            if proc.proc.poll() is not None and not getattr(proc, "replaced", False):
                proc.replaced = True  # type: ignore[attr-defined]
                replaced += 1
                await spawn(1, BAGBOT_CONCURRENCY="4")
        got = await store.get(poison.id)
        counts = (await store.counts())["default"]
        return got is not None and got.state is JobState.FAILED and counts["done"] == len(others)

    await eventually(settled, 120, "poison failed and every other job done")
    got = await store.get(poison.id)
    assert got is not None and got.attempts == 3
    assert got.last_error is not None and got.last_error.type == "LeaseExpired"
    records = read_records(spawn.record)
    poison_starts = [ex.at for ex in records if ex.job_id == poison.id]
    assert len(poison_starts) == 3 and replaced == 3  # delivered 3 times; each delivery killed a worker
    other_ids = {job.id for job in others}
    first, last = poison_starts[0], poison_starts[-1]
    flowing = [ex for ex in records if ex.job_id in other_ids and first < ex.at < last]
    assert flowing, "other jobs stalled while the poison job went round"
    for proc in spawn.procs:
        if proc.proc.poll() is None:
            proc.send(signal.SIGTERM)
            assert await proc.wait() == 0


async def test_sync_cpu_handler_and_unknown_handler(store: RedisJobStore, spawn: WorkerSpawner) -> None:
    # no worker has tests.not_registered: handed back until the grace time, then UnknownHandler
    (worker,) = await spawn(1, BAGBOT_CONCURRENCY="4", BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS="1")
    cpu = await store.enqueue_many([JobSpec("tests.cpu", kwargs={"n": 300_000}) for _ in range(4)])
    echo = await store.enqueue(JobSpec("bagbot.echo", args=["hi"]))
    unknown = await store.enqueue(JobSpec("tests.not_registered", max_attempts=5))
    await wait_all_done(store, 6, timeout=60)
    for job in cpu:
        got = await store.get(job.id)
        assert got is not None and got.state is JobState.DONE
    got = await store.get(echo.id)
    assert got is not None and got.result == ["hi"]
    got = await store.get(unknown.id)
    assert got is not None and got.state is JobState.FAILED and got.attempts == 1
    assert got.last_error is not None and "tests.not_registered" in got.last_error.message
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0
    await asyncio.sleep(0)


async def test_shutdown_does_not_hang_on_a_sync_handler_that_cannot_be_interrupted(
    store: RedisJobStore, spawn: WorkerSpawner
) -> None:
    (worker,) = await spawn(1, BAGBOT_SHUTDOWN_GRACE_SECONDS="0.5")
    job = await store.enqueue(JobSpec("tests.cpu", kwargs={"n": 10**10}))  # hours of work in a thread

    async def running() -> bool:
        got = await store.get(job.id)
        return got is not None and got.state is JobState.RUNNING

    await eventually(running, 30, "sync job running")
    worker.send(signal.SIGTERM)
    assert await worker.wait(30) == 0
    got = await store.get(job.id)
    assert got is not None and got.state is JobState.ENQUEUED and got.attempts == 0
    assert "event=exit_with_running_threads" in worker.log()
