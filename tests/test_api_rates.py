"""Rate limits through the HTTP API (httpx against the ASGI app, memory store and a real Redis):
PUT/DELETE /api/queues/{queue}/rate need the token, GET /api/queues shows the rate, a job's
rate_key/rate round-trip, and hostile values (bad strings, NaN, Infinity, negatives, wrong types)
are a 422, never a 500 and never stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from backend.workers.job_store import JobStore
from tests.test_api import client_for

TOKEN = "rate-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
HOSTILE = ['"NaN"', "NaN", "Infinity", "-Infinity", "1e400", "-1", "0", "100", "1.5", "true", "null",
           '"-1/s"', '"0/s"', '"1/0s"', '"nan/s"', '"inf/s"', '"1e3/s"', '"100/y"', '"100/s/s"', '""',
           '"100/-1s"', '"99999999999/s"', '"2000000/s"', '"' + "9" * 5000 + '/s"', '["100/s"]',
           '{"rate": "1/s"}', '"100/s\\u0000"', '"\\ud800/s"']


@pytest.fixture
async def client(app_store: JobStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app_store, api_token=TOKEN) as c:
        yield c


async def test_set_show_and_clear_a_queue_rate(client: httpx.AsyncClient, app_store: JobStore) -> None:
    response = await client.put("/api/queues/mail/rate", json={"rate": " 100/S "}, headers=AUTH)
    assert response.status_code == 200 and response.json() == {"queue": "mail", "rate": "100/s"}
    assert await app_store.queue_rates() == {"mail": "100/s"}
    queues = {q["name"]: q for q in (await client.get("/api/queues")).json()["queues"]}
    assert queues["mail"]["rate"] == "100/s"
    response = await client.delete("/api/queues/mail/rate", headers=AUTH)
    assert response.status_code == 200 and response.json() == {"queue": "mail", "rate": None}
    assert await app_store.queue_rates() == {}
    queues = {q["name"]: q for q in (await client.get("/api/queues")).json()["queues"]}
    assert queues.get("mail", {}).get("rate") is None


async def test_rate_calls_need_the_token(client: httpx.AsyncClient, app_store: JobStore) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        put = await client.put("/api/queues/q/rate", json={"rate": "1/s"}, headers=headers)
        assert put.status_code == 401
        assert (await client.delete("/api/queues/q/rate", headers=headers)).status_code == 401
    assert await app_store.queue_rates() == {}


@pytest.mark.parametrize("raw", HOSTILE)
async def test_hostile_queue_rates_are_422(client: httpx.AsyncClient, app_store: JobStore, raw: str) -> None:
    response = await client.put("/api/queues/q/rate", content='{"rate": ' + raw + "}", headers=AUTH)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()
    assert await app_store.queue_rates() == {}


@pytest.mark.parametrize("raw", HOSTILE)
async def test_hostile_job_rates_are_422(client: httpx.AsyncClient, app_store: JobStore, raw: str) -> None:
    body = '{"name": "bagbot.noop", "rate_key": "k", "rate": ' + raw + "}"
    response = await client.post("/api/jobs", content=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert sum((await app_store.counts()).get("default", {}).values()) == 0


@pytest.mark.parametrize("body", [
    '{"name": "bagbot.noop", "rate": "1/s"}', '{"name": "bagbot.noop", "rate_key": "k"}',
    '{"name": "bagbot.noop", "rate_key": "", "rate": "1/s"}',
    '{"name": "bagbot.noop", "rate_key": "a\\u0001b", "rate": "1/s"}',
    '{"name": "bagbot.noop", "rate_key": "' + "k" * 201 + '", "rate": "1/s"}',
])
async def test_rate_key_and_rate_go_together_and_are_text(client: httpx.AsyncClient, body: str) -> None:
    response = await client.post("/api/jobs", content=body, headers=AUTH)
    assert response.status_code == 422, response.text


async def test_a_jobs_rate_round_trips(client: httpx.AsyncClient) -> None:
    body = {"name": "bagbot.noop", "rate_key": "customer-42", "rate": "10/30s"}
    response = await client.post("/api/jobs", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["rate_key"] == "customer-42" and job["rate"] == "10/30s"
    again = (await client.get(f"/api/jobs/{job['id']}")).json()
    assert again["rate_key"] == "customer-42" and again["rate"] == "10/30s"
