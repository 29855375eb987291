"""Corrupt records (a hand edit, a bug in an old version, a partial restore), on every store.

Each test writes a bad field with the store's own client, then drives the store through its
contract. A corrupt job must be set aside (failed, CorruptRecord, naming the field) in the step
that meets it, never half-moved, and never take the other jobs of its batch down; reads show
what they can and flag the rest.
"""

from __future__ import annotations

import asyncio

import pytest

from backend.workers.job_store import JobStore, UniqueKeyHeldError
from backend.workers.models import Claim, Completion, Job, JobError, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff

BATCH = 6
CORRUPT_AT = 2  # the bad job sits in the middle of its batch

# (field, stored value or None = the field is deleted, who notices: lua | python)
CORRUPTIONS = [
    ("attempts", "abc"),
    ("args", "{{{not json"),
    ("kwargs", "[1, 2]"),
    ("name", None),
    ("state", "garbage"),
    ("priority", "high"),
    ("max_attempts", "many"),
    ("timeout", "1e400"),
]


def redis_of(store: JobStore) -> RedisJobStore:
    assert isinstance(store, RedisJobStore)  # the memory store is the Redis store on fakeredis
    return store


async def corrupt(store: JobStore, job: Job, field: str, value: str | None) -> None:
    rs = redis_of(store)
    key = rs.keys.queue(job.queue).job(job.id)
    if value is None:
        await rs.redis.hdel(key, field)
    else:
        await rs.redis.hset(key, field, value)


async def in_set(store: JobStore, job: Job, key_name: str) -> bool:
    rs = redis_of(store)
    return await rs.redis.zscore(getattr(rs.keys.queue(job.queue), key_name), job.id) is not None


async def assert_set_aside(store: JobStore, job: Job, field: str) -> None:
    got = await store.get(job.id)
    assert got is not None
    assert got.state is JobState.FAILED and "state" not in got.unreadable
    assert got.last_error is not None and got.last_error.type == "CorruptRecord"
    assert f"field {field}" in got.last_error.message
    for index in ("ready", "running", "waiting", "parked"):
        assert not await in_set(store, job, index), index
    failed = await store.list_jobs(state=JobState.FAILED, limit=100)
    assert job.id in {j.id for j in failed.jobs}


async def six(store: JobStore, **spec: object) -> list[Job]:
    return await store.enqueue_many([JobSpec("t.job", args=[i], **spec) for i in range(BATCH)])  # type: ignore[arg-type]


def done(job: Job) -> Completion:
    assert job.token is not None
    return Completion(Claim(job.queue, job.id, job.token), 0.01, result={"ok": job.id})


@pytest.mark.parametrize(("field", "value"), CORRUPTIONS, ids=[f for f, _ in CORRUPTIONS])
async def test_claim_sets_a_corrupt_job_aside_and_runs_the_rest_of_its_batch(
    store: JobStore, field: str, value: str | None
) -> None:
    jobs = await six(store, unique_key=None)
    bad = jobs[CORRUPT_AT]
    await corrupt(store, bad, field, value)
    claimed = await store.claim("w1", ["default"], BATCH, 30.0)
    assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs if j is not bad)
    assert all(j.args == [jobs.index(next(o for o in jobs if o.id == j.id))] for j in claimed)
    await assert_set_aside(store, bad, field)
    states = await store.finish([done(j) for j in claimed])
    assert states == [JobState.DONE] * (BATCH - 1)
    counts = (await store.counts())["default"]
    assert counts["done"] == BATCH - 1 and counts["failed"] == 1
    assert counts["enqueued"] == counts["running"] == 0
    assert await store.claim("w1", ["default"], BATCH, 30.0) == []  # nothing left half-moved


async def test_a_corrupt_job_frees_its_unique_key_and_limit_slot(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", unique_key="k1", limit_key="acct", limit=1))
    await corrupt(store, job, "attempts", "abc")
    assert await store.claim("w1", ["default"], 1, 30.0) == []
    await assert_set_aside(store, job, "attempts")
    again = await store.enqueue(JobSpec("t.job", unique_key="k1", limit_key="acct", limit=1))
    assert again.id != job.id
    (claimed,) = await store.claim("w1", ["default"], 1, 30.0)  # the slot is free
    assert claimed.id == again.id


async def test_finish_sets_aside_a_running_job_that_lost_its_name(store: JobStore) -> None:
    await six(store)
    claimed = await store.claim("w1", ["default"], BATCH, 30.0)
    assert len(claimed) == BATCH
    bad = claimed[CORRUPT_AT]
    await corrupt(store, bad, "name", None)
    states = await store.finish([done(j) for j in claimed])
    assert states == [JobState.FAILED if j is bad else JobState.DONE for j in claimed]
    await assert_set_aside(store, bad, "name")
    assert (await store.finish([done(bad)])) == [JobState.FAILED]  # a re-sent report: same answer
    others = [await store.get(j.id) for j in claimed if j is not bad]
    assert all(j is not None and j.state is JobState.DONE for j in others)


@pytest.mark.parametrize(("field", "value"), [("attempts", "abc"), ("max_attempts", "x"), ("name", None)])
async def test_a_failed_run_with_a_corrupt_record_is_set_aside_alone(
    store: JobStore, field: str, value: str | None
) -> None:
    await six(store)
    claimed = await store.claim("w1", ["default"], BATCH, 30.0)
    bad = claimed[CORRUPT_AT]
    await corrupt(store, bad, field, value)
    error = JobError("ValueError", "boom")
    backoff = Backoff(3600, 3600, 0)
    states = await store.finish([Completion(done(j).claim, 0.01, error=error, backoff=backoff, max_attempts=5)
                                 for j in claimed])
    assert states == [JobState.FAILED if j is bad else JobState.RETRY_SCHEDULED for j in claimed]
    await assert_set_aside(store, bad, field)


@pytest.mark.parametrize("confirmed", [True, False], ids=["confirmed", "unconfirmed"])
async def test_recovery_of_an_expired_lease_sets_a_corrupt_record_aside(
    store: JobStore, confirmed: bool
) -> None:
    """A confirmed claim's expiry is a charged run; an unconfirmed one is given back uncounted, which
    needs `attempts`: either way the unreadable record is set aside and the rest of the batch goes on."""
    await six(store)
    claimed = await store.claim("w1", ["default"], BATCH, 0.05)
    if confirmed:
        await store.extend([Claim(j.queue, j.id, j.token or "") for j in claimed], 0.05)
    bad = claimed[CORRUPT_AT]
    field = "max_attempts" if confirmed else "attempts"
    await corrupt(store, bad, field, "lots")
    await asyncio.sleep(0.2)
    assert await store.recover() == BATCH
    await assert_set_aside(store, bad, field)
    others = [await store.get(j.id) for j in claimed if j is not bad]
    expected = JobState.RETRY_SCHEDULED if confirmed else JobState.ENQUEUED
    assert all(j is not None and j.state is expected for j in others)


async def test_reads_show_a_corrupt_job_and_flag_what_they_cannot_read(store: JobStore) -> None:
    jobs = await six(store)
    bad = jobs[CORRUPT_AT]
    await corrupt(store, bad, "state", "garbage")
    await corrupt(store, bad, "args", "{{{not json")
    got = await store.get(bad.id)
    assert got is not None and got.unreadable == {"state": "garbage", "args": "{{{not json"}
    assert got.to_json()["state"] == "corrupt" and got.to_json()["unreadable"] == got.unreadable
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_jobs(limit=2, cursor=cursor)
        seen.extend(j.id for j in page.jobs)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert sorted(seen) == sorted(j.id for j in jobs)
    again = await store.enqueue(JobSpec("t.job", id=bad.id))  # an existing id: that job, as it is
    assert again.id == bad.id and again.unreadable


async def test_metrics_skip_and_count_unreadable_values(store: JobStore) -> None:
    rs = redis_of(store)
    await store.enqueue(JobSpec("t.job"))
    stats = rs.keys.queue("default").stats
    await rs.redis.hset(stats, mapping={"enq|t.other": "12abc", "dur|t.job|x": "1", "dursum|t.job": "nan"})
    snapshot = await store.metrics()
    assert snapshot.unreadable == 3
    assert snapshot.queues["default"].enqueued == {"t.job": 1}


async def test_an_unreadable_schedule_declaration_is_skipped(store: JobStore) -> None:
    rs = redis_of(store)
    await rs.redis.hset(rs.keys.schedules, mapping={"bad": "{not json", "worse": "[1]"})
    assert await store.list_schedules() == []


async def test_retry_refuses_to_make_a_second_live_job_with_one_unique_key(store: JobStore) -> None:
    first = await store.enqueue(JobSpec("t.job", unique_key="K"))
    await store.cancel(first.id)
    second = await store.enqueue(JobSpec("t.job", unique_key="K"))
    assert second.id != first.id
    with pytest.raises(UniqueKeyHeldError) as refused:
        await store.retry(first.id)
    assert refused.value.holder == second.id and second.id in str(refused.value)
    got = await store.get(first.id)
    assert got is not None and got.state is JobState.CANCELLED  # nothing was written
    (claimed,) = await store.claim("w1", ["default"], 5, 30.0)
    assert claimed.id == second.id
    await store.finish([done(claimed)])
    retried = await store.retry(first.id)  # the key is free again
    assert retried.state is JobState.ENQUEUED
    third = await store.enqueue(JobSpec("t.job", unique_key="K"))
    assert third.id == first.id  # the retried job holds the key now


async def test_paging_lists_every_job_once_when_hundreds_share_one_timestamp(store: JobStore) -> None:
    jobs = await store.enqueue_many([JobSpec("t.job") for _ in range(400)])  # one script call: one TIME
    assert len({j.created_at for j in jobs}) == 1
    for limit in (50, 25, 7):
        seen: list[str] = []
        cursor = None
        while True:
            page = await store.list_jobs(limit=limit, cursor=cursor)
            seen.extend(j.id for j in page.jobs)
            if page.cursor is None:
                break
            cursor = page.cursor
        assert len(seen) == len(set(seen)) == 400, limit
    named = await store.list_jobs(name="t.job", limit=500)
    assert len(named.jobs) == 400
