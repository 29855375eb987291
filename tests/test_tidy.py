"""Bounded metric series and queue list (`JobStore.tidy`, lua/tidy.lua), on every store.

A handler name that no live worker registers and that has no job left stops being exported and
loses its counters; a name with a live job or a registered handler is never dropped; a queue with
no job and no live worker leaves `queues()`, and comes back as soon as anyone enqueues to it.
"""

from __future__ import annotations

import asyncio

from backend.api.metrics import GUIDE_METRICS, render
from backend.config import Settings
from backend.workers.handlers import HandlerRegistry
from backend.workers.job_store import JobStore
from backend.workers.models import Claim, Completion, JobSpec, JobState, WorkerInfo
from backend.workers.orchestration import Worker
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc
from backend.workers.redis.tidy import _unlist
from backend.workers.redis_job_store import RedisJobStore

NAMES = [f"gone.n{i:03d}" for i in range(300)]


def redis_store(store: JobStore) -> RedisJobStore:
    assert isinstance(store, RedisJobStore)
    return store


async def series(store: JobStore) -> list[str]:
    """The scrape's sample lines (one per series)."""
    text = render(await store.metrics()).decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


async def run_all(store: JobStore, specs: list[JobSpec], queue: str = "default") -> None:
    await store.enqueue_many(specs)
    claimed = await store.claim("w-test", [queue], len(specs), 30.0)
    assert len(claimed) == len(specs)
    states = await store.finish([Completion(Claim(queue, job.id, job.token or ""), 0.01, result=1)
                                 for job in claimed])
    assert states == [JobState.DONE] * len(specs)


async def test_series_of_300_unused_names_drop_back_after_tidy(store: JobStore) -> None:
    await store.register_worker(WorkerInfo("w1", queues=["default"], handlers=["kept.handler"]))
    await run_all(store, [JobSpec("kept.handler")])
    waiting = await store.enqueue(JobSpec("live.name", delay=3600))  # a live job no worker can run
    baseline = await series(store)

    await run_all(store, [JobSpec(name) for name in NAMES])
    grown = await series(store)
    per_name = (len(grown) - len(baseline)) / len(NAMES)
    assert per_name >= 20  # counters and a histogram per name: 300 names, thousands of series

    assert (await store.tidy(stale_after=60)).names == 0  # their done jobs are still retained
    assert len(await series(store)) == len(grown)

    assert await store.purge(older_than=0) == len(NAMES) + 1
    tidied = await store.tidy(stale_after=60)
    assert tidied.names == len(NAMES) and tidied.queues == ()
    after = await series(store)
    assert [line.rsplit(" ", 1)[0] for line in after] == [line.rsplit(" ", 1)[0] for line in baseline]
    text = "\n".join(after)
    assert 'name="kept.handler"' in text  # a registered handler, though its job is gone
    assert 'name="live.name"' in text  # a name with a live job
    assert "gone.n" not in text
    stats = await redis_store(store).redis.hgetall(redis_store(store).keys.queue("default").stats)
    assert not [field for field in stats if "gone.n" in field]  # cleaned up, not just hidden
    assert await store.get(waiting.id) is not None
    assert all(any(line.startswith(name) for line in after) for name in GUIDE_METRICS)  # the guide's five


async def test_a_name_comes_back_from_zero_after_tidy(store: JobStore) -> None:
    await run_all(store, [JobSpec("again.job")])
    await store.purge(older_than=0)
    await store.register_worker(WorkerInfo("w1", queues=["default"], handlers=[]))
    assert (await store.tidy(stale_after=60)).names == 1
    await run_all(store, [JobSpec("again.job")])
    text = "\n".join(await series(store))
    assert 'bagbot_job_enqueue_total{name="again.job",queue="default"} 1.0' in text


async def test_no_name_is_dropped_while_a_worker_does_not_say_its_handlers(store: JobStore) -> None:
    """A worker of a version before this one (no `handlers` field), or one whose field cannot be
    read: tidy cannot know what it runs, so it keeps every name."""
    s = redis_store(store)
    await store.enqueue(JobSpec("other.job", delay=3600))  # the queue is not empty
    await run_all(store, [JobSpec("old.job")])
    await store.purge(older_than=0)
    await store.register_worker(WorkerInfo("w-old", queues=["default"]))
    assert (await store.tidy(stale_after=60)).names == 0
    await store.register_worker(WorkerInfo("w-new", queues=["default"], handlers=[]))
    await s.redis.hset(s.keys.worker("w-new"), "handlers", "{not json")
    await store.deregister_worker("w-old")
    assert (await store.tidy(stale_after=60)).names == 0
    await s.redis.hset(s.keys.worker("w-new"), "handlers", "[]")
    assert (await store.tidy(stale_after=60)).names == 1


async def test_unreadable_counters_never_drop_a_name(store: JobStore) -> None:
    s = redis_store(store)
    stats = s.keys.queue("default").stats
    await store.enqueue(JobSpec("other.job", delay=3600))
    await s.redis.hset(stats, mapping={"enq|bad.job": "12abc", "prg|bad.job": "99", "run|bad.job|done": "3",
                                       "enq|neg.job": "2", "prg|neg.job": "zz"})
    await store.register_worker(WorkerInfo("w1", queues=["default"], handlers=[]))
    assert (await store.tidy(stale_after=60)).names == 0
    assert await s.redis.hget(stats, "run|bad.job|done") == "3"


async def test_empty_unserved_queue_leaves_the_list_and_comes_back_on_enqueue(store: JobStore) -> None:
    s = redis_store(store)
    await store.register_worker(WorkerInfo("w1", queues=["served"], handlers=[]))
    for queue in ("gone", "served", "busy"):
        await run_all(store, [JobSpec("t.job", queue=queue)], queue)
    live = await store.enqueue(JobSpec("t.job", queue="busy", delay=3600))
    await store.purge(older_than=0)
    assert (await store.tidy(stale_after=60)).queues == ("gone",)
    assert await store.queues() == ["busy", "served"]
    gone = s.keys.queue("gone")
    left = (gone.stats, gone.seq, gone.jobs, gone.ready, gone.wake, gone.state("done"), gone.unique)
    assert not await s.redis.exists(*left)
    assert await store.get(live.id) is not None

    # another process still has "gone" in its cache of listed queues: its enqueue lists it again
    s._known_queues.add("gone")
    job = await store.enqueue(JobSpec("t.job", queue="gone"))
    assert "gone" in await store.queues()
    assert await store.get(job.id) == job
    assert (await store.counts())["gone"]["enqueued"] == 1


async def test_a_paused_queue_outlives_its_jobs_and_workers(store: JobStore) -> None:
    """A pause must hold until someone resumes: tidy never empties or unlists a paused queue."""
    await run_all(store, [JobSpec("t.job", queue="held")], "held")
    await store.pause_queue("held")
    await store.purge(older_than=0)
    assert (await store.tidy(stale_after=60)).queues == ()
    assert "held" in await store.queues()
    assert "held" in await store.paused_queues()
    await store.resume_queue("held")
    assert (await store.tidy(stale_after=60)).queues == ("held",)


async def test_an_enqueue_between_emptying_and_unlisting_keeps_the_queue(store: JobStore) -> None:
    """tidy.lua empties the queue, then (another slot, another command) the queue is unlisted: an
    enqueue that lands in between re-creates `seq`, and the unlisting puts the queue back."""
    s = redis_store(store)
    await run_all(store, [JobSpec("t.job", queue="racy")], "racy")
    await store.purge(older_than=0)
    qkeys = s.keys.queue("racy")
    assert await s._call(sc.TIDY, qkeys, sa.TidyArgs.of("racy", [])) == (1, True)
    job = await store.enqueue(JobSpec("t.job", queue="racy"))  # cached as listed: no SADD before
    assert await _unlist(s, "racy", qkeys) is False
    assert "racy" in await store.queues()
    assert await store.get(job.id) == job


async def test_a_worker_registers_its_handler_names(store: JobStore) -> None:
    registry = HandlerRegistry()

    @registry.task(name="mine.job")
    async def mine() -> None:
        return None

    worker = Worker(store, Settings(queues=["default"]), registry=registry, worker_id="w-reg")
    assert await worker.leases.register()
    (info,) = await store.list_workers()
    assert info.handlers == ["mine.job"]



async def test_worker_housekeeping_purges_and_tidies(store: JobStore) -> None:
    """The worker's 5-minute housekeeping pass runs tidy after the purge: no extra process."""
    settings = Settings(queues=("default",), retention_seconds=0.01)
    worker = Worker(store, settings, registry=HandlerRegistry(), worker_id="w-hk")
    assert await worker.leases.register()
    await run_all(store, [JobSpec("hk.job")])
    await run_all(store, [JobSpec("hk.job", queue="elsewhere")], "elsewhere")
    await asyncio.sleep(0.05)  # past the workers' 0.01 s retention
    await worker.leases.housekeeping()  # the first pass purges and tidies (then every 5 minutes)
    assert await store.queues() == ["default"]  # served by w-hk; "elsewhere" had no job and no worker
    s = redis_store(store)
    stats = await s.redis.hgetall(s.keys.queue("default").stats)
    assert not [field for field in stats if "hk.job" in field]
