"""The bulk and pause endpoints through httpx against the ASGI app, on the memory store and a real
Redis: what they move, the 401 without a token, the 422 for a filter that makes no sense.

POST /api/jobs/retry|cancel|purge and POST /api/queues/{queue}/pause|resume; GET /api/queues and
/api/metrics show the pause.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from backend.api.app import create_app
from backend.config import Settings
from backend.workers.job_store import JobStore
from backend.workers.models import JobSpec, JobState
from tests.test_api import client_for, fail_job

TOKEN = "bulk-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MUTATIONS = [
    ("/api/jobs/retry", {"state": "failed"}),
    ("/api/jobs/cancel", {"queue": "default"}),
    ("/api/jobs/purge", {"older_than": 0}),
    ("/api/queues/default/pause", None),
    ("/api/queues/default/resume", None),
]


@pytest.fixture
async def client(app_store: JobStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app_store, api_token=TOKEN) as c:
        yield c


async def post(client: httpx.AsyncClient, path: str, body: Any = None) -> httpx.Response:
    return await client.post(path, json=body, headers=AUTH)


async def failed_ids(store: JobStore, n: int, queue: str = "default") -> list[str]:
    ids = []
    for _ in range(n):
        await store.enqueue(JobSpec("t.job", queue=queue))
        ids.append(await fail_job(store, queue))
    return ids


@pytest.mark.parametrize(("path", "body"), MUTATIONS)
async def test_every_bulk_and_pause_call_needs_the_token(
    client: httpx.AsyncClient, app_store: JobStore, path: str, body: Any
) -> None:
    (job_id,) = await failed_ids(app_store, 1)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + TOKEN}):
        response = await client.post(path, json=body, headers=headers)
        assert response.status_code == 401, response.text
        bad = await client.post(path, json={"state": "nope", "limit": -1}, headers=headers)
        assert bad.status_code == 401  # the token first: nothing learnt about the body
    assert await app_store.paused_queues() == set()
    job = await app_store.get(job_id)
    assert job is not None and job.state is JobState.FAILED


async def test_bulk_retry_moves_the_matching_jobs_and_pages_with_more(
    client: httpx.AsyncClient, app_store: JobStore
) -> None:
    ids = await failed_ids(app_store, 3)
    (other,) = await failed_ids(app_store, 1, queue="other")
    first = await post(client, "/api/jobs/retry", {"state": "failed", "queue": "default", "limit": 2})
    assert first.status_code == 200 and first.json() == {"matched": 2, "moved": 2, "more": True}
    second = await post(client, "/api/jobs/retry", {"state": "failed", "queue": "default", "limit": 2})
    assert second.json() == {"matched": 1, "moved": 1, "more": False}
    for job_id in ids:
        job = await app_store.get(job_id)
        assert job is not None and job.state is JobState.ENQUEUED and job.attempts == 0
    still = await app_store.get(other)
    assert still is not None and still.state is JobState.FAILED


async def test_bulk_by_ids_counts_what_matched_and_what_moved(
    client: httpx.AsyncClient, app_store: JobStore
) -> None:
    (failed,) = await failed_ids(app_store, 1)
    live = await app_store.enqueue(JobSpec("t.job"))
    response = await post(client, "/api/jobs/retry", {"ids": [failed, live.id, "unknown-id"]})
    assert response.json() == {"matched": 2, "moved": 1, "more": False}
    response = await post(client, "/api/jobs/cancel", {"ids": [failed, live.id]})
    assert response.json() == {"matched": 2, "moved": 2, "more": False}


async def test_an_empty_body_or_none_takes_the_actions_default_states(
    client: httpx.AsyncClient, app_store: JobStore
) -> None:
    await failed_ids(app_store, 2)
    assert (await client.post("/api/jobs/retry", headers=AUTH)).json() == {"matched": 2, "moved": 2,
                                                                          "more": False}
    assert (await post(client, "/api/jobs/cancel", {})).json() == {"matched": 2, "moved": 2, "more": False}


async def test_purge_over_http_deletes_finished_jobs_only(
    client: httpx.AsyncClient, app_store: JobStore
) -> None:
    ids = await failed_ids(app_store, 2)
    live = await app_store.enqueue(JobSpec("t.job"))
    assert (await post(client, "/api/jobs/purge", {"older_than": 3600})).json() == {"purged": 0}
    assert (await post(client, "/api/jobs/purge", {"state": "done"})).json() == {"purged": 0}
    assert (await post(client, "/api/jobs/purge", {"state": "failed", "queue": "x"})).json() == {"purged": 0}
    assert (await post(client, "/api/jobs/purge", {"state": "failed"})).json() == {"purged": 2}
    assert all([await app_store.get(job_id) is None for job_id in ids])
    assert await app_store.get(live.id) is not None


async def test_pause_and_resume_show_in_queues_and_metrics(
    client: httpx.AsyncClient, app_store: JobStore
) -> None:
    await app_store.enqueue(JobSpec("t.job", queue="mail"))
    response = await post(client, "/api/queues/mail/pause")
    assert response.status_code == 200 and response.json() == {"queue": "mail", "paused": True}
    queues = {q["name"]: q for q in (await client.get("/api/queues")).json()["queues"]}
    assert queues["mail"]["paused"] is True and queues["mail"]["counts"]["enqueued"] == 1
    metrics = (await client.get("/api/metrics")).text
    assert 'bagbot_queue_paused{queue="mail"} 1.0' in metrics
    assert "bagbot_job_enqueue_total" in metrics  # the staging guide's metrics are untouched
    assert await app_store.claim("w", ["mail"], 5, 30) == []

    response = await post(client, "/api/queues/mail/resume")
    assert response.json() == {"queue": "mail", "paused": False}
    queues = {q["name"]: q for q in (await client.get("/api/queues")).json()["queues"]}
    assert queues["mail"]["paused"] is False
    assert 'bagbot_queue_paused{queue="mail"} 0.0' in (await client.get("/api/metrics")).text
    assert len(await app_store.claim("w", ["mail"], 5, 30)) == 1


@pytest.mark.parametrize(("path", "body", "says"), [
    ("/api/jobs/retry", {"state": "nope"}, "state"),
    ("/api/jobs/retry", {"state": "running"}, "cannot retry jobs that are running"),
    ("/api/jobs/retry", {"state": "enqueued"}, "retry takes failed, cancelled"),
    ("/api/jobs/cancel", {"state": "failed"}, "cannot cancel jobs that are failed"),
    ("/api/jobs/cancel", {"state": "done"}, "cancel takes"),
    ("/api/jobs/retry", {"ids": ["bad id"]}, "ids"),
    ("/api/jobs/retry", {"ids": "abc"}, "ids"),
    ("/api/jobs/retry", {"ids": [1]}, "ids"),
    ("/api/jobs/retry", {"ids": [f"j{i}" for i in range(1001)]}, "ids"),
    ("/api/jobs/retry", {"queue": "a{b}"}, "queue"),
    ("/api/jobs/retry", {"name": ""}, "name"),
    ("/api/jobs/retry", {"limit": 0}, "limit"),
    ("/api/jobs/retry", {"limit": 1001}, "limit"),
    ("/api/jobs/retry", {"limit": 1.5}, "limit"),
    ("/api/jobs/retry", {"limit": "many"}, "limit"),
    ("/api/jobs/cancel", {"states": ["enqueued"]}, "states"),
    ("/api/jobs/retry", [], "body"),
    ("/api/jobs/purge", {"state": "running"}, "finished jobs only"),
    ("/api/jobs/purge", {"state": "enqueued"}, "finished jobs only"),
    ("/api/jobs/purge", {"older_than": -1}, "older_than"),
    ("/api/jobs/purge", {"older_than": 1e300}, "older_than"),
    ("/api/jobs/purge", {"queue": "../x"}, "queue"),
    ("/api/jobs/purge", {"before": 1}, "before"),
])
async def test_bad_filters_are_a_422_that_says_what_is_wrong(
    client: httpx.AsyncClient, app_store: JobStore, path: str, body: Any, says: str
) -> None:
    (job_id,) = await failed_ids(app_store, 1)
    response = await post(client, path, body)
    assert response.status_code == 422, response.text
    assert says in response.text
    job = await app_store.get(job_id)
    assert job is not None and job.state is JobState.FAILED


@pytest.mark.parametrize("queue", ["a%7Bb%7D", "a%20b", "x" * 65, "%00", "q%0A", "%F0%9F%98%80"])
@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_a_bad_queue_name_in_the_path_is_a_422(
    client: httpx.AsyncClient, app_store: JobStore, queue: str, action: str
) -> None:
    response = await client.post(f"/api/queues/{queue}/{action}", headers=AUTH)
    assert response.status_code == 422, response.text
    assert await app_store.queues() == []


async def test_the_memory_backends_embedded_worker_honours_the_pause() -> None:
    app = create_app(Settings(job_store="memory", queues=("default", "other"), heartbeat_seconds=30,
                              lease_seconds=60, api_token=TOKEN))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test"
    ) as c:
        assert (await post(c, "/api/queues/default/pause")).json()["paused"] is True
        held = (await post(c, "/api/jobs", {"name": "bagbot.noop"})).json()
        ran = (await post(c, "/api/jobs", {"name": "bagbot.noop", "queue": "other"})).json()

        async def state(job_id: str) -> str:
            return str((await c.get(f"/api/jobs/{job_id}")).json()["state"])

        for _ in range(400):
            if await state(ran["id"]) == "done":
                break
            await asyncio.sleep(0.05)
        assert await state(ran["id"]) == "done"
        for _ in range(20):  # a second in which the paused job may not start
            assert await state(held["id"]) == "enqueued"
            await asyncio.sleep(0.05)
        await post(c, "/api/queues/default/resume")
        for _ in range(60):  # well under the 5 s idle wait: woken by the resume
            if await state(held["id"]) == "done":
                break
            await asyncio.sleep(0.05)
        assert await state(held["id"]) == "done"
