"""Dependencies (depends_on) against every store: memory, fakeredis, Redis and a cluster.

Each test names one transition that makes a parent terminal, or an enqueue against a parent in
some state, and shows what becomes of the dependant: it runs once every parent is done, in the
same step that finished the last one, and is cancelled (naming the parent) when one failed or was
cancelled, unless it was enqueued with run_on_failure.
"""

from __future__ import annotations

import asyncio

import pytest

from backend.client.workflows import batch_specs
from backend.workers.bulk import BulkFilter
from backend.workers.job_store import JobStore
from backend.workers.models import Completion, Job, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import InvalidJobError
from tests.test_store_contract import BOOM, claim_of, claim_one, claim_soon, confirmed, state_of


async def get(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None
    return job


async def child_of(store: JobStore, *parents: str, **spec: object) -> Job:
    return await store.enqueue(JobSpec("t.child", depends_on=list(parents), **spec))  # type: ignore[arg-type]


async def run_to(store: JobStore, job_id: str, outcome: str, result: object = None) -> None:
    """Claim `job_id` (the only ready job) and end its run: done, failed, or cancelled."""
    running = await claim_one(store)
    assert running.id == job_id
    if outcome == "done":
        await store.complete(claim_of(running), result)
    elif outcome == "failed":
        await store.fail(claim_of(running), BOOM, retryable=False)
    else:
        await store.finish([Completion(claim_of(running), 0.0, cancelled=True)])


async def test_a_dependant_waits_deferred_and_is_enqueued_by_its_parents_finish(store: JobStore) -> None:
    parent = await store.enqueue(JobSpec("t.parent"))
    child = await child_of(store, parent.id)
    assert child.state is JobState.DEFERRED and child.depends_on == [parent.id]
    assert (await store.counts())["default"]["deferred"] == 1
    listed = await store.list_jobs(state=JobState.DEFERRED)
    assert [job.id for job in listed.jobs] == [child.id]
    await run_to(store, parent.id, "done", {"n": 1})
    got = await get(store, child.id)  # enqueued by the parent's finish itself: no other step ran
    assert got.state is JobState.ENQUEUED
    assert got.parent_states == {parent.id: "done"} and got.parent_results == {parent.id: {"n": 1}}
    running = await claim_one(store)
    assert running.id == child.id and running.parent_results == {parent.id: {"n": 1}}
    assert (await store.counts())["default"]["deferred"] == 0


async def test_every_parent_must_be_done(store: JobStore) -> None:
    a, b = await store.enqueue(JobSpec("t.a")), await store.enqueue(JobSpec("t.b"))
    child = await child_of(store, a.id, b.id, a.id)  # a parent named twice counts once
    assert child.depends_on == [a.id, b.id]
    await run_to(store, a.id, "done", 1)
    assert await state_of(store, child.id) is JobState.DEFERRED
    await run_to(store, b.id, "done", 2)
    got = await get(store, child.id)
    assert got.state is JobState.ENQUEUED and got.parent_results == {a.id: 1, b.id: 2}


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
async def test_a_parent_that_does_not_succeed_cancels_its_dependants_and_theirs(
    store: JobStore, outcome: str
) -> None:
    parent = await store.enqueue(JobSpec("t.parent"))
    child = await child_of(store, parent.id, unique_key="once")
    grandchild = await child_of(store, child.id)
    await run_to(store, parent.id, outcome)
    for job_id, named in ((child.id, parent.id), (grandchild.id, child.id)):
        got = await get(store, job_id)
        assert got.state is JobState.CANCELLED and got.last_error is not None
        assert got.last_error.type == "DependencyFailed" and named in got.last_error.message
    # the cancelled dependant released its unique key
    again = await store.enqueue(JobSpec("t.child", unique_key="once"))
    assert again.id != child.id


async def test_run_on_failure_runs_after_a_failed_parent(store: JobStore) -> None:
    a, b = await store.enqueue(JobSpec("t.a")), await store.enqueue(JobSpec("t.b"))
    child = await child_of(store, a.id, b.id, run_on_failure=True)
    await run_to(store, a.id, "failed")
    assert await state_of(store, child.id) is JobState.DEFERRED
    await run_to(store, b.id, "done", "ok")
    got = await get(store, child.id)
    assert got.state is JobState.ENQUEUED and got.run_on_failure
    assert got.parent_states == {a.id: "failed", b.id: "done"} and got.parent_results == {b.id: "ok"}


async def test_a_retried_parent_is_not_finished_until_its_last_attempt(store: JobStore) -> None:
    parent = await store.enqueue(JobSpec("t.parent", max_attempts=2))
    child = await child_of(store, parent.id)
    running = await claim_one(store)
    assert await store.fail(claim_of(running), BOOM, retry_delay=0) is JobState.RETRY_SCHEDULED
    assert await state_of(store, child.id) is JobState.DEFERRED
    running = await claim_soon(store)
    assert running.id == parent.id
    await store.complete(claim_of(running), "second")
    assert await state_of(store, child.id) is JobState.ENQUEUED


async def test_parents_finished_before_the_enqueue_are_accounted_for(store: JobStore) -> None:
    done, failed = await store.enqueue(JobSpec("t.a")), await store.enqueue(JobSpec("t.b"))
    await run_to(store, done.id, "done", [1])
    await run_to(store, failed.id, "failed")
    ready = await child_of(store, done.id)
    assert ready.state is JobState.ENQUEUED and ready.parent_results == {done.id: [1]}
    refused = await child_of(store, done.id, failed.id)
    assert refused.state is JobState.CANCELLED and refused.last_error is not None
    assert failed.id in refused.last_error.message
    anyway = await child_of(store, failed.id, run_on_failure=True)
    assert anyway.state is JobState.ENQUEUED and anyway.parent_states == {failed.id: "failed"}
    later = await child_of(store, done.id, delay=3600)
    assert later.state is JobState.SCHEDULED


async def test_a_dependant_due_later_is_scheduled_when_its_parent_is_done(store: JobStore) -> None:
    parent = await store.enqueue(JobSpec("t.parent"))
    child = await child_of(store, parent.id, delay=3600)
    assert child.state is JobState.DEFERRED
    await run_to(store, parent.id, "done")
    assert await state_of(store, child.id) is JobState.SCHEDULED


async def test_an_unknown_or_other_queue_parent_is_refused_and_nothing_is_written(store: JobStore) -> None:
    other = await store.enqueue(JobSpec("t.other", queue="elsewhere"))
    for parent in ("nosuchjob", other.id):
        with pytest.raises(InvalidJobError, match="depends_on: no job"):
            await store.enqueue(JobSpec("t.child", id="kid1", depends_on=[parent]))
        assert await store.get("kid1") is None
    with pytest.raises(InvalidJobError, match="itself"):
        await store.enqueue(JobSpec("t.child", id="kid1", depends_on=["kid1"]))
    with pytest.raises(InvalidJobError, match="invalid job id"):
        await store.enqueue(JobSpec("t.child", depends_on=["no spaces"]))


async def test_enqueue_again_with_the_same_id_changes_nothing(store: JobStore) -> None:
    parent = await store.enqueue(JobSpec("t.parent"))
    first = await child_of(store, parent.id, id="kid")
    again = await child_of(store, parent.id, id="kid")
    assert again.id == first.id and again.state is JobState.DEFERRED
    await run_to(store, parent.id, "done")
    assert await state_of(store, "kid") is JobState.ENQUEUED
    assert (await store.counts())["default"]["enqueued"] == 1


async def test_cancel_a_deferred_job_and_a_waiting_parent(store: JobStore) -> None:
    parent = await store.enqueue(JobSpec("t.parent"))
    child = await child_of(store, parent.id)
    other = await child_of(store, parent.id)
    assert (await store.cancel(child.id)).state is JobState.CANCELLED
    await store.cancel(parent.id)
    got = await get(store, other.id)
    assert got.state is JobState.CANCELLED and got.last_error is not None
    assert got.parent_states == {parent.id: "cancelled"}
    assert (await get(store, child.id)).last_error is None  # cancelled by hand, not by its parent


async def test_bulk_cancel_resolves_dependants(store: JobStore) -> None:
    parent = await store.enqueue(JobSpec("t.parent"))
    child = await child_of(store, parent.id)
    result = await store.cancel_many(BulkFilter(ids=(parent.id,)))
    assert result.moved == 1
    assert await state_of(store, child.id) is JobState.CANCELLED


async def test_a_lease_that_expires_for_good_cancels_dependants(store: JobStore) -> None:
    parent = await store.enqueue(JobSpec("t.parent", max_attempts=1))
    child = await child_of(store, parent.id)
    await confirmed(store, await claim_one(store, lease=0.05), 0.05)  # its worker got it, then died
    await asyncio.sleep(0.2)
    assert await store.recover() == 1
    assert await state_of(store, parent.id) is JobState.FAILED
    assert await state_of(store, child.id) is JobState.CANCELLED


async def test_a_parent_set_aside_as_corrupt_cancels_dependants(store: JobStore) -> None:
    assert isinstance(store, RedisJobStore)  # the memory store is the Redis store on fakeredis
    parent = await store.enqueue(JobSpec("t.parent"))
    child = await child_of(store, parent.id)
    await store.redis.hset(store.keys.queue("default").job(parent.id), "args", "not json")
    assert await store.claim("w1", ["default"], 1, 30.0) == []  # set aside by the worker's side
    assert await state_of(store, parent.id) is JobState.FAILED
    assert await state_of(store, child.id) is JobState.CANCELLED


async def test_a_parent_with_no_name_set_aside_by_claim_cancels_dependants(store: JobStore) -> None:
    assert isinstance(store, RedisJobStore)
    parent = await store.enqueue(JobSpec("t.parent"))
    child = await child_of(store, parent.id)
    await store.redis.hset(store.keys.queue("default").job(parent.id), "name", "")
    assert await store.claim("w1", ["default"], 1, 30.0) == []  # set aside inside claim.lua
    assert await state_of(store, child.id) is JobState.CANCELLED


async def test_a_deferred_job_is_never_purged_and_leaves_no_key(store: JobStore) -> None:
    parent = await store.enqueue(JobSpec("t.parent"))
    child = await child_of(store, parent.id)
    assert await store.purge(-1.0) == 0
    await run_to(store, parent.id, "done")
    running = await claim_one(store)
    await store.complete(claim_of(running), None)
    assert isinstance(store, RedisJobStore)
    assert await store.redis.exists(store.keys.queue("default").deps_prefix + parent.id) == 0
    assert await state_of(store, child.id) is JobState.DONE


async def test_a_batch_callback_is_released_once_by_concurrent_finishes_and_repeated_reports(
    store: JobStore,
) -> None:
    specs = batch_specs([JobSpec("t.member", max_attempts=2) for _ in range(20)], JobSpec("t.callback"), "b1")
    await store.enqueue_many(specs)
    claimed = await store.claim("w1", ["default"], 20, 30.0)
    assert len(claimed) == 20 and all(job.id.startswith("b1-") for job in claimed)
    first, rest = claimed[0], claimed[1:]
    assert await store.fail(claim_of(first), BOOM, retry_delay=0) is JobState.RETRY_SCHEDULED
    outcomes = [Completion(claim_of(job), 0.0, result=n) if n % 3 else
                Completion(claim_of(job), 0.0, error=BOOM, retryable=False) for n, job in enumerate(rest)]
    await asyncio.gather(*(store.finish([item]) for item in outcomes))  # 19 finishes at once
    await asyncio.gather(*(store.finish([item]) for item in outcomes))  # each report sent again
    assert await state_of(store, "b1") is JobState.DEFERRED  # the retried job has not ended yet
    again = await claim_soon(store)
    assert again.id == first.id
    await store.complete(claim_of(again), "last")
    callback = await get(store, "b1")
    assert callback.state is JobState.ENQUEUED
    counts = {s: list(callback.parent_states.values()).count(s) for s in ("done", "failed")}
    assert counts == {"done": 13, "failed": 7}
    (run,) = await store.claim("w1", ["default"], 5, 30.0)  # the callback, once
    assert run.id == "b1" and run.parent_results[first.id] == "last"
    assert await store.claim("w1", ["default"], 5, 30.0) == []


@pytest.mark.parametrize("value", ["abc", "", "1e999", "-5", "nan", "0"])
async def test_a_corrupt_pending_count_is_counted_again_from_the_parents(store: JobStore, value: str) -> None:
    assert isinstance(store, RedisJobStore)
    a, b = await store.enqueue(JobSpec("t.a")), await store.enqueue(JobSpec("t.b"))
    child = await child_of(store, a.id, b.id)
    await store.redis.hset(store.keys.queue("default").job(child.id), "deps", value)
    await run_to(store, a.id, "done")
    assert await state_of(store, child.id) is JobState.DEFERRED  # b is still live: not released early
    await store.redis.hset(store.keys.queue("default").job(child.id), "deps", value)
    await run_to(store, b.id, "done")
    assert await state_of(store, child.id) is JobState.ENQUEUED  # nor stuck
