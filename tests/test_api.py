"""The HTTP API through httpx against the ASGI app: every endpoint and every error status.

Each test builds its own app around a store it owns (memory, or a real Redis
under a random prefix). ASGITransport does not run the lifespan, so these apps
have no embedded worker: jobs stay where the test puts them, and runs are
driven by claiming and finishing through the store directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from backend.api.app import create_app
from backend.config import Settings
from backend.workers.job_store import JobStore
from backend.workers.models import Claim, HandlerPolicy, JobError, JobSpec, WorkerInfo
from backend.workers.redis_job_store import RedisJobStore
from tests.redis_server import RedisServer, free_port

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def store(app_store: JobStore) -> JobStore:
    return app_store


def client_for(store: JobStore, **settings: Any) -> httpx.AsyncClient:
    app = create_app(Settings(**settings), store=store)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")


@pytest.fixture
async def client(store: JobStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(store) as c:
        yield c


async def enqueue(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/jobs", json={"name": "bagbot.echo", **body})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def fail_job(store: JobStore, queue: str = "default", message: str = "boom") -> str:
    """Claim the next job of `queue` and report a non-retryable error: it ends `failed`."""
    (job,) = await store.claim("test-worker", [queue], 1, 30)
    assert job.token is not None
    await store.fail(Claim(job.queue, job.id, job.token), JobError("ValueError", message), retryable=False)
    return job.id


# -- health -----------------------------------------------------------------------------------------


async def test_health_is_liveness_only(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_the_store_and_its_eviction_policy(
    client: httpx.AsyncClient, store: JobStore
) -> None:
    response = await client.get("/api/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["store"] == store.backend
    assert body["policy_ok"] is True
    if store.backend == "redis":
        assert body["maxmemory_policy"] == "noeviction"
        assert body["version"]


# -- enqueue ------------------------------------------------------------------------------------------


async def test_enqueue_returns_201_and_the_job(client: httpx.AsyncClient) -> None:
    job = await enqueue(
        client, args=[1, "two"], kwargs={"k": [3]}, queue="mail", priority=5, max_attempts=4, timeout=12.5
    )
    assert job["state"] == "enqueued"
    assert (job["name"], job["queue"], job["args"], job["kwargs"]) == (
        "bagbot.echo",
        "mail",
        [1, "two"],
        {"k": [3]},
    )
    assert (job["priority"], job["max_attempts"], job["timeout"], job["attempts"]) == (5, 4, 12.5, 0)
    assert job["created_at"] > 0 and job["last_error"] is None and job["result"] is None
    assert "token" not in job  # the claim token is a worker's secret

    fetched = await client.get(f"/api/jobs/{job['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == job
    assert (await client.get(f"/api/jobs/{job['id']}", params={"queue": "mail"})).json()["id"] == job["id"]


async def test_enqueue_with_delay_or_run_at_schedules(client: httpx.AsyncClient) -> None:
    delayed = await enqueue(client, delay=3600)
    assert delayed["state"] == "scheduled"
    assert delayed["run_at"] - delayed["created_at"] == pytest.approx(3600, abs=1)

    when = datetime.now(UTC) + timedelta(hours=2)
    at = await enqueue(client, run_at=when.isoformat())
    assert at["state"] == "scheduled"
    assert at["run_at"] == pytest.approx(when.timestamp(), abs=0.01)

    # no zone: refused (issue 15), it was read as UTC before, a silent guess hours off for most callers
    naive_at = when.replace(tzinfo=None).isoformat()
    naive = await client.post("/api/jobs", json={"name": "bagbot.echo", "run_at": naive_at})
    assert naive.status_code == 422 and "time zone" in naive.text
    epoch = await enqueue(client, run_at=when.timestamp())  # epoch seconds are zone-free: accepted
    assert epoch["run_at"] == pytest.approx(when.timestamp(), abs=0.01)

    past = await enqueue(client, run_at="2001-01-01T00:00:00Z")
    assert past["state"] == "enqueued"


async def test_enqueue_is_safe_to_repeat_by_id_and_by_unique_key(client: httpx.AsyncClient) -> None:
    first = await enqueue(client, id="order-42", args=[1])
    again = await client.post("/api/jobs", json={"name": "bagbot.echo", "id": "order-42", "args": [2]})
    assert again.status_code == 200
    assert again.json() == first  # the existing job, unchanged

    held = await enqueue(client, unique_key="nightly-report")
    dup = await client.post("/api/jobs", json={"name": "bagbot.noop", "unique_key": "nightly-report"})
    assert dup.status_code == 200
    assert dup.json()["id"] == held["id"]
    assert dup.json()["name"] == "bagbot.echo"

    page = (await client.get("/api/jobs")).json()
    assert len(page["jobs"]) == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "no spaces allowed"}, "name"),
        ({"name": "trailing.newline\n"}, "name"),
        ({"name": "x", "queue": "bad queue"}, "queue"),
        ({"name": "x", "id": "bad/id"}, "id"),
        ({"name": "x", "args": {"not": "a list"}}, "args"),
        ({"name": "x", "kwargs": [1]}, "kwargs"),
        ({"name": "x", "priority": 5000}, "priority"),
        ({"name": "x", "max_attempts": 0}, "max_attempts"),
        ({"name": "x", "timeout": 0}, "timeout"),
        ({"name": "x", "delay": -1}, "delay"),
        ({"name": "x", "delay": 5, "run_at": "2030-01-01T00:00:00Z"}, "not both"),
        ({"name": "x", "run_at": "next tuesday"}, "run_at"),
        ({"name": "x", "unique_key": "tab\there"}, "unique_key"),
        ({"name": "x", "args": [2**70]}, "args"),
        ({"name": "x", "surprise": 1}, "surprise"),
    ],
)
async def test_enqueue_rejects_bad_input_with_422(
    client: httpx.AsyncClient, body: dict[str, Any], needle: str
) -> None:
    response = await client.post("/api/jobs", json=body)
    assert response.status_code == 422, response.text
    assert needle in response.text


async def test_enqueue_rejects_a_body_that_is_not_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


# -- reading ------------------------------------------------------------------------------------------


async def test_get_unknown_or_malformed_id(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/jobs/does-not-exist")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no job does-not-exist"}
    malformed = await client.get("/api/jobs/bad id!")
    assert malformed.status_code == 422
    assert "invalid job id" in malformed.json()["detail"]
    assert (await client.get("/api/jobs/x", params={"queue": "no way"})).status_code == 422


async def test_list_jobs_newest_first_with_filters_and_cursor(
    client: httpx.AsyncClient, store: JobStore
) -> None:
    ids = [(await enqueue(client, args=[i], queue="q1" if i % 2 else "q2"))["id"] for i in range(5)]
    await enqueue(client, name="bagbot.noop", queue="q1")
    failed_id = await fail_job(store, "q2")  # the oldest job of q2: ids[0]
    assert failed_id == ids[0]

    everything = (await client.get("/api/jobs", params={"name": "bagbot.echo"})).json()
    assert [j["id"] for j in everything["jobs"]] == ids[::-1]
    assert everything["cursor"] is None

    pages: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, "name": "bagbot.echo"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/jobs", params=params)).json()
        pages.extend(j["id"] for j in page["jobs"])
        cursor = page["cursor"]
        if cursor is None:
            break
    assert pages == ids[::-1]

    q1 = (await client.get("/api/jobs", params={"queue": "q1"})).json()["jobs"]
    assert {j["queue"] for j in q1} == {"q1"} and len(q1) == 3
    failed = (await client.get("/api/jobs", params={"state": "failed"})).json()["jobs"]
    assert [j["id"] for j in failed] == [failed_id]
    assert failed[0]["last_error"]["message"] == "boom"


@pytest.mark.parametrize(
    "params",
    [
        {"state": "exploded"},
        {"limit": 0},
        {"limit": 501},
        {"queue": "bad queue"},
        {"name": "bad name"},
        {"cursor": "not-a-cursor"},
    ],
)
async def test_list_jobs_rejects_bad_parameters(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    await enqueue(client)
    response = await client.get("/api/jobs", params=params)
    assert response.status_code == 422, response.text


async def test_queues_count_every_state(client: httpx.AsyncClient, store: JobStore) -> None:
    assert (await client.get("/api/queues")).json() == {"queues": []}
    await enqueue(client)
    await enqueue(client)
    await enqueue(client, queue="other", delay=600)
    await fail_job(store)
    body = (await client.get("/api/queues")).json()
    by_name = {q["name"]: q for q in body["queues"]}
    assert list(by_name) == ["default", "other"]
    assert by_name["default"]["counts"] == {
        "scheduled": 0,
        "enqueued": 1,
        "running": 0,
        "retry_scheduled": 0,
        "done": 0,
        "failed": 1,
        "cancelled": 0,
    }
    assert by_name["default"]["total"] == 2
    assert by_name["other"]["counts"]["scheduled"] == 1


async def test_workers_lists_live_workers_with_heartbeat_age(
    client: httpx.AsyncClient, store: JobStore
) -> None:
    assert (await client.get("/api/workers")).json() == {"workers": []}
    info = WorkerInfo(id="w-api-1", host="h1", pid=4242, queues=["default", "mail"], concurrency=3,
                      handlers=["bagbot.echo", "emails.send"])
    await store.register_worker(info)
    (worker,) = (await client.get("/api/workers")).json()["workers"]
    assert (worker["id"], worker["host"], worker["pid"], worker["queues"], worker["concurrency"]) == (
        "w-api-1",
        "h1",
        4242,
        ["default", "mail"],
        3,
    )
    assert worker["running"] == 0
    assert worker["handlers"] == ["bagbot.echo", "emails.send"]
    assert 0 <= worker["heartbeat_age"] < 60
    assert worker["started_at"] > 0 and worker["last_heartbeat"] > 0
    await store.deregister_worker("w-api-1")
    assert (await client.get("/api/workers")).json() == {"workers": []}


# -- cancel and retry ---------------------------------------------------------------------------------


async def test_cancel(client: httpx.AsyncClient, store: JobStore) -> None:
    job = await enqueue(client)
    response = await client.post(f"/api/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert response.json()["finished_at"] is not None

    again = await client.post(f"/api/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]

    await enqueue(client, queue="busy")
    (running,) = await store.claim("w", ["busy"], 1, 30)
    asked = await client.post(f"/api/jobs/{running.id}/cancel")  # running: a cancel request
    assert asked.status_code == 200 and asked.json()["state"] == "running"
    assert asked.json()["cancel_requested"] is True
    assert (await client.post("/api/jobs/nobody/cancel")).status_code == 404
    assert (await client.post("/api/jobs/bad id/cancel")).status_code == 422


async def test_retry_puts_a_failed_or_cancelled_job_back(client: httpx.AsyncClient, store: JobStore) -> None:
    await enqueue(client, max_attempts=1)
    failed_id = await fail_job(store)
    response = await client.post(f"/api/jobs/{failed_id}/retry")
    assert response.status_code == 200
    body = response.json()
    assert (body["state"], body["attempts"], body["finished_at"]) == ("enqueued", 0, None)
    assert body["last_error"]["message"] == "boom"  # kept, so one can see why it was retried

    again = await client.post(f"/api/jobs/{failed_id}/retry", params={"queue": "default"})
    assert again.status_code == 409
    assert "enqueued" in again.json()["detail"]

    cancelled = await enqueue(client)
    await client.post(f"/api/jobs/{cancelled['id']}/cancel")
    assert (await client.post(f"/api/jobs/{cancelled['id']}/retry")).json()["state"] == "enqueued"
    assert (await client.post("/api/jobs/nobody/retry")).status_code == 404


# -- auth and limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("app_store", ["memory"], indirect=True)
async def test_token_guards_every_mutating_endpoint(store: JobStore) -> None:
    async with client_for(store, api_token=TOKEN) as c:
        job = await store.enqueue(JobSpec("bagbot.noop"))
        calls = [
            ("/api/jobs", {"name": "bagbot.echo"}),
            (f"/api/jobs/{job.id}/cancel", None),
            (f"/api/jobs/{job.id}/retry", None),
        ]
        for path, body in calls:
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token-value"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": "Bearer "},
            ):
                response = await c.post(path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "token" in response.json()["detail"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await c.post("/api/jobs", json={"name": "bagbot.echo"}, headers=auth)).status_code == 201
        assert (await c.post(f"/api/jobs/{job.id}/cancel", headers=auth)).status_code == 200
        assert (await c.post(f"/api/jobs/{job.id}/retry", headers=auth)).status_code == 200
        # reads stay open
        for path in (
            "/api/jobs",
            f"/api/jobs/{job.id}",
            "/api/queues",
            "/api/workers",
            "/api/metrics",
            "/api/health",
            "/api/ready",
            "/",
        ):
            assert (await c.get(path)).status_code == 200, path


@pytest.mark.parametrize("app_store", ["memory"], indirect=True)
async def test_token_check_runs_before_body_validation(store: JobStore) -> None:
    async with client_for(store, api_token=TOKEN) as c:
        assert (await c.post("/api/jobs", json={"bogus": True})).status_code == 401


@pytest.mark.parametrize("app_store", ["memory"], indirect=True)
async def test_oversized_body_gets_413(store: JobStore) -> None:
    limit = 2048
    async with client_for(store, max_body_bytes=limit) as c:
        small = {"name": "bagbot.echo", "args": ["x" * (limit - 100)]}
        assert (await c.post("/api/jobs", json=small)).status_code == 201

        big = {"name": "bagbot.echo", "args": ["x" * limit]}
        declared = await c.post("/api/jobs", json=big)
        assert declared.status_code == 413
        assert f"{limit} bytes" in declared.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: only the streamed size tells
            yield b'{"name": "bagbot.echo", "args": ["'
            for _ in range(10):
                yield b"y" * 500
            yield b'"]}'

        streamed = await c.post("/api/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert len((await c.get("/api/jobs")).json()["jobs"]) == 1  # nothing else was stored


# -- store errors -------------------------------------------------------------------------------------


async def test_store_unavailable_gives_503_and_health_stays_200(prefix: str) -> None:
    dead = RedisJobStore.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    try:
        async with client_for(dead, job_store="redis") as c:
            assert (await c.get("/api/health")).status_code == 200
            ready = await c.get("/api/ready")
            assert ready.status_code == 503
            assert ready.json()["status"] == "unavailable"
            for method, path in [
                ("GET", "/api/queues"),
                ("GET", "/api/jobs"),
                ("GET", "/api/jobs/abc"),
                ("GET", "/api/workers"),
                ("GET", "/api/metrics"),
                ("POST", "/api/jobs/abc/cancel"),
                ("POST", "/api/jobs/abc/retry"),
            ]:
                response = await c.request(method, path)
                assert response.status_code == 503, (path, response.text)
                assert "unavailable" in response.json()["detail"]
                assert response.headers["retry-after"] == "5"
            enqueue_response = await c.post("/api/jobs", json={"name": "bagbot.echo"})
            assert enqueue_response.status_code == 503
    finally:
        await dead.close()


async def test_redis_out_of_memory_gives_507(prefix: str) -> None:
    try:
        server = RedisServer(extra_args=["--maxmemory", "1mb"]).start()
    except RuntimeError as exc:
        pytest.skip(f"no redis-server: {exc}")
    store = RedisJobStore.from_url(server.url, prefix=prefix)
    try:
        async with client_for(store, job_store="redis") as c:
            statuses: list[int] = []
            for i in range(300):
                response = await c.post("/api/jobs", json={"name": "bagbot.echo", "args": [str(i) * 20_000]})
                statuses.append(response.status_code)
                if response.status_code != 201:
                    break
            assert statuses[-1] == 507, statuses
            assert set(statuses[:-1]) <= {201}
            assert "out of memory" in response.json()["detail"]
            assert (await c.get("/api/health")).status_code == 200
    finally:
        await store.close()
        server.cleanup()


# -- lifespan: embedded worker, start-up checks, import without connecting ---------------------------


async def test_memory_backend_runs_jobs_in_an_embedded_worker() -> None:
    app = create_app(Settings(job_store="memory", heartbeat_seconds=0.5, lease_seconds=5))
    assert app.state.store is None  # nothing opened before the lifespan
    async with app.router.lifespan_context(app):
        assert app.state.embedded_worker is not None
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as c:
            job = (await c.post("/api/jobs", json={"name": "bagbot.echo", "args": [7, "x"]})).json()
            for _ in range(200):
                body = (await c.get(f"/api/jobs/{job['id']}")).json()
                if body["state"] == "done":
                    break
                await asyncio.sleep(0.05)
            assert body["state"] == "done"
            assert body["result"] == [7, "x"]
            workers = (await c.get("/api/workers")).json()["workers"]
            assert len(workers) == 1
    assert app.state.embedded_worker is None
    assert app.state.store is None  # the app made it, the app closed it


@pytest.fixture
def lru_redis() -> Iterator[RedisServer]:
    try:
        server = RedisServer(extra_args=["--maxmemory-policy", "allkeys-lru"]).start()
    except RuntimeError as exc:
        pytest.skip(f"no redis-server: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


async def test_startup_warns_unless_noeviction_and_ready_reports_it(
    lru_redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(job_store="redis", redis_url=lru_redis.url, prefix=prefix))
    with caplog.at_level(logging.WARNING, logger="bagbot.api"):
        async with app.router.lifespan_context(app):
            assert app.state.embedded_worker is None  # with Redis, workers are separate processes
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                ready = await c.get("/api/ready")
    assert ready.status_code == 200
    assert ready.json()["maxmemory_policy"] == "allkeys-lru"
    assert ready.json()["policy_ok"] is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "bagbot.api"]
    assert any("allkeys-lru" in r.getMessage() and "noeviction" in r.getMessage() for r in warnings)


async def test_startup_with_redis_down_still_serves_and_ready_says_503(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(
        Settings(job_store="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    )
    with caplog.at_level(logging.ERROR, logger="bagbot.api"):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        async with app.router.lifespan_context(app), client as c:
            assert (await c.get("/api/health")).status_code == 200
            assert (await c.get("/api/ready")).status_code == 503
    assert any("not answering" in r.getMessage() for r in caplog.records)


def test_importing_the_app_module_connects_nowhere() -> None:
    """`backend.api.app:app` is built at import: with Redis configured but absent, import must still work."""
    import subprocess
    import sys

    code = (
        "import backend.api.app as m; "
        "assert m.app.state.store is None; "
        "assert m.app.state.settings.job_store == 'redis'; print('ok')"
    )
    env = {"JOB_STORE": "redis", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- pages and schema ----------------------------------------------------------------------------------


async def test_dashboard_and_docs_are_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert ".innerHTML" not in page.text  # API data goes in as text only
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for marker in ('id="queues"', 'id="workers"', 'id="jobs"', 'id="failures"', 'id="token"', "/api/jobs"):
        assert marker in page.text
    assert (await client.get("/docs")).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/cancel",
        "/api/jobs/{job_id}/retry",
        "/api/queues",
        "/api/workers",
        "/api/metrics",
        "/api/health",
        "/api/ready",
    ):
        assert path in paths, path
    assert "201" in paths["/api/jobs"]["post"]["responses"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_a_job_posted_without_max_attempts_shows_its_handlers(
    client: httpx.AsyncClient, store: JobStore
) -> None:
    """The API does not import the handler: the workers' advertised policy decides, and a job that
    says otherwise keeps its own."""
    await store.advertise_handlers(["default"], [HandlerPolicy("emails.send", 5)])
    unset = await enqueue(client, name="emails.send")
    own = await enqueue(client, name="emails.send", max_attempts=2)
    other = await enqueue(client, name="reports.build")
    assert (unset["max_attempts"], own["max_attempts"], other["max_attempts"]) == (5, 2, 3)
    shown = (await client.get(f"/api/jobs/{unset['id']}")).json()
    assert shown["max_attempts"] == 5
    refused = await client.post("/api/jobs", json={"name": "emails.send", "max_attempts": 0})
    assert refused.status_code == 422
