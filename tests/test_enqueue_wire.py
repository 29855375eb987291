"""The enqueue's compact wire and record (issue 18): a job sends five arguments, its options in one
JSON field, and its hash holds only what readers cannot default. What the caller gets back, what a
later read shows and what a claim sees must still agree, on every store, for every option."""

from __future__ import annotations

import time

import pytest

from backend.workers.job_store import JobStore
from backend.workers.models import Job, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff


def shown(job: Job) -> dict[str, object]:
    return job.to_json()


async def test_every_option_reads_back_as_the_enqueue_returned_it(store: JobStore) -> None:
    spec = JobSpec("opts.all", args=[1, "é", None], kwargs={"k": [1.5]}, queue="wire", priority=-7,
                   max_attempts=5, timeout=12.5, backoff=Backoff(2.0, 60.0, 0.0), unique_key="u\x00é",
                   limit_key="lk é", limit=3, events=True, trace="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                   rate_key="rk", rate="10/m", delay=30.0)
    job = await store.enqueue(spec)
    assert job.state is JobState.SCHEDULED
    assert job.run_at is not None and job.run_at == pytest.approx(job.created_at + 30.0, abs=1e-6)
    read = await store.get(job.id, "wire")
    assert read is not None and shown(read) == shown(job)
    assert (read.priority, read.max_attempts, read.timeout, read.backoff) == (
        -7, 5, 12.5, Backoff(2.0, 60.0, 0.0))
    assert (read.unique_key, read.limit_key, read.limit, read.rate_key, read.rate, read.events) == (
        "u\x00é", "lk é", 3, "rk", "10/m", True)
    again = await store.enqueue(JobSpec("opts.all", queue="wire", unique_key="u\x00é"))
    assert again.id == job.id  # the unique key, stored as sent, is found again


async def test_a_plain_job_reads_back_and_claims_with_its_defaults(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("plain.job", queue="wire"))
    assert (job.state, job.attempts, job.max_attempts, job.priority, job.timeout) == (
        JobState.ENQUEUED, 0, 3, 0, None)
    assert (job.args, job.kwargs, job.backoff, job.unique_key, job.run_at) == ([], {}, Backoff(), None,
                                                                              job.created_at)
    read = await store.get(job.id, "wire")
    assert read is not None and shown(read) == shown(job)
    (claimed,) = await store.claim("w1", ["wire"], 1, 30.0)
    assert (claimed.id, claimed.attempts, claimed.max_attempts, claimed.args, claimed.kwargs) == (
        job.id, 1, 3, [], {})
    assert not claimed.unreadable


async def test_run_at_in_the_past_is_due_now_and_keeps_its_time(store: JobStore) -> None:
    past = time.time() - 3600
    job = await store.enqueue(JobSpec("past.job", queue="wire", run_at=past))
    assert job.state is JobState.ENQUEUED and job.run_at == pytest.approx(past, abs=1e-3)
    read = await store.get(job.id, "wire")
    assert read is not None and shown(read) == shown(job)


async def test_one_call_with_an_id_twice_and_an_id_that_exists_creates_each_once(store: JobStore) -> None:
    first = await store.enqueue(JobSpec("dup.job", queue="wire", id="old-1", args=[1]))
    jobs = await store.enqueue_many([
        JobSpec("dup.job", queue="wire", id="new-1", args=[2]),
        JobSpec("dup.job", queue="wire", id="old-1", args=[3]),
        JobSpec("dup.job", queue="wire", id="new-1", args=[4]),
        JobSpec("dup.job", queue="wire"),
    ])
    assert [job.args for job in jobs] == [[2], [1], [2], []]
    assert shown(jobs[1]) == shown(first)
    assert shown(jobs[2]) == shown(jobs[0])
    counts = await store.counts()
    assert counts["wire"]["enqueued"] == 3


async def test_a_plain_jobs_hash_holds_only_what_readers_need(redis_store: RedisJobStore) -> None:
    job = await redis_store.enqueue(JobSpec("plain.job", queue="wire"))
    fields = await redis_store.redis.hgetall(redis_store.keys.queue("wire").job(job.id))
    assert set(fields) == {"id", "name", "queue", "state", "run_at", "created_at", "seq", "max_attempts",
                           "bo_jitter", "ma_def", "bo_def"}
    assert (fields["max_attempts"], fields["bo_jitter"], fields["ma_def"], fields["bo_def"]) == (
        "3", "0.25", "1", "1")
