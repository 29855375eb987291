"""Handler policy and hand-backs at the store boundary, on every store (memory, fakeredis, Redis, Cluster).

A handler's policy (max_attempts, backoff) applies to its jobs unless the job set its own, whoever
enqueued them: workers advertise it per queue, enqueue and claim make it the job's, and the lease-expiry
recovery and the API then see the effective values. A worker without a job's handler hands it back,
uncounted, while a live worker advertises that handler (or the job has waited less than the grace time).
"""

from __future__ import annotations

import asyncio
import time

from backend.workers.job_store import JobStore
from backend.workers.models import Claim, Completion, HandlerPolicy, Job, JobError, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff
from tests.test_store_contract import claim_of, claim_soon

BOOM = JobError("ValueError", "boom")
UNKNOWN = JobError("UnknownHandler", "no handler here")
QUICK = Backoff(base=0.05, cap=0.05, jitter=0)


async def current(store: JobStore, job: Job) -> Job:
    got = await store.get(job.id)
    assert got is not None
    return got


async def test_an_advertised_max_attempts_applies_unless_the_job_sets_its_own(store: JobStore) -> None:
    await store.advertise_handlers(["default"], [HandlerPolicy("t.five", 5), HandlerPolicy("t.one", 1)])
    unset = await store.enqueue(JobSpec("t.five"))
    own = await store.enqueue(JobSpec("t.five", max_attempts=2))
    lower = await store.enqueue(JobSpec("t.one"))
    higher = await store.enqueue(JobSpec("t.one", max_attempts=4))
    nobody = await store.enqueue(JobSpec("t.unadvertised"))
    assert [j.max_attempts for j in (unset, own, lower, higher, nobody)] == [5, 2, 1, 4, 3]  # as enqueued
    stored = [(await current(store, j)).max_attempts for j in (unset, own, lower, higher, nobody)]
    assert stored == [5, 2, 1, 4, 3]
    claimed = {j.id: j.max_attempts for j in await store.claim("w", ["default"], 10, 30)}
    assert claimed == {unset.id: 5, own.id: 2, lower.id: 1, higher.id: 4, nobody.id: 3}


async def test_a_policy_advertised_after_the_enqueue_applies_at_the_claim(store: JobStore) -> None:
    """The API enqueued before any worker with the handler started: the claim fixes it."""
    job = await store.enqueue(JobSpec("t.late"))
    assert job.max_attempts == 3
    await store.advertise_handlers(["default"], [HandlerPolicy("t.late", 6, QUICK)])
    claimed = await claim_soon(store)
    assert claimed.max_attempts == 6 and claimed.backoff == QUICK


async def test_finish_applies_the_handlers_policy_only_where_the_job_set_none(store: JobStore) -> None:
    """The Completion carries the handler's policy; the job's own max_attempts and backoff win."""
    unset = await store.enqueue(JobSpec("t.job"))
    own = await store.enqueue(JobSpec("t.job", max_attempts=5, backoff=Backoff(base=100, cap=100, jitter=0)))
    claimed = {j.id: j for j in await store.claim("w", ["default"], 2, 30)}
    now = await store.server_time()
    handler_backoff = Backoff(base=1000, cap=1000, jitter=0)
    results = await store.finish([
        Completion(claim_of(claimed[unset.id]), 0.1, error=BOOM, max_attempts=1, backoff=handler_backoff),
        Completion(claim_of(claimed[own.id]), 0.1, error=BOOM, max_attempts=1, backoff=handler_backoff),
    ])
    assert results == [JobState.FAILED, JobState.RETRY_SCHEDULED]
    retried = await current(store, own)
    assert retried.run_at is not None and 99 <= retried.run_at - now <= 101  # its own backoff, not 1000 s


async def test_lease_expiry_recovery_uses_the_handlers_max_attempts(store: JobStore) -> None:
    """A job whose worker dies each time is run 5 times, the advertised policy's number, not the
    default 3: the recovery of expired leases reads the effective value the claim fixed."""
    await store.advertise_handlers(["default"], [HandlerPolicy("t.dies", 5, QUICK)])
    job = await store.enqueue(JobSpec("t.dies"))
    claims = 0
    deadline = time.monotonic() + 60
    while (await current(store, job)).state is not JobState.FAILED:
        assert time.monotonic() < deadline, await current(store, job)
        got = await store.claim("w", ["default"], 1, 0.05)  # lease 50 ms, never finished
        claims += len(got)
        # the worker got it (confirmed), then died: an unconfirmed claim would be given back uncounted
        await store.extend([Claim(j.queue, j.id, j.token or "") for j in got], 0.05)
        await asyncio.sleep(0.06)
        await store.recover(["default"])
    failed = await current(store, job)
    assert claims == 5 and failed.attempts == 5 and failed.last_error is not None
    assert failed.last_error.type == "LeaseExpired"


async def test_an_old_record_keeps_the_old_rule(store: JobStore) -> None:
    """A job hash written before the ma_def/bo_def fields existed: the lower of the job's and the
    handler's max attempts, and the handler's backoff, as before (old and new workers share Redis)."""
    job = await store.enqueue(JobSpec("t.old", max_attempts=4))
    assert isinstance(store, RedisJobStore)  # every store kind is (memory: on fakeredis)
    await store.redis.hdel(store.keys.queue("default").job(job.id), "ma_def", "bo_def")
    await store.advertise_handlers(["default"], [HandlerPolicy("t.old", 9)])
    claimed = await claim_soon(store)
    assert claimed.max_attempts == 4  # no flag: never raised by a policy
    (state,) = await store.finish([Completion(claim_of(claimed), 0.1, error=BOOM, max_attempts=1)])
    assert state is JobState.FAILED


async def test_a_hostile_policy_entry_is_ignored(store: JobStore) -> None:
    assert isinstance(store, RedisJobStore)
    hostile = {"t.h1": "nan inf -1 9", "t.h2": "0 - - -", "t.h3": "", "t.h4": "1e300"}
    await store.redis.hset(store.keys.queue("default").hpolicy, mapping=hostile)
    jobs = [await store.enqueue(JobSpec(name)) for name in ("t.h1", "t.h2", "t.h3", "t.h4")]
    assert [j.max_attempts for j in jobs] == [3, 3, 3, 3]
    claimed = await store.claim("w", ["default"], 4, 30)
    assert sorted(j.max_attempts for j in claimed) == [3, 3, 3, 3]
    assert all(j.backoff == Backoff() for j in claimed)


async def hand_back(store: JobStore, claim: Claim, grace: float) -> JobState | None:
    report = Completion(claim, 0.0, error=UNKNOWN, retryable=False, unknown_grace=grace)
    (state,) = await store.finish([report])
    return state


async def test_a_job_without_its_handler_is_handed_back_uncounted(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.new", max_attempts=1, unique_key="u1"))
    claimed = await claim_soon(store)
    now = await store.server_time()
    assert await hand_back(store, claim_of(claimed), grace=30) is JobState.SCHEDULED
    back = await current(store, job)
    assert back.attempts == 0 and back.worker is None and back.token is None
    assert back.run_at is not None and now < back.run_at <= now + 2.5  # a short delay, not a spin
    again = await store.enqueue(JobSpec("t.new", unique_key="u1"))
    assert again.id == job.id  # still the live holder of its unique key
    # a report re-sent after its reply was lost is not applied twice
    assert await hand_back(store, claim_of(claimed), grace=30) is JobState.SCHEDULED
    assert (await current(store, job)).attempts == 0
    # a worker that has the handler runs it as its first attempt (max_attempts=1 still allows it)
    rerun = await claim_soon(store, within=10)
    assert rerun.attempts == 1
    assert await store.finish([Completion(claim_of(rerun), 0.1, result="ok")]) == [JobState.DONE]


async def test_the_job_fails_unknown_handler_only_after_the_grace_time(store: JobStore) -> None:
    grace = 0.6
    job = await store.enqueue(JobSpec("t.nowhere"))
    started = await store.server_time()
    states = []
    while True:
        claimed = await claim_soon(store, within=10)
        state = await hand_back(store, claim_of(claimed), grace)
        states.append(state)
        if state is JobState.FAILED:
            break
        assert state is JobState.SCHEDULED
    failed = await current(store, job)
    assert failed.finished_at is not None and failed.finished_at - started >= grace
    assert failed.last_error == UNKNOWN and failed.attempts == 1
    assert len(states) >= 2  # handed back at least once before


async def test_a_live_worker_advertising_the_handler_keeps_the_job(store: JobStore) -> None:
    """Past the grace time since its first hand-back, the job is still handed back while some live
    worker advertises its handler; it fails once the advertisements have stopped for the grace time."""
    grace = 0.5
    job = await store.enqueue(JobSpec("t.busy"))
    first = await claim_soon(store)
    assert await hand_back(store, claim_of(first), grace) is JobState.SCHEDULED
    for _ in range(3):
        await store.advertise_handlers(["default"], [HandlerPolicy("t.busy")])
        await asyncio.sleep(grace / 2)
    await store.advertise_handlers(["default"], [HandlerPolicy("t.busy")])
    kept = await claim_soon(store, within=10)
    assert await hand_back(store, claim_of(kept), grace) is JobState.SCHEDULED
    await asyncio.sleep(grace + 0.1)
    last = await claim_soon(store, within=10)
    assert await hand_back(store, claim_of(last), grace) is JobState.FAILED
    assert (await current(store, job)).state is JobState.FAILED


async def test_a_hand_back_honours_a_cancel_request(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.cancelled"))
    claimed = await claim_soon(store)
    await store.cancel(job.id)
    assert await hand_back(store, claim_of(claimed), grace=30) is JobState.CANCELLED


async def test_a_stale_hand_back_changes_nothing(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.stale"))
    claimed = await claim_soon(store)
    assert await hand_back(store, Claim("default", job.id, "not-the-token"), grace=30) is None
    assert (await current(store, job)).state is JobState.RUNNING
    assert claimed.attempts == 1


async def test_garbage_in_the_advertisements_or_the_job_never_breaks_a_hand_back(store: JobStore) -> None:
    """An unreadable last-seen time counts as never seen, an unreadable first hand-back time as now:
    the job is handed back (a fresh grace), never failed early and never left running."""
    assert isinstance(store, RedisJobStore)
    keys = store.keys.queue("default")
    for seen, since in (("yesterday", "nan?"), ("nan", "nan"), ("inf", "-inf"), ("1e300", "1e300")):
        job = await store.enqueue(JobSpec("t.garbled"))
        await store.redis.hset(keys.handlers, mapping={"t.garbled": seen})
        await store.redis.hset(keys.job(job.id), mapping={"uh_since": since})
        claimed = await claim_soon(store)
        assert await hand_back(store, claim_of(claimed), grace=30) is JobState.SCHEDULED, (seen, since)
        back = await current(store, job)
        assert back.attempts == 0 and not back.unreadable
        await store.cancel(job.id)
