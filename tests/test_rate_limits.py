"""Rate limits, held against every store (memory, fakeredis, Redis, cluster).

The transition under test: a claim that finds a job over its rate (its own rate_key, its
handler's, its queue's) does not claim it and charges no attempt: the job goes back to
`scheduled` with run_at = the slot its rates allow, and is claimable exactly then, with its
slot already taken (it is not charged a second time). Starts of one limit are spaced at least
period / N apart on the store's clock, whatever the number of claimers.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import pytest

from backend.workers.job_store import JobStore
from backend.workers.models import Job, JobSpec, JobState
from backend.workers.rates import InvalidRateError, canonical_rate, parse_rate
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import InvalidJobError

EPS = 0.002  # the stores' times are µs; the slots are rounded up to whole µs


async def claim_all(store: JobStore, queue: str, count: int, within: float = 30.0) -> list[Job]:
    """Claim until `count` jobs were claimed, sleeping until the store's next due time between
    tries (as a worker does); fails after `within` seconds."""
    got: list[Job] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        got += await store.claim("w1", [queue], 10, 30)
        if len(got) >= count:
            break
        assert time.monotonic() < deadline, f"only {len(got)} of {count} claimed within {within}s"
        wait = await store.next_wakeup([queue])
        await asyncio.sleep(min(0.5, wait if wait is not None else 0.05))
    return got


def slot(job: Job) -> float:
    """The start slot a claimed job took: its start when claimed at once, else the run_at it was
    scheduled for (it starts then or, when no claimer came at once, a little later)."""
    assert job.started_at is not None and job.run_at is not None
    assert job.started_at >= job.run_at - EPS, "claimed before its slot"
    return job.run_at if job.run_at > job.created_at + EPS else job.started_at


def assert_spaced(jobs: list[Job], interval: float) -> None:
    times = sorted(slot(job) for job in jobs)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= interval - EPS, f"slots closer than {interval}s: {gaps}"


async def test_over_rate_job_is_scheduled_for_its_slot_without_an_attempt(store: JobStore) -> None:
    jobs = await store.enqueue_many([JobSpec("t.rated", rate_key="acct-1", rate="4/s") for _ in range(3)])
    claimed = await store.claim("w1", ["default"], 10, 30)
    assert [j.id for j in claimed] == [jobs[0].id]
    first = claimed[0]
    assert first.attempts == 1
    waiting = [await store.get(j.id) for j in jobs[1:]]
    for n, job in enumerate(waiting, start=1):
        assert job is not None and job.state is JobState.SCHEDULED and job.attempts == 0
        assert job.rate_key == "acct-1" and job.rate == "4/s"
        assert job.run_at is not None and job.started_at is None
        assert job.run_at == pytest.approx((first.started_at or 0) + n * 0.25, abs=EPS)
    # the worker's wait-for-due sees the first slot: no spin, no missed wake-up
    wakeup = await store.next_wakeup(["default"])
    assert wakeup is not None and 0 <= wakeup <= 0.25 + EPS
    rest = await claim_all(store, "default", 2)
    assert sorted(j.id for j in rest) == sorted(j.id for j in jobs[1:])
    assert all(j.attempts == 1 for j in rest)  # the deferral charged nothing
    assert_spaced([first, *rest], 0.25)
    for job in rest:  # claimed at (never before) its reserved slot, which it did not pay twice
        assert job.started_at is not None and job.run_at is not None and job.started_at >= job.run_at - EPS


async def test_jobs_without_a_rate_are_claimed_at_once_beside_rated_ones(store: JobStore) -> None:
    await store.enqueue_many([JobSpec("t.rated", rate_key="k", rate="1/m") for _ in range(3)])
    plain = await store.enqueue_many([JobSpec("t.plain") for _ in range(5)])
    claimed = await store.claim("w1", ["default"], 10, 30)
    assert {j.id for j in plain} <= {j.id for j in claimed}
    assert len(claimed) == 6
    assert (await store.counts())["default"]["scheduled"] == 2


async def test_keys_are_independent(store: JobStore) -> None:
    await store.enqueue_many([JobSpec("t.rated", rate_key=key, rate="1/m") for key in ("a", "b", "a", "b")])
    claimed = await store.claim("w1", ["default"], 10, 30)
    assert sorted(j.rate_key or "" for j in claimed) == ["a", "b"]


async def test_handler_rate(store: JobStore) -> None:
    await store.set_handler_rates("hq", {"t.slow": "5/s"})
    jobs = await store.enqueue_many([JobSpec("t.slow", queue="hq") for _ in range(3)])
    other = await store.enqueue(JobSpec("t.other", queue="hq"))
    claimed = await store.claim("w1", ["hq"], 10, 30)
    assert sorted(j.id for j in claimed) == sorted([jobs[0].id, other.id])
    rest = await claim_all(store, "hq", 2)
    assert_spaced([c for c in claimed if c.name == "t.slow"] + rest, 0.2)
    assert all(j.attempts == 1 for j in rest)


async def test_a_jobs_own_rate_key_takes_precedence_over_its_handlers(store: JobStore) -> None:
    await store.set_handler_rates("default", {"t.h": "1/m"})
    await store.enqueue_many([JobSpec("t.h", rate_key=f"own-{n}", rate="1/m") for n in range(3)])
    assert len(await store.claim("w1", ["default"], 10, 30)) == 3


async def test_queue_rate_set_read_and_cleared(store: JobStore) -> None:
    assert await store.set_queue_rate("qr", " 5/S ") == "5/s"
    assert (await store.queue_rates())["qr"] == "5/s"
    jobs = await store.enqueue_many([JobSpec(f"t.n{n}", queue="qr") for n in range(3)])
    first = await store.claim("w1", ["qr"], 10, 30)
    assert len(first) == 1
    rest = await claim_all(store, "qr", 2)
    assert_spaced(first + rest, 0.2)
    assert sorted(j.id for j in first + rest) == sorted(j.id for j in jobs)
    assert await store.set_queue_rate("qr", None) is None
    assert "qr" not in await store.queue_rates()
    await store.enqueue_many([JobSpec("t.free", queue="qr") for _ in range(4)])
    assert len(await store.claim("w1", ["qr"], 10, 30)) == 4


async def test_queue_rate_and_key_rate_both_hold(store: JobStore) -> None:
    await store.set_queue_rate("both", "10/s")
    specs = [JobSpec("t.b", queue="both", rate_key="k", rate="4/s") for _ in range(3)]
    specs += [JobSpec("t.c", queue="both") for _ in range(3)]
    await store.enqueue_many(specs)
    got = await claim_all(store, "both", 6)
    assert_spaced(got, 0.1)  # the queue's rate spaces every start
    assert_spaced([j for j in got if j.rate_key == "k"], 0.25)  # and the key's its own


async def test_cancel_then_retry_of_a_deferred_job_pays_again(store: JobStore) -> None:
    a, b = await store.enqueue_many([JobSpec("t.r", rate_key="k", rate="1/m") for _ in range(2)])
    assert [j.id for j in await store.claim("w1", ["default"], 10, 30)] == [a.id]
    assert (await store.cancel(b.id)).state is JobState.CANCELLED
    retried = await store.retry(b.id)
    assert retried.state is JobState.ENQUEUED
    # its reserved slot was given up with the cancel: the retry is over the rate again
    assert await store.claim("w1", ["default"], 10, 30) == []
    again = await store.get(b.id)
    assert again is not None and again.state is JobState.SCHEDULED and again.attempts == 0


async def test_an_unreadable_rate_on_a_record_sets_that_job_aside(store: JobStore) -> None:
    assert isinstance(store, RedisJobStore)
    bad, good = await store.enqueue_many([JobSpec("t.x", rate_key="k", rate="1/s"), JobSpec("t.y")])
    await store.redis.hset(store.keys.queue("default").job(bad.id), "rr", "many/s")
    claimed = await store.claim("w1", ["default"], 10, 30)
    assert [j.id for j in claimed] == [good.id]
    failed = await store.get(bad.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.last_error is not None and failed.last_error.type == "CorruptRecord"


async def test_unreadable_declared_rates_are_ignored_not_fatal(store: JobStore) -> None:
    assert isinstance(store, RedisJobStore)
    keys = store.keys.queue("default")
    await store.redis.hset(keys.hrates, "t.z", "NaN")
    await store.redis.set(keys.qrate, "-1/s")
    await store.enqueue_many([JobSpec("t.z") for _ in range(3)])
    assert len(await store.claim("w1", ["default"], 10, 30)) == 3


@pytest.mark.parametrize("bad", ["", "100", "NaN", "nan/s", "inf/s", "-1/s", "0/s", "1.5/s", "1/0s",
                                 "1/s/s", "10/y", "1/-5s", "99999999999/s", "1/99999999s", "1e3/s",
                                 "2000000/s", " /s", "1 /s", None, 5, 1.5])
async def test_bad_rates_are_refused_before_redis(store: JobStore, bad: object) -> None:
    if bad is not None:
        with pytest.raises(InvalidRateError):
            await store.set_queue_rate("default", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidJobError):
            await store.enqueue(JobSpec("t.x", rate_key="k", rate=bad))  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError):
        await store.enqueue(JobSpec("t.x", rate_key="k"))
    assert await store.queue_rates() == {}


def test_rate_syntax() -> None:
    assert str(parse_rate("100/s")) == "100/s"
    assert parse_rate("100/m").interval_us == pytest.approx(600_000)
    assert parse_rate("10/30s").period == 30
    assert canonical_rate("3/1H") == "3/h"
    assert math.isclose(parse_rate("1000000/s").interval_us, 1.0)


def test_client_options_and_handlers_carry_rates() -> None:
    from backend.client.options import JobOptions
    from backend.workers.handlers import HandlerRegistry

    spec = JobOptions(rate_key="k", rate="5/s").spec("t.x", [], {})
    assert spec.rate_key == "k" and spec.rate == "5/s"
    with pytest.raises(InvalidJobError):
        JobOptions(rate="5/s").spec("t.x", [], {})
    registry = HandlerRegistry()

    @registry.task("t.rated", rate=" 7/M ")
    def rated() -> None: ...

    assert registry.get("t.rated").rate == "7/m"  # type: ignore[union-attr]
    for bad in ("0/s", "fast", "-1/m"):
        with pytest.raises(ValueError, match="rate"):
            registry.task("t.bad", rate=bad)
