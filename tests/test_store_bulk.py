"""Bulk retry/cancel, purge by state, and queue pause/resume: the store contract on every store
(memory, fakeredis, a real Redis, a real Cluster).

Each bulk step must move only the jobs its filter matches, by the very transition of a single
retry/cancel, within its limit, and say truthfully whether more match. A paused queue gives no
job to any claim, while its housekeeping goes on and other queues run.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from backend.workers.bulk import MAX_BULK, BulkFilter
from backend.workers.job_store import JobStore
from backend.workers.models import Claim, JobSpec, JobState
from backend.workers.rules import InvalidJobError
from tests.test_store_contract import BOOM, claim_of, claim_one, job_in, state_of


async def failed(store: JobStore, n: int, queue: str = "default", name: str = "t.job") -> list[str]:
    ids = []
    for _ in range(n):
        job = await store.enqueue(JobSpec(name, queue=queue))
        running = await claim_one(store, queue)
        assert running.id == job.id
        await store.fail(claim_of(running), BOOM, retryable=False)
        ids.append(job.id)
    return ids


async def states(store: JobStore, ids: list[str]) -> list[JobState]:
    return [await state_of(store, job_id) for job_id in ids]


# -- bulk retry ------------------------------------------------------------------------------------


async def test_bulk_retry_moves_only_the_jobs_the_filter_matches(store: JobStore) -> None:
    target = await failed(store, 3, queue="q1", name="t.a")
    other_name = await failed(store, 2, queue="q1", name="t.b")
    other_queue = await failed(store, 2, queue="q2", name="t.a")
    cancelled = await store.cancel((await store.enqueue(JobSpec("t.a", queue="q1"))).id)

    result = await store.retry_many(BulkFilter(state=JobState.FAILED, queue="q1", name="t.a"))

    assert (result.matched, result.moved, result.more) == (3, 3, False)
    assert await states(store, target) == [JobState.ENQUEUED] * 3
    assert await states(store, other_name + other_queue) == [JobState.FAILED] * 4
    assert await state_of(store, cancelled.id) is JobState.CANCELLED
    retried = await store.get(target[0])
    assert retried is not None and retried.attempts == 0  # the single retry's transition: attempts reset
    claimed = await store.claim("w", ["q1"], 10, 30)
    assert {job.id for job in claimed} == set(target)


async def test_bulk_retry_without_state_takes_failed_and_cancelled(store: JobStore) -> None:
    done = await job_in(store, JobState.DONE)
    failed_ids = await failed(store, 2)
    cancelled = await store.cancel((await store.enqueue(JobSpec("t.job", delay=3600))).id)
    live = await store.enqueue(JobSpec("t.job", delay=3600))

    result = await store.retry_many(BulkFilter())

    assert (result.matched, result.moved, result.more) == (3, 3, False)
    assert await states(store, [*failed_ids, cancelled.id]) == [JobState.ENQUEUED] * 3
    assert await state_of(store, done.id) is JobState.DONE
    assert await state_of(store, live.id) is JobState.SCHEDULED


async def test_bulk_retry_respects_its_limit_and_says_when_more_match(store: JobStore) -> None:
    ids = await failed(store, 5)
    seen: list[tuple[int, int, bool]] = []
    for _ in range(4):
        result = await store.retry_many(BulkFilter(state=JobState.FAILED, limit=2))
        seen.append((result.matched, result.moved, result.more))
    assert seen == [(2, 2, True), (2, 2, True), (1, 1, False), (0, 0, False)]
    assert await states(store, ids) == [JobState.ENQUEUED] * 5


async def test_bulk_retry_exactly_at_the_limit_says_no_more(store: JobStore) -> None:
    await failed(store, 3)
    result = await store.retry_many(BulkFilter(state=JobState.FAILED, limit=3))
    assert (result.matched, result.moved, result.more) == (3, 3, False)


async def test_listed_ids_in_a_state_that_does_not_allow_the_move_are_matched_not_moved(
    store: JobStore,
) -> None:
    (fail_id,) = await failed(store, 1)
    done = await job_in(store, JobState.DONE)
    enqueued = await store.enqueue(JobSpec("t.job"))

    result = await store.retry_many(BulkFilter(ids=(fail_id, done.id, enqueued.id, "no-such-job", fail_id)))

    assert (result.matched, result.moved, result.more) == (3, 1, False)  # unknown: not matched; dup: once
    assert await state_of(store, fail_id) is JobState.ENQUEUED
    assert await state_of(store, done.id) is JobState.DONE
    assert await state_of(store, enqueued.id) is JobState.ENQUEUED


async def test_listed_ids_must_also_match_the_other_fields(store: JobStore) -> None:
    a = await failed(store, 1, queue="q1", name="t.a")
    b = await failed(store, 1, queue="q2", name="t.b")
    result = await store.retry_many(BulkFilter(ids=(*a, *b), name="t.b"))
    assert (result.matched, result.moved) == (1, 1)
    result = await store.retry_many(BulkFilter(ids=(*a, *b), queue="q2"))
    assert (result.matched, result.moved) == (1, 0)  # b was just retried: matched (enqueued), not moved
    assert await states(store, [*a, *b]) == [JobState.FAILED, JobState.ENQUEUED]
    result = await store.retry_many(BulkFilter(ids=(*a, *b), state=JobState.CANCELLED))
    assert (result.matched, result.moved) == (0, 0)
    assert (await store.retry_many(BulkFilter(ids=()))).matched == 0  # no ids: nothing, never "all"


async def test_bulk_retry_leaves_a_job_whose_unique_key_is_held(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.job", unique_key="k"))
    await store.cancel(job.id)
    holder = await store.enqueue(JobSpec("t.job", unique_key="k"))  # the key is free again: a new job
    (other,) = await failed(store, 1, queue="q2")

    result = await store.retry_many(BulkFilter())

    assert (result.matched, result.moved) == (2, 1)
    assert await state_of(store, job.id) is JobState.CANCELLED
    assert await state_of(store, holder.id) is JobState.ENQUEUED
    assert await state_of(store, other) is JobState.ENQUEUED


# -- bulk cancel ------------------------------------------------------------------------------------


async def test_bulk_cancel_takes_jobs_not_started_and_leaves_running_ones(store: JobStore) -> None:
    running = await job_in(store, JobState.RUNNING)
    retrying = await job_in(store, JobState.RETRY_SCHEDULED)
    scheduled = await store.enqueue(JobSpec("t.job", delay=3600))
    enqueued = await store.enqueue(JobSpec("t.job"))
    done = await job_in(store, JobState.DONE, queue="q2")
    elsewhere = await store.enqueue(JobSpec("t.job", queue="q2"))

    result = await store.cancel_many(BulkFilter(queue="default"))

    assert (result.matched, result.moved, result.more) == (3, 3, False)
    assert await states(store, [retrying.id, scheduled.id, enqueued.id]) == [JobState.CANCELLED] * 3
    assert await states(store, [running.id, done.id, elsewhere.id]) == [
        JobState.RUNNING, JobState.DONE, JobState.ENQUEUED]
    current = await store.get(running.id)
    assert current is not None and not current.cancel_requested


async def test_bulk_cancel_of_running_jobs_requests_it_once(store: JobStore) -> None:
    first = await job_in(store, JobState.RUNNING)
    second = await job_in(store, JobState.RUNNING)

    result = await store.cancel_many(BulkFilter(state=JobState.RUNNING))
    assert (result.matched, result.moved, result.more) == (2, 2, False)
    for job_id in (first.id, second.id):
        job = await store.get(job_id)
        assert job is not None and job.state is JobState.RUNNING and job.cancel_requested

    again = await store.cancel_many(BulkFilter(state=JobState.RUNNING))
    assert (again.matched, again.moved, again.more) == (0, 0, False)  # already asked: drains
    by_id = await store.cancel_many(BulkFilter(ids=(first.id,)))
    assert (by_id.matched, by_id.moved) == (1, 0)


async def test_bulk_cancel_frees_unique_keys_and_concurrency_slots_like_a_single_cancel(
    store: JobStore,
) -> None:
    holder = await job_in(store, JobState.RUNNING, limit_key="lk", limit=1)
    parked = await store.enqueue(JobSpec("t.job", unique_key="u", limit_key="lk", limit=1))
    assert await store.claim("w", ["default"], 5, 30) == []  # over its limit: parked
    result = await store.cancel_many(BulkFilter(state=JobState.ENQUEUED))
    assert (result.matched, result.moved) == (1, 1)
    assert await state_of(store, parked.id) is JobState.CANCELLED
    again = await store.enqueue(JobSpec("t.job", unique_key="u"))
    assert again.id != parked.id  # the key was released
    await store.complete(claim_of(holder))
    assert [job.id for job in await store.claim("w", ["default"], 5, 30)] == [again.id]


async def test_bulk_moves_more_jobs_than_one_script_batch(store: JobStore) -> None:
    specs = [JobSpec("t.job", queue="big", delay=3600) for _ in range(450)]
    jobs = await store.enqueue_many(specs)
    result = await store.cancel_many(BulkFilter(queue="big", limit=MAX_BULK))
    assert (result.matched, result.moved, result.more) == (450, 450, False)
    assert (await store.counts())["big"]["cancelled"] == 450
    result = await store.retry_many(BulkFilter(ids=tuple(job.id for job in jobs)))
    assert (result.matched, result.moved) == (450, 450)
    assert (await store.counts())["big"]["enqueued"] == 450


async def test_concurrent_bulk_calls_move_each_job_once(store: JobStore) -> None:
    jobs = await store.enqueue_many([JobSpec("t.job", queue="race", delay=3600) for _ in range(300)])
    assert (await store.cancel_many(BulkFilter(queue="race"))).moved == 300
    ids = tuple(job.id for job in jobs)
    results = await asyncio.gather(
        store.retry_many(BulkFilter(queue="race")),
        store.retry_many(BulkFilter(ids=ids)),
        store.retry_many(BulkFilter(state=JobState.CANCELLED, limit=150)),
        *(store.retry(job_id) for job_id in ids[:20]),
        return_exceptions=True,
    )
    bulk_moved = sum(result.moved for result in results[:3] if not isinstance(result, BaseException))
    single_moved = sum(1 for result in results[3:] if not isinstance(result, BaseException))
    assert not any(isinstance(result, BaseException) for result in results[:3])
    assert bulk_moved + single_moved == 300  # each job retried exactly once, by one of the callers
    counts = (await store.counts())["race"]
    assert counts["enqueued"] == 300 and counts["cancelled"] == 0
    assert len(await store.claim("w", ["race"], 400, 30)) == 300


async def test_bulk_takes_the_newest_first_and_finds_a_rare_name_past_the_first_page(store: JobStore) -> None:
    rare = await store.enqueue_many([JobSpec("t.rare", delay=3600) for _ in range(5)])
    await store.enqueue_many([JobSpec("t.common", delay=3600) for _ in range(1200)])  # newer: read first
    assert (await store.cancel_many(BulkFilter(limit=MAX_BULK))).moved == MAX_BULK
    assert (await store.cancel_many(BulkFilter())).moved == 205
    result = await store.retry_many(BulkFilter(name="t.rare"))
    assert (result.matched, result.moved, result.more) == (5, 5, False)
    assert await states(store, [job.id for job in rare]) == [JobState.ENQUEUED] * 5

    (older,) = await failed(store, 1, queue="order")
    (newer,) = await failed(store, 1, queue="order")
    result = await store.retry_many(BulkFilter(state=JobState.FAILED, limit=1))
    assert (result.matched, result.more) == (1, True)
    assert await states(store, [older, newer]) == [JobState.FAILED, JobState.ENQUEUED]


async def test_a_scan_that_reaches_its_bound_says_more(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.workers.redis import operations

    monkeypatch.setattr(operations, "PAGE", 3)  # the bound (MAX_PAGES pages of PAGE ids), made small
    monkeypatch.setattr(operations, "MAX_PAGES", 2)
    await store.enqueue_many([JobSpec("t.rare", delay=3600)])
    await store.enqueue_many([JobSpec("t.common", delay=3600) for _ in range(8)])
    assert (await store.cancel_many(BulkFilter())).more is True  # 6 of 9 read: may be more
    result = await store.retry_many(BulkFilter(name="t.rare"))
    assert (result.matched, result.moved, result.more) == (0, 0, True)


@pytest.mark.parametrize("selection", [
    BulkFilter(state=JobState.RUNNING),
    BulkFilter(state=JobState.ENQUEUED),
    BulkFilter(state=JobState.DONE),
    BulkFilter(queue="bad queue"),
    BulkFilter(queue="{tag}"),
    BulkFilter(name="bad name"),
    BulkFilter(ids=("ok", "bad id")),
    BulkFilter(ids=("x\n",)),
    BulkFilter(ids=tuple(f"j{i}" for i in range(MAX_BULK + 1))),
    BulkFilter(limit=0),
    BulkFilter(limit=MAX_BULK + 1),
], ids=lambda f: repr(f)[:60])
async def test_bulk_retry_refuses_filters_that_make_no_sense(store: JobStore, selection: BulkFilter) -> None:
    (job_id,) = await failed(store, 1)
    with pytest.raises(InvalidJobError):
        await store.retry_many(selection)
    assert await state_of(store, job_id) is JobState.FAILED


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED, JobState.DONE])
async def test_bulk_cancel_refuses_finished_states(store: JobStore, state: JobState) -> None:
    with pytest.raises(InvalidJobError, match="cancel"):
        await store.cancel_many(BulkFilter(state=state))


# -- purge --------------------------------------------------------------------------------------------


async def test_purge_by_state_and_queue_and_bounded_in_all(store: JobStore) -> None:
    done = await job_in(store, JobState.DONE)
    failed_ids = await failed(store, 3) + await failed(store, 2, queue="q2")
    live = await store.enqueue(JobSpec("t.job"))
    await asyncio.sleep(0.1)
    assert await store.purge(0.05, state=JobState.FAILED, queues=["q2"]) == 2
    assert await store.purge(0.05, state=JobState.FAILED, limit=2) == 2  # at most 2 in all
    assert await store.purge(0.05, state=JobState.FAILED) == 1
    assert await store.get(done.id) is not None and await state_of(store, live.id) is JobState.ENQUEUED
    assert all([await store.get(job_id) is None for job_id in failed_ids])
    assert await store.purge(0.05) == 1
    assert await store.get(done.id) is None


# -- pause / resume --------------------------------------------------------------------------------


async def test_a_paused_queue_gives_no_job_while_others_run(store: JobStore) -> None:
    await store.pause_queue("slow")
    assert await store.paused_queues() == {"slow"}
    kept = await store.enqueue(JobSpec("t.job", queue="slow"))  # enqueues are accepted
    assert kept.state is JobState.ENQUEUED
    other = await store.enqueue(JobSpec("t.job", queue="fast"))
    claimed = await store.claim("w", ["slow", "fast"], 10, 30)
    assert [job.id for job in claimed] == [other.id]
    assert await store.claim("w", ["slow"], 10, 30) == []
    assert "slow" in await store.queues()

    await store.resume_queue("slow")
    assert await store.paused_queues() == set()
    assert [job.id for job in await store.claim("w", ["slow"], 10, 30)] == [kept.id]


async def test_pausing_an_unknown_queue_lists_it_and_pausing_twice_is_harmless(store: JobStore) -> None:
    await store.pause_queue("later")
    await store.pause_queue("later")
    assert "later" in await store.queues()
    assert (await store.counts())["later"]["enqueued"] == 0
    assert (await store.metrics()).paused == {"later"}
    await store.resume_queue("later")
    await store.resume_queue("later")
    assert await store.paused_queues() == set()
    assert (await store.metrics()).paused == set()


async def test_running_jobs_of_a_paused_queue_finish_and_housekeeping_goes_on(store: JobStore) -> None:
    running = await job_in(store, JobState.RUNNING, queue="p")
    expiring = await store.enqueue(JobSpec("t.job", queue="p", max_attempts=1))
    lost = await claim_one(store, "p", lease=0.2)
    assert lost.id == expiring.id
    assert await store.extend([claim_of(lost)], 0.2) == []  # its worker got it (then died): charged
    due = await store.enqueue(JobSpec("t.job", queue="p", delay=0.2))
    await store.pause_queue("p")
    await asyncio.sleep(0.4)

    assert await store.claim("w", ["p"], 10, 30) == []  # promotes and recovers, claims nothing
    assert await state_of(store, due.id) is JobState.ENQUEUED
    assert await state_of(store, lost.id) is JobState.FAILED  # its lease expired: recovered
    assert (await store.metrics()).queues["p"].runs.get(("t.job", "expired")) == 1  # and counted
    assert await store.complete(claim_of(running), "ok") is JobState.DONE
    await store.resume_queue("p")
    assert [job.id for job in await store.claim("w", ["p"], 10, 30)] == [due.id]


async def test_resume_wakes_a_waiting_worker_at_once(store: JobStore) -> None:
    await store.pause_queue("p")
    await store.enqueue(JobSpec("t.job", queue="p"))
    assert await store.claim("w", ["p"], 1, 30) == []  # drops the wake-up tokens: no busy loop

    started = time.monotonic()
    await store.wait_for_jobs(["p"], 1.0)
    assert time.monotonic() - started >= 0.5, "a paused queue with ready jobs woke a waiting worker"

    # A wait returns by itself after at most 5 s (MAX_BLOCK_SECONDS): the resume must end it well before.
    waiting = asyncio.ensure_future(store.wait_for_jobs(["p"], 30.0))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    resumed = time.monotonic()
    await store.resume_queue("p")
    await asyncio.wait_for(waiting, timeout=10.0)
    assert time.monotonic() - resumed < 2.5, "the resume did not wake the waiting worker"
    assert len(await store.claim("w", ["p"], 1, 30)) == 1


async def test_a_paused_queue_can_still_be_bulk_cancelled_and_retried(store: JobStore) -> None:
    await store.pause_queue("p")
    jobs = await store.enqueue_many([JobSpec("t.job", queue="p") for _ in range(3)])
    assert (await store.cancel_many(BulkFilter(queue="p"))).moved == 3
    assert (await store.retry_many(BulkFilter(queue="p"))).moved == 3
    assert await states(store, [job.id for job in jobs]) == [JobState.ENQUEUED] * 3
    assert await store.claim("w", ["p"], 10, 30) == []
    await store.resume_queue("p")
    claimed = await store.claim("w", ["p"], 10, 30)
    assert len(claimed) == 3
    for job in claimed:
        await store.complete(Claim(job.queue, job.id, job.token or ""))
