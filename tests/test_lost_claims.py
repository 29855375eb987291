"""A claim the worker never received does not use up an attempt (issue 13, item 8), on every store.

claim.lua hands a claim out unconfirmed; the worker confirms it with an extend as soon as the claim
reaches it (before any handler starts), and every heartbeat confirms it again. When lease recovery
finds an expired claim that was never confirmed (its reply was lost, or the worker died before it
could confirm) it gives the job back to ready without charging the attempt, at most LOST_CLAIM_CAP
times per job; after that such an expiry is charged like any other, so nothing can loop for ever.
The same with real worker processes and a dropped claim reply: tests/test_network_faults.py.
"""

from __future__ import annotations

import asyncio

import pytest

from backend.workers.job_store import JobStore
from backend.workers.models import Claim, Job, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import LOST_CLAIM_CAP, Backoff

LEASE = 0.2
PAST_LEASE = 0.5
NO_WAIT = Backoff(base=0.0, cap=0.0, jitter=0.0)


def claim_of(job: Job) -> Claim:
    assert job.token is not None
    return Claim(job.queue, job.id, job.token)


async def lose_claim(store: JobStore, worker: str = "lost") -> Job:
    """Claim one job and never confirm it, as when the claim's reply never reached the worker."""
    (job,) = await store.claim(worker, ["default"], 1, LEASE)
    return job


async def get(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None
    return job


async def test_an_unconfirmed_claim_that_expires_is_given_back_uncounted(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", max_attempts=1))
    behind = await store.enqueue(JobSpec("t.job"))
    lost = await lose_claim(store)
    assert lost.id == job.id and lost.attempts == 1
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    back = await get(store, job.id)
    assert back.state is JobState.ENQUEUED and back.attempts == 0
    assert back.token is None and back.worker is None and back.last_error is None
    assert back.lease_until is None and back.started_at is None
    metrics = (await store.metrics()).queues["default"]
    assert metrics.runs == {} and metrics.retries == {}, "a claim nobody received is not a run"
    (again,) = await store.claim("w2", ["default"], 1, 30)
    assert again.id == job.id and again.attempts == 1, "back in its place, ahead of the job behind it"
    assert await store.complete(claim_of(again), "ran once") is JobState.DONE
    await assert_stale(store, claim_of(lost))
    done = await get(store, job.id)
    assert done.state is JobState.DONE and done.attempts == 1 and done.result == "ran once"
    (second,) = await store.claim("w2", ["default"], 1, 30)
    assert second.id == behind.id


async def assert_stale(store: JobStore, claim: Claim) -> None:
    assert await store.extend([claim], 30) == [claim]


async def test_a_confirmed_claim_that_expires_is_charged(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", max_attempts=2, backoff=NO_WAIT))
    received = await lose_claim(store, worker="dead")
    assert await store.extend([claim_of(received)], LEASE) == []  # the worker got it, then died
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    got = await get(store, job.id)
    assert got.state is JobState.RETRY_SCHEDULED and got.attempts == 1
    assert got.last_error is not None and got.last_error.type == "LeaseExpired"
    assert (await store.metrics()).queues["default"].runs == {("t.job", "expired"): 1}


async def test_a_lost_claim_is_given_back_at_most_the_cap_then_charged(store: JobStore) -> None:
    """A job that kills its worker before the confirm must still end: after LOST_CLAIM_CAP free give-backs
    its unconfirmed expiries are charged, so a max_attempts=1 job fails on the next one."""
    job = await store.enqueue(JobSpec("t.job", max_attempts=1))
    for round_ in range(LOST_CLAIM_CAP):
        lost = await lose_claim(store, worker=f"lost-{round_}")
        assert lost.id == job.id and lost.attempts == 1, round_
        await asyncio.sleep(PAST_LEASE)
        assert await store.recover() == 1
        back = await get(store, job.id)
        assert back.state is JobState.ENQUEUED and back.attempts == 0, round_
    last = await lose_claim(store, worker="lost-last")
    assert last.attempts == 1
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    failed = await get(store, job.id)
    assert failed.state is JobState.FAILED and failed.attempts == 1
    assert failed.last_error is not None and failed.last_error.type == "LeaseExpired"
    assert "lost-last" in failed.last_error.message
    assert await store.recover() == 0
    assert await store.claim("w", ["default"], 1, 30) == []
    assert (await store.metrics()).queues["default"].runs == {("t.job", "expired"): 1}


async def test_claim_itself_recovers_a_lost_claim_and_hands_it_out_again(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", max_attempts=1))
    await lose_claim(store)
    assert await store.claim("w2", ["default"], 1, 30) == []  # nobody else can take it meanwhile
    await asyncio.sleep(PAST_LEASE)
    (again,) = await store.claim("w2", ["default"], 1, 30)
    assert again.id == job.id and again.attempts == 1 and again.worker == "w2"


async def test_finish_needs_no_confirm(store: JobStore) -> None:
    """A worker that finishes before its confirm landed has received the claim: the outcome stands."""
    job = await store.enqueue(JobSpec("t.job", max_attempts=1))
    running = await lose_claim(store)
    assert await store.complete(claim_of(running), "fast") is JobState.DONE
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 0
    done = await get(store, job.id)
    assert done.state is JobState.DONE and done.attempts == 1


async def test_a_heartbeat_after_the_claim_confirms_it(store: JobStore) -> None:
    """Confirming is any extend with the current token, so a heartbeat confirms too; a stale token
    confirms nothing."""
    job = await store.enqueue(JobSpec("t.job", max_attempts=1))
    first = await lose_claim(store, worker="a")
    await asyncio.sleep(PAST_LEASE)
    (second,) = await store.claim("b", ["default"], 1, LEASE)
    assert await store.extend([claim_of(first)], LEASE) == [claim_of(first)]  # old token: no confirm
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    assert (await get(store, job.id)).state is JobState.ENQUEUED  # still unconfirmed: given back
    (third,) = await store.claim("c", ["default"], 1, LEASE)
    assert await store.extend([claim_of(third)], LEASE) == []
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    failed = await get(store, job.id)
    assert failed.state is JobState.FAILED and failed.attempts == 1 and second.token != third.token


async def test_a_cancel_requested_on_a_lost_claim_cancels_the_job(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", unique_key="only-one"))
    await lose_claim(store)
    assert (await store.cancel(job.id)).cancel_requested
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    got = await get(store, job.id)
    assert got.state is JobState.CANCELLED and got.attempts == 0 and got.finished_at is not None
    fresh = await store.enqueue(JobSpec("t.job", unique_key="only-one"))
    assert fresh.id != job.id, "the unique key was released"


async def test_a_lost_claim_frees_its_concurrency_slot(store: JobStore) -> None:
    first = await store.enqueue(JobSpec("t.job", limit_key="k", limit=1))
    second = await store.enqueue(JobSpec("t.job", limit_key="k", limit=1))
    (lost,) = await store.claim("lost", ["default"], 2, LEASE)  # the second is parked behind the first
    assert lost.id == first.id
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    (again,) = await store.claim("w2", ["default"], 2, 30)
    assert again.id == first.id and again.attempts == 1
    assert await store.complete(claim_of(again)) is JobState.DONE
    (then,) = await store.claim("w2", ["default"], 2, 30)
    assert then.id == second.id and then.attempts == 1


@pytest.mark.parametrize(("field", "value"), [("lc", "-100"), ("lc", "abc"), ("lc", "1e400")])
async def test_a_hostile_lost_claim_count_or_mark_is_charged(store: JobStore, field: str, value: str) -> None:
    """A hand-edited count cannot buy a job endless free rounds: anything but a count in [0, cap) is
    charged, as an expiry was before lost claims were told apart."""
    assert isinstance(store, RedisJobStore)
    job = await store.enqueue(JobSpec("t.job", max_attempts=1))
    await lose_claim(store)
    await store.redis.hset(store.keys.queue("default").job(job.id), field, value)
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    failed = await get(store, job.id)
    assert failed.state is JobState.FAILED and failed.attempts == 1
    assert failed.last_error is not None and failed.last_error.type == "LeaseExpired"


@pytest.mark.parametrize("mark", ["x", "", "0"])
async def test_a_hostile_unconfirmed_mark_is_charged(store: JobStore, mark: str) -> None:
    """The claim call's unconfirmed:<nonce> key says '1' (or 'lost' once recovery met one of its claims):
    any other value is not trusted, and the expiry is charged."""
    assert isinstance(store, RedisJobStore)
    job = await store.enqueue(JobSpec("t.job", max_attempts=1))
    lost = await lose_claim(store)
    assert lost.token is not None
    nonce = lost.token.rsplit(".", 1)[0]
    await store.redis.set(store.keys.queue("default").unconfirmed_prefix + nonce, mark)
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    failed = await get(store, job.id)
    assert failed.state is JobState.FAILED and failed.attempts == 1


async def test_the_batch_confirm_confirms_every_claim_of_the_call(store: JobStore) -> None:
    """One confirm for a claim call (the worker's: Leases.confirm) and none of its claims is given back."""
    jobs = [await store.enqueue(JobSpec("t.job", max_attempts=1)) for _ in range(3)]
    claimed = await store.claim("w", ["default"], 3, LEASE)
    assert {job.id for job in claimed} == {job.id for job in jobs}
    assert await store.confirm([claim_of(job) for job in claimed], LEASE) == []
    again = await store.confirm([claim_of(job) for job in claimed], LEASE)
    assert again == [], "a re-sent confirm finds them current"
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 3
    for job in jobs:
        failed = await get(store, job.id)
        assert failed.state is JobState.FAILED and failed.attempts == 1, "confirmed: charged"


async def test_a_confirm_after_one_claim_of_the_call_was_recovered_names_it_stale(store: JobStore) -> None:
    """Recovery met a claim of the call before the confirm landed: the confirm checks each claim, so the
    given-back one is stale (its handler never starts) and the others are confirmed."""
    assert isinstance(store, RedisJobStore)
    first = await store.enqueue(JobSpec("t.job", max_attempts=1))
    second = await store.enqueue(JobSpec("t.job", max_attempts=1))
    claimed = await store.claim("w", ["default"], 2, LEASE)
    by_id = {job.id: job for job in claimed}
    # the first's lease is pushed far out by hand: only the second expires
    await store.redis.zadd(store.keys.queue("default").running, {first.id: 2**52})
    await asyncio.sleep(PAST_LEASE)
    assert await store.recover() == 1
    assert (await get(store, second.id)).state is JobState.ENQUEUED
    stale = await store.confirm([claim_of(by_id[first.id]), claim_of(by_id[second.id])], LEASE)
    assert stale == [claim_of(by_id[second.id])]
    await store.redis.zadd(store.keys.queue("default").running, {first.id: 0})
    assert await store.recover() == 1
    assert (await get(store, first.id)).state is JobState.FAILED, "the first was confirmed: charged"


async def test_a_lost_claim_in_a_paused_queue_waits_there_for_the_resume(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", max_attempts=1))
    await lose_claim(store)
    await store.pause_queue("default")
    await asyncio.sleep(PAST_LEASE)
    assert await store.claim("w", ["default"], 1, 30) == []  # recovers it, claims nothing: paused
    back = await get(store, job.id)
    assert back.state is JobState.ENQUEUED and back.attempts == 0
    await store.resume_queue("default")
    (again,) = await store.claim("w", ["default"], 1, 30)
    assert again.id == job.id and again.attempts == 1
