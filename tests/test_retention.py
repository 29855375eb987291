"""Retention keeps pace with finishing (finish.lua runs purge_expired for up to 2n + 2 jobs per n
reports), on every store, and leaves no index naming a missing job and no job outside its indexes.

The terminal-job counts are read straight from Redis (ZCARD), never through the store's reads:
the memory store also purges on reads, and this must show the finish path alone keeps pace.
"""

from __future__ import annotations

import asyncio

from backend.workers.job_store import JobStore
from backend.workers.models import TERMINAL_STATES, Claim, Completion, JobError, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore

QUEUE = "keep"
BATCH = 20
PER_BATCH = BATCH + 1  # terminal jobs each finish_batch makes
RETENTION = 0.01  # seconds; each batch waits past it, so every earlier terminal job has expired


def redis_store(store: JobStore) -> RedisJobStore:
    assert isinstance(store, RedisJobStore)  # every store of the suite runs the Lua scripts
    return store


async def terminal_count(store: RedisJobStore) -> int:
    keys = store.keys.queue(QUEUE)
    return sum([int(await store.redis.zcard(keys.state(state.value))) for state in TERMINAL_STATES])


async def finish_batch(store: RedisJobStore, tag: str) -> list[str]:
    """BATCH runs reported in one finish call (most done, some failed, one cancelled by request),
    then one scheduled job cancelled: PER_BATCH terminal jobs; half hold a unique key. Their ids."""
    specs = [JobSpec("t.keep", queue=QUEUE, id=f"{tag}-{i}", unique_key=f"{tag}-{i}" if i % 2 else None)
             for i in range(BATCH)]
    jobs = await store.enqueue_many([*specs, JobSpec("t.keep", queue=QUEUE, id=f"{tag}-later", delay=3600)])
    claimed = await store.claim("w1", [QUEUE], BATCH, 30.0)
    assert len(claimed) == BATCH
    reports = []
    for i, job in enumerate(claimed):
        assert job.token is not None
        claim = Claim(QUEUE, job.id, job.token)
        if i % 5 == 1:
            reports.append(Completion(claim, 0.001, error=JobError("ValueError", "no"), retryable=False))
        elif i == 2:
            reports.append(Completion(claim, 0.001, cancelled=True))
        else:
            reports.append(Completion(claim, 0.001, result=i))
    states = await store.finish(reports)
    assert all(state in TERMINAL_STATES for state in states)
    await store.cancel(jobs[-1].id, QUEUE)
    return [job.id for job in jobs]


async def assert_consistent(store: RedisJobStore, ids: list[str]) -> int:
    """Every job we made is either gone from everywhere or stored and indexed once; no unique key
    names a missing job. Returns how many are stored."""
    r, keys = store.redis, store.keys.queue(QUEUE)
    stored = 0
    for job_id in ids:
        state = await r.hget(keys.job(job_id), "state")
        in_jobs = await r.zscore(keys.jobs, job_id) is not None
        indexed = [s.value for s in TERMINAL_STATES
                   if await r.zscore(keys.state(s.value), job_id) is not None]
        if state is None:
            assert not in_jobs and not indexed, f"{job_id} is gone but still indexed: {indexed}"
        else:
            assert in_jobs and indexed == [state], f"{job_id} ({state}) is indexed as {indexed}"
            stored += 1
    for key, holder in (await r.hgetall(keys.unique)).items():
        assert await r.exists(keys.job(holder)), f"unique key {key} names the missing job {holder}"
    assert await r.zcard(keys.jobs) == stored
    return stored


async def test_finishing_purges_expired_jobs_as_fast_as_it_finishes(store: JobStore) -> None:
    s = redis_store(store)
    s.retention_seconds = 3600.0  # first a backlog that is not yet expired: 5 batches
    ids: list[str] = []
    for b in range(5):
        ids += await finish_batch(s, f"old{b}")
    assert await terminal_count(s) == 5 * PER_BATCH

    s.retention_seconds = RETENTION
    backlog = 5 * PER_BATCH
    for b in range(8):
        await asyncio.sleep(2 * RETENTION)  # everything finished before this batch is past the retention
        ids += await finish_batch(s, f"new{b}")
        # BATCH reports purge up to 2 * BATCH + 2 expired jobs: the backlog shrinks by more than the
        # batch adds, down to the batch itself
        backlog = max(0, backlog - (2 * BATCH + 2)) + PER_BATCH
        assert await terminal_count(s) == backlog, f"batch {b}"
        assert await assert_consistent(s, ids) == backlog
    assert backlog == PER_BATCH  # bounded by one batch, after 13 batches (273 jobs) finished
    purged = await s.redis.hget(s.keys.queue(QUEUE).stats, "prg|t.keep")
    assert int(purged) == len(ids) - PER_BATCH  # every deletion counted for its name (tidy.lua reads it)


async def test_a_long_retention_keeps_everything(store: JobStore) -> None:
    s = redis_store(store)
    ids = [job_id for b in range(3) for job_id in await finish_batch(s, f"b{b}")]
    assert await terminal_count(s) == 3 * PER_BATCH  # the default retention: 7 days
    assert await assert_consistent(s, ids) == 3 * PER_BATCH


async def test_purge_never_deletes_a_live_job_a_stale_index_names(store: JobStore) -> None:
    """A hand edit put a live job in the `done` index: purge drops the entry and keeps the job."""
    s = redis_store(store)
    keys = s.keys.queue(QUEUE)
    live = await s.enqueue(JobSpec("t.keep", queue=QUEUE, unique_key="held"))
    await s.redis.zadd(keys.state("done"), {live.id: 0})
    assert await s.purge(older_than=1.0, queues=[QUEUE]) == 0
    assert await s.redis.zscore(keys.state("done"), live.id) is None
    got = await s.get(live.id, QUEUE)
    assert got is not None and got.state is JobState.ENQUEUED
    assert await s.redis.hget(keys.unique, "held") == live.id


async def test_purge_of_a_job_indexed_twice_leaves_no_index_behind(store: JobStore) -> None:
    """A failed job also listed under `done` (a partial restore): deleted from both indexes."""
    s = redis_store(store)
    keys = s.keys.queue(QUEUE)
    ids = await finish_batch(s, "twice")
    states = {i: await s.redis.hget(keys.job(i), "state") for i in ids}
    failed = min(i for i, state in states.items() if state == "failed")
    await s.redis.zadd(keys.state("done"), {failed: 0})
    await asyncio.sleep(2 * RETENTION)
    assert await s.purge(older_than=RETENTION, queues=[QUEUE]) == PER_BATCH
    assert await assert_consistent(s, ids) == 0
    assert await terminal_count(s) == 0


async def test_purge_drops_the_index_entries_of_lost_records(store: JobStore) -> None:
    """Some hashes were lost (a partial restore): purge still clears every index entry naming them."""
    s = redis_store(store)
    keys = s.keys.queue(QUEUE)
    ids = await finish_batch(s, "lost")
    for job_id in ids[:5]:
        await s.redis.delete(keys.job(job_id))
    await asyncio.sleep(2 * RETENTION)
    s.retention_seconds = RETENTION
    ids += await finish_batch(s, "next")  # the finish path meets them first
    assert await assert_consistent(s, ids) == PER_BATCH
    purged = await s.redis.hget(keys.stats, "prg|t.keep")
    assert int(purged) == PER_BATCH - 5  # a lost record's name is unknown: its name keeps its series
