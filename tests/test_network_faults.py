"""Network faults between workers and Redis, through tests/tcp_proxy.py.

- A worker whose connections are cut, or refused for a while, recovers by itself (no restart).
- A worker cut off (stalled) past its lease cannot complete a job another worker has since claimed:
  its late report reaches Redis and is refused, because the fencing token moved on.
- redis-py retries a command after a connection error, so a script can run twice with its first
  reply lost: enqueue with an id or a unique key never makes a duplicate, and a lost claim reply
  only delays that job until its lease expires: the claim was never confirmed, so it is given back
  without using up an attempt (at most LOST_CLAIM_CAP times per job, then charged).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from backend.workers.job_store import StaleClaimError, StoreUnavailableError
from backend.workers.models import TERMINAL_STATES, Claim, Job, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import LOST_CLAIM_CAP, Backoff
from tests.tcp_proxy import TcpProxy
from tests.worker_procs import WorkerProcess, eventually, read_records, worker_env

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    procs: list[WorkerProcess] = []
    yield procs
    for proc in procs:
        proc.stop()


def proxied_store(proxy: TcpProxy, prefix: str, retries: int) -> RedisJobStore:
    """A store whose client goes through the proxy; `retries` > 0 re-sends a command after a
    connection error, as redis-py can be configured to (and does by default in recent versions)."""
    client = aioredis.Redis.from_url(
        proxy.url(), decode_responses=True, socket_timeout=5,
        retry=Retry(NoBackoff(), retries), retry_on_error=[RedisConnectionError],
    )
    return RedisJobStore(client, prefix=prefix)


async def arm(proxy: TcpProxy, store: RedisJobStore, script: str) -> None:
    """Drop the reply of the next call of `script`, after loading it: else the dropped reply could
    be a NOSCRIPT error (the script did not run at all) instead of the lost result of a real run."""
    await store.redis.script_load(store._scripts[script].script)
    proxy.drop_reply(str(store._scripts[script].sha).encode())


async def all_done(store: RedisJobStore, total: int, timeout: float = 60) -> None:
    async def check() -> bool:
        return (await store.counts())["default"]["done"] == total

    await eventually(check, timeout, f"{total} jobs done")


# -- workers recover from cuts and stalls -----------------------------------------------------------


async def test_worker_recovers_from_cut_and_refused_connections(
    proxy: TcpProxy, store: RedisJobStore, prefix: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    record = tmp_path / "record.txt"
    env = worker_env(proxy.url(), prefix, record, BAGBOT_CONCURRENCY="4")
    worker = WorkerProcess(tmp_path, "worker", env)
    workers.append(worker)
    await worker.wait_for_log("✓ Heartbeats being sent")
    first = await store.enqueue_many([JobSpec("tests.record", kwargs={"sleep": 0.2}) for _ in range(20)])
    await asyncio.sleep(0.5)
    assert proxy.cut() > 0  # mid-run: claims, reports and the blocking wait all lose their socket
    await all_done(store, len(first))

    proxy.refuse(True)
    proxy.cut()
    await worker.wait_for_log("event=store_unavailable")
    await asyncio.sleep(1.0)  # under the 2 s lease: nothing may be lost or re-run
    proxy.refuse(False)
    await worker.wait_for_log("event=store_back", timeout=30)
    second = await store.enqueue_many([JobSpec("tests.record") for _ in range(20)])
    await all_done(store, len(first) + len(second))
    assert worker.proc.poll() is None  # the same process all along
    starts = [ex.job_id for ex in read_records(record) if ex.event == "start"]
    assert sorted(set(starts)) == sorted(job.id for job in first + second)
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_worker_cut_off_past_its_lease_cannot_complete_a_reclaimed_job(
    proxy: TcpProxy, store: RedisJobStore, prefix: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    record = tmp_path / "record.txt"
    cut_off = WorkerProcess(tmp_path, "cut_off", worker_env(proxy.url(), prefix, record))
    workers.append(cut_off)
    await cut_off.wait_for_log("✓ Heartbeats being sent")
    job = await store.enqueue(JobSpec("tests.record", kwargs={"sleep": 3.0}, backoff=Backoff(0.2, jitter=0)))

    async def started_by_cut_off() -> bool:
        return any(ex.job_id == job.id and ex.pid == cut_off.pid for ex in read_records(record))

    await eventually(started_by_cut_off, 30, "job started on the proxied worker")
    proxy.stall()  # its heartbeats and its report are held; the 2 s lease runs out on Redis's clock
    other = WorkerProcess(tmp_path, "other", worker_env(store_url(store), prefix, record))
    workers.append(other)

    async def reclaimed() -> bool:
        got = await store.get(job.id)
        return got is not None and got.state is JobState.RUNNING and got.attempts == 2

    await eventually(reclaimed, 30, "job re-claimed by the other worker")
    reclaimed_by = (await store.get(job.id)).worker  # type: ignore[union-attr]
    await asyncio.sleep(1.0)  # the cut-off worker's handler has ended; its report waits in the proxy
    proxy.resume()  # the late report reaches Redis now, with the old token

    await cut_off.wait_for_log("event=job_outcome_discarded", timeout=30)
    await all_done(store, 1)
    got = await store.get(job.id)
    assert got is not None and got.attempts == 2 and got.worker == reclaimed_by
    assert got.result == other.pid  # the re-claiming worker's outcome stands
    assert got.last_error is not None and got.last_error.type == "LeaseExpired"
    assert sorted(ex.pid for ex in read_records(record)) == sorted([cut_off.pid, other.pid])

    # the cut-off worker is healthy again without a restart: it takes work once `other` is gone
    other.send(signal.SIGTERM)
    assert await other.wait() == 0
    more = await store.enqueue_many([JobSpec("tests.record") for _ in range(5)])
    await all_done(store, 1 + len(more))
    assert {ex.pid for ex in read_records(record) if ex.job_id in {j.id for j in more}} == {cut_off.pid}
    cut_off.send(signal.SIGTERM)
    assert await cut_off.wait() == 0


def store_url(store: RedisJobStore) -> str:
    kwargs = store.redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


# -- lost replies: safe to repeat ---------------------------------------------------------------------


@pytest.mark.parametrize("retries", [3, 0], ids=["redis-py-retries", "caller-retries"])
async def test_enqueue_with_a_lost_reply_never_makes_a_duplicate(
    proxy: TcpProxy, store: RedisJobStore, prefix: str, retries: int
) -> None:
    proxied = proxied_store(proxy, prefix, retries)
    try:
        by_id = JobSpec("bagbot.noop", id="lost-reply-1")
        by_key = JobSpec("bagbot.noop", unique_key="lost-reply-key")
        for spec in (by_id, by_key):
            await arm(proxy, proxied, "enqueue")
            try:
                job = await proxied.enqueue(spec)  # redis-py re-sent the script after the lost reply
            except StoreUnavailableError:
                assert retries == 0
                # the caller cannot know whether it ran, so it asks again (a fresh id for the keyed spec)
                job = await proxied.enqueue(JobSpec(spec.name, id=spec.id, unique_key=spec.unique_key))
            assert job.state is JobState.ENQUEUED
        assert proxy.dropped == 2  # both first replies were really lost after the script ran
        assert [reply[:1] for reply in proxy.dropped_replies] == [b"*", b"*"]  # real results, no error
        counts = (await store.counts())["default"]
        assert counts["enqueued"] == 2
        snapshot = await store.metrics()
        assert snapshot.queues["default"].enqueued == {"bagbot.noop": 2}
        keyed = await store.list_jobs()
        assert sorted(j.unique_key or "" for j in keyed.jobs) == ["", "lost-reply-key"]
    finally:
        await proxied.close()


async def test_a_lost_claim_reply_only_delays_the_job_until_its_lease_expires(
    proxy: TcpProxy, store: RedisJobStore, prefix: str
) -> None:
    proxied = proxied_store(proxy, prefix, retries=0)
    try:
        job = await store.enqueue(JobSpec("bagbot.noop", max_attempts=1))
        await arm(proxy, proxied, "claim")
        with pytest.raises(StoreUnavailableError):
            await proxied.claim("lost-worker", ["default"], 1, lease_seconds=1.5)
        held = await store.get(job.id)
        assert held is not None and held.state is JobState.RUNNING and held.worker == "lost-worker"
        assert await store.claim("w2", ["default"], 1, 30) == []  # nobody else can take it meanwhile

        claimed: list[Job] = []

        async def claimable() -> bool:
            claimed.extend(await store.claim("w2", ["default"], 1, 30))
            return bool(claimed)

        await eventually(claimable, 30, "job claimable after the lost claim's lease")
        (again,) = claimed
        assert again.id == job.id and again.attempts == 1, "the lost claim used up no attempt"
        assert again.last_error is None and again.token is not None
        assert await store.complete(claim_of(again)) is JobState.DONE
        assert (await store.metrics()).queues["default"].runs == {("bagbot.noop", "done"): 1}
    finally:
        await proxied.close()


async def finished(store: RedisJobStore, job_id: str, timeout: float) -> Job:
    """The job once it reached a terminal state (whichever: the test then says which it wanted)."""
    async def terminal() -> bool:
        got = await store.get(job_id)
        return got is not None and got.state in TERMINAL_STATES

    await eventually(terminal, timeout, f"job {job_id} finished")
    got = await store.get(job_id)
    assert got is not None
    return got


async def test_a_worker_whose_claim_reply_is_lost_runs_the_job_once_at_attempt_1(
    proxy: TcpProxy, store: RedisJobStore, prefix: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Issue 13, item 8: a max_attempts=1 job whose claim reply a real worker never got used to end
    `failed` (LeaseExpired) without ever running. Now it runs once, when the lease is over."""
    record = tmp_path / "record.txt"
    job = await store.enqueue(JobSpec("tests.record", max_attempts=1))
    await arm(proxy, store, "claim")  # the worker's first claim takes the job; its reply is lost
    worker = WorkerProcess(tmp_path, "worker", worker_env(proxy.url(), prefix, record))
    workers.append(worker)
    got = await finished(store, job.id, 60)
    assert proxy.dropped == 1 and proxy.dropped_replies[0][:1] == b"*"  # a real claim result was lost
    assert got.state is JobState.DONE and got.attempts == 1 and got.last_error is None
    starts = [(ex.job_id, ex.pid, ex.attempt) for ex in read_records(record) if ex.event == "start"]
    assert starts == [(job.id, worker.pid, 1)], "run exactly once, by the worker that lost the reply"
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_worker_killed_before_its_confirm_is_not_charged_until_the_cap(
    proxy: TcpProxy, store: RedisJobStore, prefix: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Every confirm (the confirm script) is lost on the way, so each worker that claims the job holds it
    unconfirmed, does not start its handler, and is SIGKILLed so. Each expiry is given back uncounted,
    LOST_CLAIM_CAP times; the next one is charged, so the max_attempts=1 job ends `failed` after
    LOST_CLAIM_CAP + 1 claims instead of going round for ever, and no handler ever started."""
    record = tmp_path / "record.txt"
    job = await store.enqueue(JobSpec("tests.record", max_attempts=1))
    proxy.drop_request(str(store._scripts["confirm"].sha).encode(), count=1_000)
    claimed_by: list[int] = []
    while True:
        worker = WorkerProcess(tmp_path, f"worker-{len(workers)}", worker_env(proxy.url(), prefix, record))
        workers.append(worker)

        async def claimed_or_finished(pid: int = worker.pid) -> bool:
            got = await store.get(job.id)
            mine = got is not None and got.state is JobState.RUNNING and f"-{pid}-" in (got.worker or "")
            return got is None or got.state in TERMINAL_STATES or mine

        await eventually(claimed_or_finished, 60, "the job claimed by the new worker, or finished")
        got = await store.get(job.id)
        if got is None or got.state in TERMINAL_STATES:
            break
        assert got.attempts == 1, "a lost claim used up an attempt"
        claimed_by.append(worker.pid)
        assert len(claimed_by) <= LOST_CLAIM_CAP + 1, "the job went round more often than the cap allows"
        await worker.wait_for_log("op=confirm")  # its confirm was lost: it holds the claim unconfirmed
        worker.send(signal.SIGKILL)
        assert await worker.wait() == -signal.SIGKILL
    failed = await finished(store, job.id, 5)
    assert failed.state is JobState.FAILED and failed.attempts == 1
    assert failed.last_error is not None and failed.last_error.type == "LeaseExpired"
    assert f"-{claimed_by[-1]}-" in failed.last_error.message
    assert len(claimed_by) == LOST_CLAIM_CAP + 1
    assert read_records(record) == [], "no handler starts on a claim it has not confirmed"
    assert proxy.dropped_requests >= LOST_CLAIM_CAP + 1
    assert (await store.metrics()).queues["default"].runs == {("tests.record", "expired"): 1}
    workers[-1].send(signal.SIGTERM)
    assert await workers[-1].wait() == 0


async def test_a_confirm_lost_on_the_way_is_sent_again_before_the_handler_starts(
    proxy: TcpProxy, store: RedisJobStore, prefix: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """The first confirms never reach Redis: the worker holds the job (its handler not started),
    re-sends the confirm with backoff, and runs the job once it landed: done, attempt 1, once."""
    record = tmp_path / "record.txt"
    job = await store.enqueue(JobSpec("tests.record", max_attempts=1))
    proxy.drop_request(str(store._scripts["confirm"].sha).encode(), count=3)
    worker = WorkerProcess(tmp_path, "worker", worker_env(proxy.url(), prefix, record))
    workers.append(worker)
    got = await finished(store, job.id, 60)
    assert got.state is JobState.DONE and got.attempts == 1 and got.last_error is None
    assert proxy.dropped_requests == 3
    assert "op=confirm" in worker.log() and "event=store_back" in worker.log()
    assert [(ex.job_id, ex.attempt) for ex in read_records(record) if ex.event == "start"] == [(job.id, 1)]
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_worker_stopped_before_its_confirm_landed_starts_nothing_and_costs_nothing(
    proxy: TcpProxy, store: RedisJobStore, prefix: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """SIGTERM while the confirm cannot get through: the worker starts nothing and exits 0; the claim
    stays unconfirmed, so when its lease expires the job goes back uncounted and runs once elsewhere."""
    record = tmp_path / "record.txt"
    job = await store.enqueue(JobSpec("tests.record", max_attempts=1))
    proxy.drop_request(str(store._scripts["confirm"].sha).encode(), count=1_000)
    stuck = WorkerProcess(tmp_path, "stuck", worker_env(proxy.url(), prefix, record))
    workers.append(stuck)
    await stuck.wait_for_log("op=confirm")
    stuck.send(signal.SIGTERM)
    assert await stuck.wait() == 0
    assert "event=claims_left_unconfirmed" in stuck.log()
    held = await store.get(job.id)
    assert held is not None and held.state is JobState.RUNNING and held.attempts == 1
    direct = WorkerProcess(tmp_path, "direct", worker_env(store_url(store), prefix, record))
    workers.append(direct)
    got = await finished(store, job.id, 60)
    assert got.state is JobState.DONE and got.attempts == 1 and got.last_error is None
    assert [(ex.pid, ex.attempt) for ex in read_records(record) if ex.event == "start"] == [(direct.pid, 1)]
    direct.send(signal.SIGTERM)
    assert await direct.wait() == 0


def claim_of(job: Job) -> Claim:
    assert job.token is not None
    return Claim(job.queue, job.id, job.token)


async def test_a_lost_finish_reply_records_the_outcome_once(
    proxy: TcpProxy, store: RedisJobStore, prefix: str
) -> None:
    """The re-sent finish finds the job already done and changes nothing: one outcome, counted once.
    Its reply then says "stale" (StaleClaimError), though the outcome was recorded: a worker logs
    job_outcome_discarded for it. Harmless, but misleading (see docs/reliability.md)."""
    proxied = proxied_store(proxy, prefix, retries=3)
    try:
        job = await store.enqueue(JobSpec("bagbot.noop"))
        (running,) = await store.claim("w1", ["default"], 1, 30)
        await arm(proxy, proxied, "finish")
        with contextlib.suppress(StaleClaimError):
            await proxied.complete(claim_of(running), result="once", duration=0.01)
        assert proxy.dropped == 1 and proxy.dropped_replies[0][:1] == b"*"
        got = await store.get(job.id)
        assert got is not None and got.state is JobState.DONE and got.result == "once" and got.attempts == 1
        queue = (await store.metrics()).queues["default"]
        assert queue.runs == {("bagbot.noop", "done"): 1}
        assert sum(queue.duration_buckets["bagbot.noop"]) == 1
    finally:
        await proxied.close()
