"""Each attempt's error (Job.errors), a queue's per-minute history and workers' running jobs, on every
store of the conformance suite (memory, fakeredis, a real Redis and a real Cluster), through the store
and the HTTP API: what is kept, how it is bounded,
and what a corrupt or hostile stored value does (it is skipped, never a 500)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from backend.api.app import create_app
from backend.config import Settings
from backend.workers.job_store import JobStore
from backend.workers.models import Claim, Completion, Job, JobError, JobSpec, JobState, WorkerInfo
from backend.workers.redis.worker_codec import RUNNING_JOBS_SHOWN
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import DURATION_BUCKETS, ERROR_HISTORY, ERROR_MAX_BYTES, HISTORY_MINUTES

TOKEN = "history-token"


@pytest.fixture
async def client(store: JobStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(api_token=TOKEN), store=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as c:
        yield c


def redis_of(store: JobStore) -> Any:
    assert isinstance(store, RedisJobStore)
    return store.redis


async def run_once(store: JobStore, job: Job, error: JobError | None, duration: float = 0.02,
                   queue: str = "default") -> JobState:
    """Make the job due (when it waits for a retry), claim it and report one run: an error, or success."""
    current = await store.get(job.id, queue)
    if current is not None and current.state is JobState.RETRY_SCHEDULED:
        await redis_of(store).zadd(store.keys.queue(queue).waiting, {job.id: 0})  # type: ignore[attr-defined]
        await store.promote([queue])
    [claimed] = await store.claim("w1", [queue], 1, 30)
    assert claimed.id == job.id
    claim = Claim(queue, job.id, claimed.token or "")
    if error is None:
        return await store.complete(claim, {"ok": True}, duration)
    return await store.fail(claim, error, duration=duration, retry_delay=0)


# -- errors of each attempt ----------------------------------------------------------------------


async def test_the_last_attempts_errors_are_kept_oldest_first_and_a_done_job_keeps_them(
        store: JobStore, client: httpx.AsyncClient) -> None:
    job = await store.enqueue(JobSpec("t.flaky", max_attempts=ERROR_HISTORY + 5))
    for attempt in range(1, ERROR_HISTORY + 4):
        error = JobError("Boom", f"attempt {attempt}\nsecond line", f"tb {attempt}")
        assert await run_once(store, job, error) is JobState.RETRY_SCHEDULED
    assert await run_once(store, job, None) is JobState.DONE
    body = (await client.get(f"/api/jobs/{job.id}")).json()
    assert body["state"] == "done" and body["result"] == {"ok": True}
    errors = body["errors"]
    assert len(errors) == ERROR_HISTORY
    assert [e["attempt"] for e in errors] == list(range(4, ERROR_HISTORY + 4))
    assert errors[-1]["message"] == f"attempt {ERROR_HISTORY + 3}\nsecond line"
    assert errors[0]["traceback"] == "tb 4" and errors[0]["type"] == "Boom"
    assert all(errors[i]["at"] <= errors[i + 1]["at"] for i in range(len(errors) - 1))


async def test_a_failed_job_has_every_attempts_error_and_a_manual_retry_adds_to_them(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.bad", max_attempts=2))
    await run_once(store, job, JobError("E1", "one"))
    assert await run_once(store, job, JobError("E2", "two")) is JobState.FAILED
    await store.retry(job.id)
    [claimed] = await store.claim("w1", ["default"], 1, 30)
    await store.fail(Claim("default", job.id, claimed.token or ""), JobError("E3", "three"), retry_delay=0)
    found = await store.get(job.id)
    assert found is not None
    assert [(e.attempt, e.error.type) for e in found.errors] == [(1, "E1"), (2, "E2"), (1, "E3")]


async def test_an_expired_lease_is_an_attempts_error_too(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.lost", max_attempts=3))
    (claimed,) = await store.claim("w-gone", ["default"], 1, 0.001)
    await store.extend([Claim("default", claimed.id, claimed.token or "")], 0.001)  # confirmed, then died
    redis = redis_of(store)
    await redis.zadd(store.keys.queue("default").running, {job.id: 0})  # type: ignore[attr-defined]
    assert await store.recover(["default"]) == 1
    found = await store.get(job.id)
    assert found is not None and [e.error.type for e in found.errors] == ["LeaseExpired"]
    assert "w-gone" in found.errors[0].error.message


async def test_a_huge_error_is_noted_not_kept_whole(store: JobStore, client: httpx.AsyncClient) -> None:
    job = await store.enqueue(JobSpec("t.huge", max_attempts=3))
    await run_once(store, job, JobError("Huge", "m" * 1000, "x" * (ERROR_MAX_BYTES + 10)))
    body = (await client.get(f"/api/jobs/{job.id}")).json()
    [entry] = body["errors"]
    assert entry["type"] == "Huge" and "too long for the history" in entry["message"]
    assert body["last_error"]["traceback"] == "x" * (ERROR_MAX_BYTES + 10)  # the last error stays whole
    raw = await redis_of(store).hget(store.keys.queue("default").job(job.id), "errors")  # type: ignore[attr-defined]
    assert len(raw) < 500


async def test_hostile_or_old_error_histories_read_as_what_can_be_read(
        store: JobStore, client: httpx.AsyncClient) -> None:
    job = await store.enqueue(JobSpec("t.odd", max_attempts=5))
    key = store.keys.queue("default").job(job.id)  # type: ignore[attr-defined]
    redis = redis_of(store)
    good = '1 1700000000000000 {"type":"E","message":"m","traceback":""}'
    garbage = ["not a line", "2 x {}", "3 5 [1,2]", "4 5 {not json", "nan nan {}", "9" * 400 + " 1 {}",
               "5 1 " + "{" + '"type":"' + "y" * (3 * ERROR_MAX_BYTES) + '"}', "6 1 {\"type\": 1}"]
    await redis.hset(key, "errors", "\n".join([good, *garbage]))
    body = (await client.get(f"/api/jobs/{job.id}")).json()
    assert (await client.get(f"/api/jobs/{job.id}")).status_code == 200
    first = {"attempt": 1, "at": 1700000000.0, "type": "E", "message": "m", "traceback": ""}
    assert body["errors"][0] == first
    assert len(body["errors"]) == 3  # the good line, the oversized one, and {"type": 1} read as type "1"
    # a new failure keeps the lines of the right shape and size only
    await run_once(store, job, JobError("New", "n"))
    raw = await redis.hget(key, "errors")
    assert raw.splitlines()[0] == good and len(raw) < 1000
    # thousands of lines (a hand edit): the last ERROR_HISTORY are read, and kept at the next failure
    await redis.hset(key, "errors", "\n".join(f"{i} 1 {{\"type\":\"T{i}\"}}" for i in range(5000)))
    body = (await client.get(f"/api/jobs/{job.id}")).json()
    assert [e["type"] for e in body["errors"]] == [f"T{i}" for i in range(5000 - ERROR_HISTORY, 5000)]
    await run_once(store, job, JobError("Last", "n"))
    assert len((await redis.hget(key, "errors")).splitlines()) == ERROR_HISTORY
    # a record written before the history existed: no errors, its last_error still shown
    await redis.hdel(key, "errors")
    body = (await client.get(f"/api/jobs/{job.id}")).json()
    assert body["errors"] == [] and body["last_error"]["type"] == "Last"


# -- per-minute history ----------------------------------------------------------------------------


async def test_history_counts_runs_failures_and_duration_quantiles(
        store: JobStore, client: httpx.AsyncClient) -> None:
    for i in range(8):
        job = await store.enqueue(JobSpec("t.h", queue="hist", max_attempts=1))
        await run_once(store, job, JobError("E", "x") if i < 2 else None, duration=0.2 if i < 7 else 20.0,
                       queue="hist")
    response = await client.get("/api/queues/hist/history", params={"minutes": 5})
    assert response.status_code == 200
    minutes = response.json()["minutes"]
    assert len(minutes) == 5 and all(a["at"] + 60 == b["at"] for a, b in itertools.pairwise(minutes))
    assert sum(m["processed"] for m in minutes) == 8 and sum(m["failed"] for m in minutes) == 2
    busy = [m for m in minutes if m["processed"]]
    assert len(busy) <= 2  # one minute, or two when the runs straddled a minute
    if len(busy) == 1:
        [m] = busy
        assert 0.1 < m["p50"] <= 0.25 and 10.0 < m["p99"] <= 30.0
        assert m["mean"] == pytest.approx((7 * 0.2 + 20.0) / 8, rel=1e-3)
    assert all(m["p50"] is None and m["mean"] is None for m in minutes if not m["processed"])
    # the same runs in the metrics, counted in the same step
    metrics = (await client.get("/api/metrics")).text
    assert 'bagbot_job_run_total{name="t.h",outcome="done",queue="hist"} 6' in metrics


@pytest.mark.parametrize("query", ["minutes=0", f"minutes={HISTORY_MINUTES + 1}", "minutes=x", "minutes=-5",
                                   "minutes=1e9", "minutes=NaN"])
async def test_history_refuses_bad_windows(store: JobStore, client: httpx.AsyncClient, query: str) -> None:
    await store.enqueue(JobSpec("t.h", queue="hist"))
    response = await client.get(f"/api/queues/hist/history?{query}")
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("queue", ["bad queue", "{x}", "a" * 65, "%00", "ü"])
async def test_history_refuses_bad_queue_names(client: httpx.AsyncClient, queue: str) -> None:
    assert (await client.get(f"/api/queues/{queue}/history")).status_code in (404, 422)
    assert (await client.get("/api/queues/bad%20queue/history")).status_code == 422


async def test_history_of_an_unknown_queue_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/queues/never-used/history")
    assert response.status_code == 404 and "never-used" in response.json()["detail"]


async def test_history_is_trimmed_in_the_same_step_and_stays_bounded(
        store: JobStore, client: httpx.AsyncClient) -> None:
    redis = redis_of(store)
    key = store.keys.queue("trim").history  # type: ignore[attr-defined]
    now_minute = int((await store.server_time()) // 60)
    # 500 minutes of old fields, as if this queue had run for hours (more than any one call deletes)
    old = {f"{m}|{k}": 1 for m in range(now_minute - 500, now_minute) for k in ("n", "f", "d3")}
    await redis.hset(key, mapping={**old, "min": now_minute - 500})
    for _ in range(4):
        job = await store.enqueue(JobSpec("t.trim", queue="trim"))
        await run_once(store, job, None, queue="trim")
    fields = await redis.hgetall(key)
    minutes = {int(f.partition("|")[0]) for f in fields if f != "min"}
    assert min(minutes) > now_minute - HISTORY_MINUTES and int(fields["min"]) > now_minute - HISTORY_MINUTES
    assert len(fields) <= HISTORY_MINUTES * (3 + len(DURATION_BUCKETS) + 1) + 1
    shown = (await client.get("/api/queues/trim/history", params={"minutes": HISTORY_MINUTES})).json()
    # the old minutes still inside the window are kept (one run each), the 4 new runs added
    assert sum(m["processed"] for m in shown["minutes"]) >= 4 + HISTORY_MINUTES - 2
    assert shown["minutes"][-1]["processed"] >= 1


@pytest.mark.parametrize("bad_min", ["nan", "inf", "-inf", "-5", "1.5", "1e300", "x", ""])
async def test_a_corrupt_window_start_restarts_the_window(store: JobStore, bad_min: str) -> None:
    redis = redis_of(store)
    key = store.keys.queue("trim").history  # type: ignore[attr-defined]
    await redis.hset(key, mapping={"min": bad_min, "junk|n": "x", "5|d99": "1", "7|s": "inf"})
    job = await store.enqueue(JobSpec("t.trim", queue="trim"))
    assert await run_once(store, job, None, queue="trim") is JobState.DONE
    history = await store.history("trim", 3)
    assert sum(m.processed for m in history) == 1
    assert int(await redis.hget(key, "min")) == int((await store.server_time()) // 60)


async def test_unreadable_history_values_are_skipped(store: JobStore) -> None:
    job = await store.enqueue(JobSpec("t.h", queue="odd"))
    await run_once(store, job, None, queue="odd")
    minute = int((await store.server_time()) // 60)
    await redis_of(store).hset(store.keys.queue("odd").history, mapping={  # type: ignore[attr-defined]
        f"{minute}|f": "nope", f"{minute}|s": "nan", f"{minute}|d0": "4", f"{minute}|d1": "-3",
        f"{minute}|q": "1", f"{minute}|": "1", f"{minute}|d": "1"})
    [last] = await store.history("odd", 1)
    assert last.processed == 1 and last.failed == 0 and last.duration_sum == 0.0
    assert sum(last.buckets) == 1


# -- workers' running jobs -----------------------------------------------------------------------


async def test_workers_list_their_running_jobs(store: JobStore, client: httpx.AsyncClient) -> None:
    info = WorkerInfo("w-run", host="h", pid=1, queues=["default"], concurrency=300)
    await store.register_worker(info)
    jobs = await store.enqueue_many([JobSpec("t.r") for _ in range(RUNNING_JOBS_SHOWN + 5)])
    claimed = await store.claim("w-run", ["default"], len(jobs), 30)
    claims = [Claim("default", job.id, job.token or "") for job in claimed]
    await store.heartbeat(info, claims, 30)
    [worker] = (await client.get("/api/workers")).json()["workers"]
    assert worker["running"] == len(jobs)
    assert len(worker["running_jobs"]) == RUNNING_JOBS_SHOWN
    assert worker["running_jobs"][0] == {"queue": "default", "id": claims[0].job_id}
    await redis_of(store).hset(store.keys.worker("w-run"), "running_jobs", '[[1], "x", [1, 2, 3], {"a": 1}')
    [worker] = (await client.get("/api/workers")).json()["workers"]
    assert worker["running_jobs"] == []
    await store.deregister_worker("w-run")


# -- the pages ---------------------------------------------------------------------------------------


async def test_the_job_page_and_the_dashboards_files_are_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/jobs/abc-123")
    assert page.status_code == 200 and 'id="job-detail"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (await client.get("/jobs/not%20an%20id")).status_code == 422
    assert (await client.get("/jobs/" + "a" * 65)).status_code == 422
    for name, kind in (("dashboard.js", "text/javascript"), ("charts.js", "text/javascript"),
                       ("job.js", "text/javascript"), ("dashboard.css", "text/css")):
        asset = await client.get(f"/ui/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert ".innerHTML" not in asset.text and "insertAdjacentHTML" not in asset.text
    for missing in ("x.js", "..%2Fapp.py", "dashboard.html%00.js"):
        assert (await client.get(f"/ui/{missing}")).status_code == 404


async def test_a_finish_sent_again_adds_no_error_and_no_run(store: JobStore) -> None:
    """redis-py re-sends a script after a lost reply: the repeat must count nothing twice."""
    job = await store.enqueue(JobSpec("t.again", queue="again", max_attempts=3))
    [claimed] = await store.claim("w1", ["again"], 1, 30)
    report = Completion(Claim("again", job.id, claimed.token or ""), 0.3, error=JobError("E", "once"),
                        retry_delay=60)
    assert await store.finish([report]) == [JobState.RETRY_SCHEDULED]
    assert await store.finish([report]) == [JobState.RETRY_SCHEDULED]  # the repeat: same answer
    found = await store.get(job.id, "again")
    assert found is not None and len(found.errors) == 1
    history = await store.history("again", 2)
    assert sum(m.processed for m in history) == 1 and sum(m.failed for m in history) == 1
