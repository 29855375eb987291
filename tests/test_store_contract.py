"""The job-store contract, held against every backend (memory, fakeredis, a real Redis).

Each test names the transition or guarantee it shows. Time-dependent steps use
short leases and delays with real sleeps and generous margins; no test asserts
how long anything took.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from backend.workers.job_store import (
    IllegalTransitionError,
    JobNotFoundError,
    JobStore,
    StaleClaimError,
)
from backend.workers.models import ALL_STATES, Claim, Completion, Job, JobError, JobSpec, JobState, WorkerInfo
from backend.workers.rules import DURATION_BUCKETS, Backoff, InvalidJobError

EPS = 0.05  # slack for the stores' millisecond clocks and scheduling noise
NO_WAIT = Backoff(base=0.0, cap=0.0, jitter=0.0)  # a failed run is due again at once
BOOM = JobError("ValueError", "boom")


def claim_of(job: Job) -> Claim:
    assert job.token is not None
    return Claim(job.queue, job.id, job.token)


async def claim_one(store: JobStore, queue: str = "default", lease: float = 30.0, worker: str = "w1") -> Job:
    (job,) = await store.claim(worker, [queue], 1, lease)
    return job


async def confirmed(store: JobStore, job: Job, lease: float) -> Job:
    """What a worker does as soon as a claim reaches it: confirm it (an extend), so that its expiry is
    a charged run; an unconfirmed claim is given back uncounted (tests/test_lost_claims.py)."""
    assert await store.extend([claim_of(job)], lease) == []
    return job


async def claim_soon(
    store: JobStore, queue: str = "default", lease: float = 30.0, worker: str = "w1", within: float = 5.0
) -> Job:
    """Claim one job that is due now or very soon (promotion and recovery run inside claim)."""
    deadline = time.monotonic() + within
    while True:
        jobs = await store.claim(worker, [queue], 1, lease)
        if jobs:
            return jobs[0]
        assert time.monotonic() < deadline, f"no job became claimable on {queue} within {within}s"
        await asyncio.sleep(0.05)


async def state_of(store: JobStore, job_id: str) -> JobState:
    job = await store.get(job_id)
    assert job is not None
    return job.state


async def job_in(store: JobStore, state: JobState, **spec: object) -> Job:
    """A job brought to `state` through the store's own transitions."""
    if state is JobState.SCHEDULED:
        return await store.enqueue(JobSpec("t.job", delay=3600, **spec))  # type: ignore[arg-type]
    job = await store.enqueue(JobSpec("t.job", **spec))  # type: ignore[arg-type]
    if state is JobState.ENQUEUED:
        return job
    queue = job.queue
    running = await claim_one(store, queue)
    assert running.id == job.id
    if state is JobState.RUNNING:
        return running
    if state is JobState.DONE:
        await store.complete(claim_of(running), "ok")
    elif state is JobState.RETRY_SCHEDULED:
        await store.fail(claim_of(running), BOOM, retry_delay=3600)
    elif state is JobState.FAILED:
        await store.fail(claim_of(running), BOOM, retryable=False)
    else:
        raise AssertionError(state)
    got = await store.get(job.id)
    assert got is not None and got.state is state
    return got


async def cancelled_job(store: JobStore) -> Job:
    job = await store.enqueue(JobSpec("t.job"))
    return await store.cancel(job.id)


# -- enqueue ---------------------------------------------------------------------


async def test_enqueue_ready_job(store: JobStore) -> None:
    before = time.time()
    job = await store.enqueue(JobSpec("t.add", args=[1, 2], kwargs={"x": "y"}, queue="q1", max_attempts=4))
    after = time.time()
    assert job.state is JobState.ENQUEUED
    assert (job.name, job.queue, job.args, job.kwargs) == ("t.add", "q1", [1, 2], {"x": "y"})
    assert job.attempts == 0 and job.max_attempts == 4
    assert before - EPS <= job.created_at <= after + EPS
    assert job.token is None and job.started_at is None and job.finished_at is None
    assert await store.get(job.id) == job
    assert await store.get(job.id, "q1") == job
    assert await store.get(job.id, "other") is None
    assert await store.get("nope") is None
    assert "q1" in await store.queues()


async def test_enqueue_later_is_scheduled(store: JobStore) -> None:
    now = time.time()
    delayed = await store.enqueue(JobSpec("t.job", delay=60))
    at_future = await store.enqueue(JobSpec("t.job", run_at=now + 60))
    at_past = await store.enqueue(JobSpec("t.job", run_at=now - 60))
    delay_wins = await store.enqueue(JobSpec("t.job", delay=0, run_at=now + 60))
    assert delayed.state is JobState.SCHEDULED and delayed.run_at is not None
    assert now + 60 - EPS <= delayed.run_at <= time.time() + 60 + EPS
    assert at_future.state is JobState.SCHEDULED
    assert at_future.run_at == pytest.approx(now + 60, abs=0.002)
    assert at_past.state is JobState.ENQUEUED
    assert delay_wins.state is JobState.ENQUEUED


async def test_enqueue_rejects_invalid_specs(store: JobStore) -> None:
    for spec in (
        JobSpec("bad name!"),
        JobSpec("t.job", queue="bad queue"),
        JobSpec("t.job", args=[object()]),
        JobSpec("t.job", max_attempts=0),
        JobSpec("t.job", delay=-1),
        JobSpec("t.job", id="bad id"),
    ):
        with pytest.raises(InvalidJobError):
            await store.enqueue(spec)
    assert await store.counts() == {}


async def test_enqueue_many_keeps_order_and_dedups(store: JobStore) -> None:
    specs = [JobSpec("t.job", id=f"j{i}", args=[i]) for i in range(5)]
    specs.append(JobSpec("t.job", id="j1", args=[99]))
    jobs = await store.enqueue_many(specs)
    assert [job.id for job in jobs] == ["j0", "j1", "j2", "j3", "j4", "j1"]
    assert jobs[5].args == [1]
    assert (await store.counts())["default"]["enqueued"] == 5


async def test_id_dedup_in_any_state(store: JobStore) -> None:
    first = await store.enqueue(JobSpec("t.job", id="fixed", args=[1]))
    again = await store.enqueue(JobSpec("t.job", id="fixed", args=[2], priority=5))
    assert again == first
    running = await claim_one(store)
    await store.complete(claim_of(running), "r")
    after_done = await store.enqueue(JobSpec("t.job", id="fixed", args=[3]))
    assert after_done.state is JobState.DONE and after_done.args == [1]
    other_queue = await store.enqueue(JobSpec("t.job", id="fixed", queue="q2"))
    assert other_queue.state is JobState.ENQUEUED and other_queue.queue == "q2"
    metrics = await store.metrics()
    assert metrics.queues["default"].enqueued == {"t.job": 1}


async def test_unique_key_dedup_while_live(store: JobStore) -> None:
    first = await store.enqueue(JobSpec("t.job", unique_key="k", args=[1]))
    assert await store.enqueue(JobSpec("t.job", unique_key="k", args=[2])) == first
    scheduled = await store.enqueue(JobSpec("t.job", unique_key="s", delay=3600))
    assert (await store.enqueue(JobSpec("t.job", unique_key="s"))).id == scheduled.id
    elsewhere = await store.enqueue(JobSpec("t.job", unique_key="k", queue="q2"))
    assert elsewhere.id != first.id
    # running still holds the key; done releases it
    running = await claim_one(store)
    assert running.id == first.id
    assert (await store.enqueue(JobSpec("t.job", unique_key="k"))).id == first.id
    await store.complete(claim_of(running))
    second = await store.enqueue(JobSpec("t.job", unique_key="k", args=[3]))
    assert second.id != first.id and second.state is JobState.ENQUEUED
    # cancelled releases it; a manual retry takes it back while it is free
    await store.cancel(second.id)
    retried = await store.retry(second.id)
    assert (await store.enqueue(JobSpec("t.job", unique_key="k"))).id == retried.id
    assert (await store.metrics()).queues["default"].enqueued == {"t.job": 3}


# -- claim, complete, fail ----------------------------------------------------------


async def test_enqueued_running_done(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job"))
    before = time.time()
    running = await claim_one(store, lease=30, worker="worker-a")
    after = time.time()
    assert running.id == job.id and running.state is JobState.RUNNING
    assert running.attempts == 1 and running.worker == "worker-a" and running.token
    assert running.started_at is not None and before - EPS <= running.started_at <= after + EPS
    assert running.lease_until is not None
    assert before + 30 - EPS <= running.lease_until <= after + 30 + EPS
    assert await store.claim("w2", ["default"], 5, 30) == []
    state = await store.complete(claim_of(running), {"answer": 42}, duration=0.01)
    assert state is JobState.DONE
    done = await store.get(job.id)
    assert done is not None and done.state is JobState.DONE
    assert done.result == {"answer": 42} and done.attempts == 1
    assert done.finished_at is not None and done.token is None and done.lease_until is None


async def test_each_claim_gets_a_fresh_token(store: JobStore) -> None:
    await store.enqueue(JobSpec("t.job"))
    tokens = set()
    for _ in range(3):
        running = await claim_one(store)
        tokens.add(running.token)
        assert await store.release([claim_of(running)]) == 1
    assert len(tokens) == 3


async def test_claim_respects_limit_and_queue_order(store: JobStore) -> None:
    for queue in ("a", "b"):
        for _ in range(3):
            await store.enqueue(JobSpec("t.job", queue=queue))
    assert await store.claim("w", ["a", "b"], 0, 30) == []
    first = await store.claim("w", ["b", "a"], 4, 30)
    assert [job.queue for job in first] == ["b", "b", "b", "a"]
    rest = await store.claim("w", ["a", "b", "nothing-here"], 10, 30)
    assert [job.queue for job in rest] == ["a", "a"]


async def test_failures_retry_until_attempts_run_out(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", max_attempts=3))
    for attempt in (1, 2):
        running = await claim_soon(store)
        assert running.attempts == attempt
        assert await store.fail(claim_of(running), BOOM, retry_delay=0) is JobState.RETRY_SCHEDULED
        waiting = await store.get(job.id)
        assert waiting is not None and waiting.state is JobState.RETRY_SCHEDULED
        assert waiting.last_error == BOOM and waiting.attempts == attempt and waiting.token is None
    running = await claim_soon(store)
    assert running.attempts == 3
    assert await store.fail(claim_of(running), BOOM, retry_delay=0) is JobState.FAILED
    failed = await store.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.attempts == 3 and failed.finished_at is not None and failed.last_error == BOOM
    assert await store.claim("w", ["default"], 1, 30) == []


async def test_non_retryable_error_fails_at_once(store: JobStore) -> None:
    await store.enqueue(JobSpec("t.job", max_attempts=5))
    running = await claim_one(store)
    assert await store.fail(claim_of(running), BOOM, retryable=False) is JobState.FAILED
    failed = await store.get(running.id)
    assert failed is not None and failed.attempts == 1 and failed.last_error == BOOM


async def test_retry_delay_overrides_backoff(store: JobStore) -> None:
    await store.enqueue(JobSpec("t.job", backoff=Backoff(base=1000, jitter=0)))
    running = await claim_one(store)
    before = time.time()
    await store.fail(claim_of(running), BOOM, retry_delay=120)
    after = time.time()
    job = await store.get(running.id)
    assert job is not None and job.run_at is not None
    assert before + 120 - EPS <= job.run_at <= after + 120 + EPS


def test_backoff_bounds_for_each_attempt() -> None:
    backoff = Backoff(base=0.5, cap=20.0, jitter=0.25)
    rng = random.Random(7)
    for attempt in range(1, 12):
        full = min(20.0, 0.5 * 2 ** (attempt - 1))
        low, high = backoff.bounds(attempt)
        assert (low, high) == pytest.approx((full * 0.75, full))
        for _ in range(200):
            assert full * 0.75 - 1e-9 <= backoff.delay(attempt, rng) <= full + 1e-9
    exact = Backoff(base=2.0, cap=100.0, jitter=0.0)
    assert [exact.delay(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 64, 100, 100]
    with pytest.raises(InvalidJobError):
        Backoff(jitter=1.5)


async def test_retry_is_scheduled_within_backoff_bounds(store: JobStore) -> None:
    backoff = Backoff(base=0.05, cap=0.3, jitter=0.5)
    job = await store.enqueue(JobSpec("t.job", max_attempts=5, backoff=backoff))
    for attempt in range(1, 5):
        running = await claim_soon(store)
        assert running.attempts == attempt
        before = time.time()
        await store.fail(claim_of(running), BOOM)
        after = time.time()
        waiting = await store.get(job.id)
        assert waiting is not None and waiting.run_at is not None
        low, high = backoff.bounds(attempt)
        assert before + low - EPS <= waiting.run_at <= after + high + EPS, (attempt, waiting.run_at - before)
    assert (await store.metrics()).queues["default"].retries == {"t.job": 4}


async def test_finish_in_a_batch(store: JobStore) -> None:
    for _ in range(3):
        await store.enqueue(JobSpec("t.job", max_attempts=2))
    jobs = await store.claim("w", ["default"], 3, 30)
    stale = Claim("default", jobs[2].id, "not-the-token")
    results = await store.finish([
        Completion(claim_of(jobs[0]), 0.1, result=1),
        Completion(claim_of(jobs[1]), 0.1, error=BOOM, retry_delay=3600),
        Completion(stale, 0.1),
        Completion(Claim("default", "missing", "x"), 0.1),
    ])
    assert results == [JobState.DONE, JobState.RETRY_SCHEDULED, None, None]
    assert await state_of(store, jobs[2].id) is JobState.RUNNING


async def test_finish_applies_the_handlers_retry_policy(store: JobStore) -> None:
    """The worker sends the handler's policy with the report; the store alone decides retry or fail.
    (A job that set its own max_attempts or backoff keeps them: tests/test_handler_policy.py.)"""
    spec = JobSpec("t.job")
    first, second = await store.enqueue(spec), await store.enqueue(spec)
    claimed = {job.id: job for job in await store.claim("w", ["default"], 2, 30)}
    now = await store.server_time()
    handler_backoff = Backoff(base=1000, cap=1000, jitter=0)
    results = await store.finish([
        Completion(claim_of(claimed[first.id]), 0.1, error=BOOM, backoff=handler_backoff),
        Completion(claim_of(claimed[second.id]), 0.1, error=BOOM, max_attempts=1),
    ])
    assert results == [JobState.RETRY_SCHEDULED, JobState.FAILED]
    retried = await store.get(first.id)
    assert retried is not None and retried.run_at is not None
    assert 990 <= retried.run_at - now <= 1010  # the handler's backoff, not the default (1 s)


# -- fencing and leases ------------------------------------------------------------


async def assert_stale(store: JobStore, old: Claim) -> None:
    with pytest.raises(StaleClaimError):
        await store.complete(old, "late")
    with pytest.raises(StaleClaimError):
        await store.fail(old, BOOM)
    assert await store.finish([Completion(old, 0.1)]) == [None]
    assert await store.extend([old], 30) == [old]
    assert await store.release([old]) == 0
    stale = (await store.heartbeat(WorkerInfo(id="old-worker"), [old], 30)).stale
    assert stale == [old]


async def test_stale_token_after_lease_expiry_changes_nothing(store: JobStore) -> None:
    await store.enqueue(JobSpec("t.job", max_attempts=3, backoff=NO_WAIT))
    first = await confirmed(store, await claim_one(store, lease=0.2, worker="slow"), 0.2)
    await asyncio.sleep(0.5)
    second = await claim_soon(store, lease=30, worker="fast")
    assert second.id == first.id and second.attempts == 2 and second.token != first.token
    await assert_stale(store, claim_of(first))
    still = await store.get(first.id)
    assert still is not None and still.state is JobState.RUNNING
    assert still.worker == "fast" and still.attempts == 2 and still.result is None
    assert await store.complete(claim_of(second), "winner") is JobState.DONE
    done = await store.get(first.id)
    assert done is not None and done.result == "winner"


async def test_stale_token_after_release_changes_nothing(store: JobStore) -> None:
    await store.enqueue(JobSpec("t.job"))
    first = await claim_one(store)
    assert await store.release([claim_of(first)]) == 1
    second = await claim_one(store)
    await assert_stale(store, claim_of(first))
    assert await store.complete(claim_of(second)) is JobState.DONE
    # finished: its token holds the job no longer (a repeated report only hears the outcome again)
    assert await store.complete(claim_of(second)) is JobState.DONE
    assert await store.extend([claim_of(second)], 30) == [claim_of(second)]
    assert await store.release([claim_of(second)]) == 0
    assert await state_of(store, second.id) is JobState.DONE


async def test_a_reused_job_id_gets_fresh_tokens(store: JobStore) -> None:
    """Tokens are unique per claim, not per job hash: a purged id that comes back is fenced too."""
    await store.enqueue(JobSpec("t.job", id="reused"))
    first = await claim_one(store)
    await store.complete(claim_of(first))
    await asyncio.sleep(0.1)
    assert await store.purge(older_than=0.05) == 1
    again = await store.enqueue(JobSpec("t.job", id="reused"))
    assert again.state is JobState.ENQUEUED and again.attempts == 0
    second = await claim_one(store)
    assert second.id == "reused" and second.token != first.token
    await assert_stale(store, claim_of(first))
    assert await state_of(store, "reused") is JobState.RUNNING


async def test_expired_leases_count_attempts_then_fail(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", max_attempts=2, backoff=NO_WAIT))
    first = await confirmed(store, await claim_one(store, lease=0.2, worker="dead-1"), 0.2)
    await asyncio.sleep(0.5)
    assert await store.recover() == 1
    waiting = await store.get(job.id)
    assert waiting is not None and waiting.state is JobState.RETRY_SCHEDULED
    assert waiting.attempts == 1 and waiting.token is None
    assert waiting.last_error is not None and waiting.last_error.type == "LeaseExpired"
    assert "dead-1" in waiting.last_error.message
    second = await confirmed(store, await claim_soon(store, lease=0.2, worker="dead-2"), 0.2)
    assert second.attempts == 2 and second.token != first.token
    await asyncio.sleep(0.5)
    assert await store.recover(["default"]) == 1
    failed = await store.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.attempts == 2 and failed.finished_at is not None
    assert await store.recover() == 0
    metrics = (await store.metrics()).queues["default"]
    assert metrics.runs == {("t.job", "expired"): 2}
    assert metrics.retries == {"t.job": 1}
    assert sum(metrics.duration_buckets.get("t.job", [])) == 0, "an expired lease observes no duration"


async def test_expired_lease_is_recovered_by_claim(store: JobStore) -> None:
    await store.enqueue(JobSpec("t.job", max_attempts=3, backoff=Backoff(base=0.1, jitter=0)))
    first = await confirmed(store, await claim_one(store, lease=0.2), 0.2)
    await asyncio.sleep(0.5)
    again = await claim_soon(store)
    assert again.id == first.id and again.attempts == 2


async def test_extend_keeps_the_lease_alive(store: JobStore) -> None:
    await store.enqueue(JobSpec("t.job"))
    running = await claim_one(store, lease=0.6)
    assert await store.extend([claim_of(running)], 30) == []
    await asyncio.sleep(0.9)
    assert await store.recover() == 0
    job = await store.get(running.id)
    assert job is not None and job.state is JobState.RUNNING and job.attempts == 1
    assert job.lease_until is not None and job.lease_until > time.time() + 20


async def test_stale_is_decided_per_claim_token_not_per_job(store: JobStore) -> None:
    """One heartbeat may hold an old, unreported claim of a job and the current claim of the same
    job (the worker released it and claimed it again): only the old claim is stale, and a cancel
    request reaches only the current one."""
    await store.enqueue(JobSpec("t.job"))
    first = await claim_one(store)
    assert await store.release([claim_of(first)]) == 1
    second = await claim_one(store)
    assert second.id == first.id and second.token != first.token
    old, current = claim_of(first), claim_of(second)
    assert await store.extend([old, current], 30) == [old]
    assert await store.extend([current, old], 30) == [old]
    await store.cancel(second.id)  # running: only a request
    reply = await store.heartbeat(WorkerInfo(id="w1"), [old, current], 30)
    assert reply.stale == [old] and reply.cancel == [current]


async def test_release_keeps_attempt_count_and_place(store: JobStore) -> None:
    first = await store.enqueue(JobSpec("t.job", max_attempts=3, args=["a"]))
    await store.enqueue(JobSpec("t.job", args=["b"]))
    running = await claim_one(store)
    assert running.id == first.id
    await store.fail(claim_of(running), BOOM, retry_delay=0)
    await asyncio.sleep(0.01)
    running = await claim_one(store)  # promoted to the back, so "b" comes first
    assert running.args == ["b"]
    await store.release([claim_of(running)])
    again = await claim_one(store)
    assert again.args == ["b"], "a released job keeps its original place"
    second = await claim_one(store)
    assert second.id == first.id and second.attempts == 2
    assert await store.release([claim_of(second), claim_of(again)]) == 2
    released = await store.get(first.id)
    assert released is not None and released.state is JobState.ENQUEUED
    assert released.attempts == 1, "the released attempt is not counted, the failed one is"
    assert released.token is None and released.worker is None and released.lease_until is None
    metrics = (await store.metrics()).queues["default"]
    assert metrics.runs == {("t.job", "retry"): 1}


# -- scheduling and order ------------------------------------------------------------


async def test_scheduled_job_becomes_claimable_when_due(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", delay=0.5))
    assert await store.claim("w", ["default"], 1, 30) == []
    wakeup = await store.next_wakeup(["default"])
    assert wakeup is not None and 0 <= wakeup <= 0.5 + EPS
    await asyncio.sleep(0.9)
    running = await claim_one(store)
    assert running.id == job.id and running.attempts == 1


async def test_promote_moves_due_jobs(store: JobStore) -> None:
    due = await store.enqueue(JobSpec("t.job", delay=0.5))
    later = await store.enqueue(JobSpec("t.job", delay=3600))
    assert await store.promote() == 0
    await asyncio.sleep(0.8)
    assert await store.promote(["default"]) == 1
    assert await state_of(store, due.id) is JobState.ENQUEUED
    assert await state_of(store, later.id) is JobState.SCHEDULED


async def test_next_wakeup(store: JobStore) -> None:
    assert await store.next_wakeup(["default"]) is None
    await store.enqueue(JobSpec("t.job", delay=100))
    wakeup = await store.next_wakeup(["default"])
    assert wakeup is not None and 100 - 5 <= wakeup <= 100 + EPS
    await store.enqueue(JobSpec("t.job"))
    await claim_one(store, lease=20)
    wakeup = await store.next_wakeup(["default", "elsewhere"])
    assert wakeup is not None and 20 - 5 <= wakeup <= 20 + EPS
    assert await store.next_wakeup(["elsewhere"]) is None


async def test_priority_then_fifo(store: JobStore) -> None:
    for label, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 0)]:
        await store.enqueue(JobSpec("t.job", args=[label], priority=priority))
    first = await store.claim("w", ["default"], 2, 30)
    rest = [await claim_one(store) for _ in range(4)]
    assert [job.args[0] for job in first + rest] == ["b", "d", "a", "c", "f", "e"]


async def test_promoted_and_retried_jobs_go_to_the_back(store: JobStore) -> None:
    failed = await job_in(store, JobState.FAILED, args=["failed"])
    await store.enqueue(JobSpec("t.job", args=["late"], delay=0.2))
    await store.enqueue(JobSpec("t.job", args=["first"]))
    await store.enqueue(JobSpec("t.job", args=["second"]))
    await asyncio.sleep(0.5)
    await store.promote()
    await store.retry(failed.id)
    order = [(await claim_one(store)).args[0] for _ in range(4)]
    assert order == ["first", "second", "late", "failed"]


# -- operators --------------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.ENQUEUED, JobState.SCHEDULED, JobState.RETRY_SCHEDULED])
async def test_cancel_from_waiting_states(store: JobStore, state: JobState) -> None:
    job = await job_in(store, state)
    cancelled = await store.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at is not None
    assert await state_of(store, job.id) is JobState.CANCELLED
    await asyncio.sleep(0.01)
    assert await store.claim("w", ["default"], 5, 30) == []


@pytest.mark.parametrize("state", [JobState.DONE, JobState.FAILED, JobState.CANCELLED])
async def test_cancel_is_illegal_elsewhere(store: JobStore, state: JobState) -> None:
    job = await cancelled_job(store) if state is JobState.CANCELLED else await job_in(store, state)
    with pytest.raises(IllegalTransitionError) as raised:
        await store.cancel(job.id)
    assert raised.value.state == state.value and raised.value.job_id == job.id
    assert await state_of(store, job.id) is state


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED])
async def test_retry_from_failed_or_cancelled(store: JobStore, state: JobState) -> None:
    job = await cancelled_job(store) if state is JobState.CANCELLED else await job_in(store, state)
    retried = await store.retry(job.id)
    assert retried.state is JobState.ENQUEUED and retried.attempts == 0 and retried.finished_at is None
    if state is JobState.FAILED:
        assert retried.last_error == BOOM
    running = await claim_one(store)
    assert running.id == job.id and running.attempts == 1


@pytest.mark.parametrize(
    "state",
    [JobState.ENQUEUED, JobState.SCHEDULED, JobState.RUNNING, JobState.RETRY_SCHEDULED, JobState.DONE],
)
async def test_retry_is_illegal_elsewhere(store: JobStore, state: JobState) -> None:
    job = await job_in(store, state)
    with pytest.raises(IllegalTransitionError):
        await store.retry(job.id)
    assert await state_of(store, job.id) is state


async def test_unknown_ids_raise_not_found(store: JobStore) -> None:
    await store.enqueue(JobSpec("t.job"))
    for action in (store.cancel, store.retry):
        with pytest.raises(JobNotFoundError):
            await action("no-such-job")
        with pytest.raises(JobNotFoundError):
            await action("no-such-job", "default")


# -- reading --------------------------------------------------------------------------


async def collect_pages(store: JobStore, limit: int, **filters: object) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = await store.list_jobs(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append([job.id for job in page.jobs])
        cursor = page.cursor
        if cursor is None:
            return pages
        assert len(pages) < 50, "cursor never ended"


async def listed(store: JobStore, limit: int, **filters: object) -> list[str]:
    return [job_id for page in await collect_pages(store, limit, **filters) for job_id in page]


async def test_list_jobs_paging_and_filters(store: JobStore) -> None:
    created: list[Job] = []
    for i in range(7):
        queue, name = ("q1" if i < 5 else "q2"), ("t.even" if i % 2 == 0 else "t.odd")
        created.append(await store.enqueue(JobSpec(name, queue=queue, id=f"job{i}")))
        await asyncio.sleep(0.005)  # distinct creation times on a millisecond clock
    newest_first = [job.id for job in reversed(created)]
    assert await collect_pages(store, 3) == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    assert await listed(store, 100) == newest_first
    assert await listed(store, 2, queue="q2") == ["job6", "job5"]
    assert await listed(store, 2, name="t.even") == ["job6", "job4", "job2", "job0"]
    assert await listed(store, 1, queue="q1", name="t.odd") == ["job3", "job1"]
    # with a state: newest by the time the job entered it
    for job_id in ("job0", "job3", "job1"):
        await store.cancel(job_id)
        await asyncio.sleep(0.005)
    assert await listed(store, 2, state=JobState.CANCELLED) == ["job1", "job3", "job0"]
    assert await listed(store, 5, state=JobState.ENQUEUED, queue="q1") == ["job4", "job2"]
    assert (await store.list_jobs(queue="nowhere")).jobs == []
    with pytest.raises(ValueError):
        await store.list_jobs(cursor="not a cursor")
    assert (await store.list_jobs(state=JobState.DONE)).cursor is None


async def test_counts_per_queue_with_zeros(store: JobStore) -> None:
    assert await store.counts() == {}
    await store.enqueue(JobSpec("t.job", queue="a"))
    await store.enqueue(JobSpec("t.job", queue="a", delay=3600))
    await job_in(store, JobState.DONE, queue="b")
    await job_in(store, JobState.RUNNING, queue="b")
    zeros = {state.value: 0 for state in ALL_STATES}
    assert await store.counts() == {
        "a": zeros | {"enqueued": 1, "scheduled": 1},
        "b": zeros | {"done": 1, "running": 1},
    }
    assert await store.queues() == ["a", "b"]


async def test_purge_deletes_old_terminal_jobs_only(store: JobStore) -> None:
    done = await job_in(store, JobState.DONE)
    failed = await job_in(store, JobState.FAILED)
    live = await store.enqueue(JobSpec("t.job"))
    assert await store.purge(older_than=3600) == 0
    await asyncio.sleep(0.1)
    assert await store.purge(older_than=0.05, queues=["other"]) == 0
    assert await store.purge(older_than=0.05) == 2
    assert await store.get(done.id) is None and await store.get(failed.id) is None
    assert await state_of(store, live.id) is JobState.ENQUEUED
    counts = (await store.counts())["default"]
    assert (counts["done"], counts["failed"], counts["enqueued"]) == (0, 0, 1)


async def test_memory_store_forgets_terminal_jobs_after_retention() -> None:
    from backend.workers.memory_job_store import MemoryJobStore

    store = MemoryJobStore(retention_seconds=0.2)
    done = await job_in(store, JobState.DONE)
    live = await store.enqueue(JobSpec("t.job", delay=3600))
    await asyncio.sleep(0.4)
    assert await store.get(done.id) is None
    assert await state_of(store, live.id) is JobState.SCHEDULED
    assert (await store.counts())["default"]["done"] == 0


async def test_health(store: JobStore) -> None:
    health = await store.health()
    assert health.ok and health.backend == store.backend


# -- workers -----------------------------------------------------------------------------


async def test_worker_registry_and_heartbeats(store: JobStore) -> None:
    info = WorkerInfo(id="w-1", host="h", pid=123, queues=["default"], concurrency=4, version="1")
    await store.register_worker(info)
    (listed,) = await store.list_workers()
    assert (listed.id, listed.host, listed.pid, listed.queues, listed.concurrency) == ("w-1", "h", 123,
                                                                                       ["default"], 4)
    assert listed.started_at > 0 and 0 <= listed.heartbeat_age < 5
    started = listed.started_at
    await store.enqueue(JobSpec("t.job"))
    running = await claim_one(store, lease=0.8, worker="w-1")
    await asyncio.sleep(0.2)
    reply = await store.heartbeat(info, [claim_of(running)], 30)
    stale, vanished = reply.stale, reply.vanished
    assert (stale, vanished) == ([], False)
    (listed,) = await store.list_workers()
    assert listed.running == 1 and listed.started_at == pytest.approx(started)
    assert listed.last_heartbeat > started + 0.1, "the heartbeat was recorded"
    await asyncio.sleep(0.8)  # past the claim's own lease
    assert await store.recover() == 0, "the heartbeat extended the lease"
    # an entry that was never registered (or was reaped) comes back on its next heartbeat
    reply = await store.heartbeat(WorkerInfo(id="w-2"), [], 30)
    stale, vanished = reply.stale, reply.vanished
    assert (stale, vanished) == ([], True)
    assert [w.id for w in await store.list_workers()] == ["w-1", "w-2"]
    await store.deregister_worker("w-2")
    await store.deregister_worker("never-there")
    assert [w.id for w in await store.list_workers()] == ["w-1"]


async def test_stale_workers_are_reaped(store: JobStore) -> None:
    await store.register_worker(WorkerInfo(id="old"))
    await store.register_worker(WorkerInfo(id="young"))
    await asyncio.sleep(0.4)
    await store.heartbeat(WorkerInfo(id="young"), [], 30)
    ages = (await store.metrics()).heartbeat_ages
    assert ages["old"] >= 0.3 and ages["young"] < ages["old"]
    assert [w.id for w in await store.list_workers(stale_after=0.3)] == ["young"]
    assert [w.id for w in await store.list_workers()] == ["young"]
    vanished = (await store.heartbeat(WorkerInfo(id="old"), [], 30)).vanished
    assert vanished


# -- metrics and wake-ups ------------------------------------------------------------------


def bucket_of(duration: float) -> int:
    return next((i for i, bound in enumerate(DURATION_BUCKETS) if duration <= bound), len(DURATION_BUCKETS))


async def test_metrics_count_the_transitions(store: JobStore) -> None:
    for i in range(3):
        await store.enqueue(JobSpec("t.a", id=f"a{i}", max_attempts=2, backoff=NO_WAIT))
    await store.enqueue(JobSpec("t.a", id="a0"))  # a duplicate is not counted
    await store.enqueue(JobSpec("t.b", id="b0", max_attempts=1))
    await store.enqueue(JobSpec("t.b", id="b1", queue="q2"))
    a0, a1, a2, b0 = await store.claim("w", ["default"], 4, 30)
    durations: dict[str, list[float]] = {"t.a": [0.003, 0.07, 0.25, 0.5], "t.b": [1000.0]}
    await store.finish([
        Completion(claim_of(a0), durations["t.a"][0], result="ok"),
        Completion(claim_of(a1), durations["t.a"][1], error=BOOM),  # retried
        Completion(claim_of(b0), durations["t.b"][0], error=BOOM),  # out of attempts
    ])
    await store.release([claim_of(a2)])  # not counted anywhere
    again = await claim_soon(store)
    assert again.id == "a2"
    await store.complete(claim_of(again), duration=durations["t.a"][2])
    last = await claim_soon(store)
    assert last.id == "a1" and last.attempts == 2
    await store.fail(claim_of(last), BOOM, duration=durations["t.a"][3])  # out of attempts
    metrics = await store.metrics()
    default = metrics.queues["default"]
    assert default.enqueued == {"t.a": 3, "t.b": 1}
    assert metrics.queues["q2"].enqueued == {"t.b": 1}
    assert default.runs == {
        ("t.a", "done"): 2, ("t.a", "retry"): 1, ("t.a", "failed"): 1, ("t.b", "failed"): 1,
    }
    assert default.retries == {"t.a": 1}
    for name, values in durations.items():
        expected = [0] * (len(DURATION_BUCKETS) + 1)
        for value in values:
            expected[bucket_of(value)] += 1
        assert default.duration_buckets[name] == expected
        assert default.duration_sum[name] == pytest.approx(sum(values), abs=1e-3)
    assert metrics.counts == await store.counts()
    assert (metrics.counts["default"]["done"], metrics.counts["default"]["failed"]) == (2, 2)


async def test_wait_for_jobs_wakes_at_once_on_enqueue(store: JobStore) -> None:
    await store.wait_for_jobs(["q-wait"], 0.05)  # times out quietly
    waiter = asyncio.create_task(store.wait_for_jobs(["other", "q-wait"], 60))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await store.enqueue(JobSpec("t.job", queue="q-wait"))
    await asyncio.wait_for(waiter, 10)  # far less than its 60 s timeout


async def test_a_wake_up_waits_for_its_taker(store: JobStore) -> None:
    """A job enqueued while no worker waits (one between its claim and its wait) is not missed."""
    await store.enqueue(JobSpec("t.job", queue="q-keep"))
    await asyncio.wait_for(store.wait_for_jobs(["q-keep"], 60), 4)


async def test_wait_for_jobs_wakes_on_release(store: JobStore) -> None:
    await store.enqueue(JobSpec("t.job"))
    running = await claim_one(store)
    await store.wait_for_jobs(["default"], 0.05)  # take any wake-up the enqueue left
    waiter = asyncio.create_task(store.wait_for_jobs(["default"], 60))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await store.release([claim_of(running)])
    await asyncio.wait_for(waiter, 10)


# -- cancel of a running job, progress, concurrency limits, schedules, events (docs/features.md) --


async def test_cancel_running_is_a_request_then_a_fenced_transition(store: JobStore) -> None:
    running = await job_in(store, JobState.RUNNING)
    asked = await store.cancel(running.id)
    assert asked.state is JobState.RUNNING and asked.cancel_requested
    assert (await store.cancel(running.id)).cancel_requested  # asking twice is harmless
    reply = await store.heartbeat(WorkerInfo(id="w1"), [claim_of(running)], 30)
    assert reply.stale == [] and reply.cancel == [claim_of(running)]
    assert await store.extend([claim_of(running)], 30) == []  # still a current claim
    wrong = Claim(running.queue, running.id, "not-the-token")
    assert await store.finish([Completion(wrong, 0.1, cancelled=True)]) == [None]
    assert await store.finish([Completion(claim_of(running), 0.1, cancelled=True)]) == [JobState.CANCELLED]
    job = await store.get(running.id)
    assert job is not None and job.state is JobState.CANCELLED and job.finished_at is not None
    # fenced from now on: a repeat with that claim only hears the outcome again, nothing changes
    assert await store.finish([Completion(claim_of(running), 0.1)]) == [JobState.CANCELLED]
    assert await state_of(store, running.id) is JobState.CANCELLED
    await asyncio.sleep(0.01)
    assert await store.claim("w", ["default"], 5, 30) == []  # not retried
    assert (await store.metrics()).queues["default"].runs.get(("t.job", "done"), 0) == 0
    retried = await store.retry(running.id)  # a cancelled job can be retried as before
    assert retried.state is JobState.ENQUEUED and not retried.cancel_requested


async def test_release_of_a_job_asked_to_cancel_cancels_it(store: JobStore) -> None:
    running = await job_in(store, JobState.RUNNING)
    await store.cancel(running.id)
    assert await store.release([claim_of(running)]) == 1
    assert await state_of(store, running.id) is JobState.CANCELLED


async def test_a_failed_run_with_a_cancel_request_drops_the_request_on_retry(store: JobStore) -> None:
    running = await job_in(store, JobState.RUNNING)
    await store.cancel(running.id)
    assert await store.fail(claim_of(running), BOOM, retry_delay=3600) is JobState.RETRY_SCHEDULED
    job = await store.get(running.id)
    assert job is not None and not job.cancel_requested


async def test_progress_is_stored_and_fenced(store: JobStore) -> None:
    running = await job_in(store, JobState.RUNNING)
    assert await store.progress(claim_of(running), 0.25, "a quarter")
    assert await store.progress(claim_of(running), 0.5, "half")
    job = await store.get(running.id)
    assert job is not None and (job.progress, job.progress_message) == (0.5, "half")
    assert job.to_json()["progress"] == 0.5
    assert not await store.progress(Claim(running.queue, running.id, "stale"), 0.9)
    await store.complete(claim_of(running))
    assert not await store.progress(claim_of(running), 1.0)
    done = await store.get(running.id)
    assert done is not None and done.progress == 0.5


async def test_limit_key_parks_jobs_over_the_limit_and_frees_slots(store: JobStore) -> None:
    a1 = await store.enqueue(JobSpec("t.job", id="a1", limit_key="cust-a", limit=1))
    a2 = await store.enqueue(JobSpec("t.job", id="a2", limit_key="cust-a", limit=1))
    a3 = await store.enqueue(JobSpec("t.job", id="a3", limit_key="cust-a", limit=1))
    free = await store.enqueue(JobSpec("t.job", id="free"))
    assert a1.limit_key == "cust-a" and a1.limit == 1
    claimed = await store.claim("w", ["default"], 10, 30)
    assert sorted(job.id for job in claimed) == ["a1", "free"]
    assert (await store.counts())["default"]["enqueued"] == 2  # parked jobs are still enqueued
    listed = await store.list_jobs(state=JobState.ENQUEUED)
    assert {job.id for job in listed.jobs} == {"a2", "a3"}
    assert await store.claim("w", ["default"], 10, 30) == []  # no busy claim of parked jobs
    first = next(job for job in claimed if job.id == "a1")
    await store.complete(claim_of(first))  # frees the slot: a2 (the oldest) is claimable
    (second,) = await store.claim("w", ["default"], 10, 30)
    assert second.id == a2.id
    await store.fail(claim_of(second), BOOM, retryable=False)  # a failure frees it too
    (third,) = await store.claim("w", ["default"], 10, 30)
    assert third.id == a3.id
    assert free.state is JobState.ENQUEUED


async def test_limit_slot_is_freed_by_release_expiry_and_cancel(store: JobStore) -> None:
    for n in range(4):
        await store.enqueue(JobSpec("t.job", id=f"k{n}", limit_key="k", limit=1, backoff=NO_WAIT))
    (first,) = await store.claim("w", ["default"], 10, 30)
    assert first.id == "k0"
    await store.release([claim_of(first)])  # released: back at its place, slot free
    (again,) = await store.claim("w", ["default"], 10, 0.2)
    assert again.id == "k0"
    await asyncio.sleep(0.3)  # lease expires: recovery (inside claim) frees the slot
    (after,) = await store.claim("w", ["default"], 10, 30)
    assert after.id in {"k0", "k1"}
    await store.cancel("k2")  # cancelling a parked job removes it from the waiting list
    await store.cancel(after.id)
    await store.finish([Completion(claim_of(after), 0.0, cancelled=True)])
    (last,) = await store.claim("w", ["default"], 10, 30)
    assert last.id in {"k0", "k1", "k3"} and last.id != after.id


async def test_handler_limits_apply_to_every_job_of_the_handler(store: JobStore) -> None:
    await store.set_handler_limits("default", {"t.limited": 2})
    for n in range(5):
        await store.enqueue(JobSpec("t.limited", id=f"h{n}"))
    claimed = await store.claim("w", ["default"], 10, 30)
    assert [job.id for job in claimed] == ["h0", "h1"]
    await store.complete(claim_of(claimed[0]))
    assert [job.id for job in await store.claim("w", ["default"], 10, 30)] == ["h2"]
    await store.set_handler_limits("default", {"t.limited": 10})  # raised: housekeeping unparks
    await store.recover(["default"])
    assert sorted(job.id for job in await store.claim("w", ["default"], 10, 30)) == ["h3", "h4"]


async def test_limit_spec_validation(store: JobStore) -> None:
    for bad in (JobSpec("t.job", limit_key="k"), JobSpec("t.job", limit=2),
                JobSpec("t.job", limit_key="k", limit=0), JobSpec("t.job", limit_key="", limit=1)):
        with pytest.raises(InvalidJobError):
            await store.enqueue(bad)


async def test_server_time_is_the_stores_clock(store: JobStore) -> None:
    assert abs(await store.server_time() - time.time()) < 5


async def test_schedules_are_published_and_listed(store: JobStore) -> None:
    from backend.workers.models import ScheduleInfo

    daily = ScheduleInfo("reports.daily", "reports.build", "default", "0 6 * * *", "Europe/Berlin",
                         [1], {"a": 2})
    tick = ScheduleInfo("tick", "t.tick", "q2", "every 5s")
    await store.register_schedules([tick, daily])
    await store.register_schedules([daily])  # every worker declares them: idempotent
    assert await store.list_schedules() == [daily, tick]


async def test_job_events_only_for_jobs_that_opt_in(store: JobStore) -> None:
    seen: list[tuple[str, str]] = []

    async def listen() -> None:
        async for event in store.job_events(["default"]):
            seen.append(event)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.3)  # subscribed
    try:
        watched = await store.enqueue(JobSpec("t.job", id="watched", events=True))
        await store.enqueue(JobSpec("t.job", id="quiet"))
        claimed = await store.claim("w", ["default"], 2, 30)
        for job in claimed:
            if job.id == watched.id:
                await store.progress(claim_of(job), 0.5, "half")
            await store.complete(claim_of(job))
        deadline = time.monotonic() + 5
        while ("watched", "done") not in seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    assert {"running", "progress", "done"} <= {what for job_id, what in seen if job_id == "watched"}
    assert all(job_id == "watched" for job_id, _ in seen)


async def test_a_repeated_report_is_applied_once_and_answered_again(store: JobStore) -> None:
    """redis-py re-sends a script after a lost reply: the repeat must neither apply twice nor say stale."""
    done_job = await store.enqueue(JobSpec("t.repeat"))
    failing = await store.enqueue(JobSpec("t.repeat", max_attempts=1))
    claimed = {job.id: job for job in await store.claim("w1", ["default"], 2, 30)}
    ok = Completion(Claim("default", done_job.id, claimed[done_job.id].token or ""), 0.01, result=1)
    bad = Completion(Claim("default", failing.id, claimed[failing.id].token or ""), 0.01,
                     error=JobError("E", "boom"))
    first = await store.finish([ok, bad])
    assert first == [JobState.DONE, JobState.FAILED]
    assert await store.finish([ok, bad]) == first
    runs = (await store.metrics()).queues["default"].runs
    assert runs[("t.repeat", "done")] == 1 and runs[("t.repeat", "failed")] == 1
    stranger = Completion(Claim("default", done_job.id, "not-a-token"), 0.01)
    assert await store.finish([stranger]) == [None]
