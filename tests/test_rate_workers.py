"""Rate limits across real worker processes on a real Redis: 4 workers × 8 slots, a handler rate
(@task(rate="20/s")), a per-key rate and jobs with no rate, all in one queue.

Read from the job records (times on the Redis clock): every job ran once with one attempt (a
deferral charges none), no job started before its slot, slots of one limit are at least the
interval apart, so the realised rate over the run is at most the limit, and jobs without a rate
were not held back.
"""

from __future__ import annotations

import itertools

import pytest

from backend.workers.models import Job, JobSpec
from backend.workers.redis_job_store import RedisJobStore
from tests.feature_workers import Spawner
from tests.worker_procs import eventually, starts_by_job

pytestmark = [pytest.mark.redis_only]

EPS = 0.002


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


def slot(job: Job) -> float:
    assert job.started_at is not None and job.run_at is not None
    assert job.started_at >= job.run_at - EPS, f"{job.id} started before its slot"
    return job.run_at if job.run_at > job.created_at + EPS else job.started_at


def check_rate(jobs: list[Job], per_second: float) -> None:
    slots = sorted(slot(job) for job in jobs)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= 1 / per_second - EPS, f"slots closer than the rate allows: {min(gaps)}"
    starts = sorted(job.started_at or 0.0 for job in jobs)
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
    assert achieved <= per_second * 1.01, f"{achieved:.2f}/s over a {per_second}/s limit"


async def test_rates_hold_across_worker_processes(store: RedisJobStore, spawner: Spawner) -> None:
    await spawner.start(4, BAGBOT_CONCURRENCY="8")
    specs = [JobSpec("features.rated_handler") for _ in range(60)]
    specs += [JobSpec("features.limited_job", args=["keyed", 0.0], rate_key="acct", rate="25/s")
              for _ in range(50)]
    specs += [JobSpec("features.limited_job", args=["free", 0.0]) for _ in range(60)]
    jobs = await store.enqueue_many(specs)

    async def all_done() -> bool:
        return (await store.counts())["default"]["done"] == len(jobs)

    await eventually(all_done, 120, "every job done")
    done = [job for job in [await store.get(j.id) for j in jobs] if job is not None]
    assert len(done) == len(jobs)
    assert all(job.attempts == 1 for job in done)  # waiting for a slot charged no attempt
    starts = starts_by_job(spawner.record)
    assert len(starts) == len(jobs) and all(len(runs) == 1 for runs in starts.values())
    handler = [job for job in done if job.name == "features.rated_handler"]
    keyed = [job for job in done if job.rate_key == "acct"]
    free = [job for job in done if job.name == "features.limited_job" and job.rate_key is None]
    check_rate(handler, 20)
    check_rate(keyed, 25)
    # the 60 handler jobs need >= 2.95 s; the jobs with no rate are not queued behind them
    assert max(j.started_at or 0 for j in free) < max(j.started_at or 0 for j in handler)
    assert await store.redis.zcard(store.keys.queue("default").waiting) == 0


async def test_a_killed_worker_costs_no_deferred_job_an_attempt(
    store: RedisJobStore, spawner: Spawner
) -> None:
    """kill -9 one of three workers mid-run: its running jobs come back by lease expiry and run
    again (that attempt counts, as for any job); every other job's attempts equal its starts, so
    waiting for a slot never cost one, and nothing is lost or left scheduled."""
    procs = await spawner.start(3, BAGBOT_CONCURRENCY="4")
    specs = [JobSpec("features.limited_job", args=["kill", 0.2], rate_key="kk", rate="20/s", max_attempts=5)
             for _ in range(60)]
    jobs = await store.enqueue_many(specs)

    async def some_started() -> bool:
        return sum(len(runs) for runs in starts_by_job(spawner.record).values()) >= 15

    await eventually(some_started, 60, "15 starts")
    procs[0].proc.kill()
    await procs[0].wait()

    async def all_done() -> bool:
        return (await store.counts())["default"]["done"] == len(jobs)

    await eventually(all_done, 120, "every job done after the kill")
    starts = starts_by_job(spawner.record)
    done = [job for job in [await store.get(j.id) for j in jobs] if job is not None]
    assert len(done) == len(jobs) and len(starts) == len(jobs)
    # a job the killed worker had claimed but not yet started may show one attempt more than starts
    off = [job for job in done if job.attempts != len(starts[job.id])]
    assert all(job.attempts == len(starts[job.id]) + 1 for job in off), off
    assert len(off) <= 4 and sum(1 for job in done if job.attempts > 1) <= 4  # the killed worker's slots
    every = sorted(run.at for runs in starts.values() for run in runs)
    assert (len(every) - 1) / (every[-1] - every[0]) <= 20 * 1.05
    assert await store.redis.zcard(store.keys.queue("default").waiting) == 0
