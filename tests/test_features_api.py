"""The API and CLI side of the issue-9 features: schedules listing, limit/events fields,
progress and cancel requests in the job JSON, and `bagbot enqueue --wait` / `bagbot schedules`
against a real Redis and a real worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.cli import _progress_text
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Claim, JobSpec, JobState, ScheduleInfo
from backend.workers.redis_job_store import RedisJobStore
from tests.feature_workers import Spawner, wait_state

ROOT = Path(__file__).resolve().parent.parent


async def test_schedules_are_listed_with_their_next_fire(
    mem_client: httpx.AsyncClient, mem: MemoryJobStore
) -> None:
    assert (await mem_client.get("/api/schedules")).json() == {"schedules": []}
    await mem.register_schedules([ScheduleInfo("tick", "t.tick", "default", "every 60s"),
                                  ScheduleInfo("daily", "t.daily", "reports", "0 6 * * *", "Europe/Berlin")])
    before = time.time()
    listed = (await mem_client.get("/api/schedules")).json()["schedules"]
    assert [(s["name"], s["expression"], s["timezone"]) for s in listed] == [
        ("daily", "0 6 * * *", "Europe/Berlin"), ("tick", "every 60s", "UTC")]
    daily, tick = listed
    assert before < tick["next_fire"] <= before + 61 and tick["next_fire"] % 60 == 0
    assert before < daily["next_fire"] <= before + 86400 + 3600


async def test_limit_events_progress_and_cancel_requests_in_the_job_json(
    mem_client: httpx.AsyncClient, mem: MemoryJobStore
) -> None:
    created = await mem_client.post("/api/jobs", json={"name": "t.job", "limit_key": "cust-1", "limit": 2,
                                                   "events": True})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["limit_key"], body["limit"], body["events"]) == ("cust-1", 2, True)
    assert body["progress"] is None and body["cancel_requested"] is False
    for bad in ({"limit_key": "k"}, {"limit": 2}, {"limit_key": "k", "limit": 0}):
        assert (await mem_client.post("/api/jobs", json={"name": "t.job", **bad})).status_code == 422
    (running,) = await mem.claim("w", ["default"], 1, 30)
    assert await mem.progress(Claim(running.queue, running.id, running.token or ""), 0.4, "four tenths")
    shown = (await mem_client.get(f"/api/jobs/{running.id}")).json()
    assert (shown["progress"], shown["progress_message"]) == (0.4, "four tenths")
    asked = (await mem_client.post(f"/api/jobs/{running.id}/cancel")).json()
    assert asked["state"] == "running" and asked["cancel_requested"] is True


def test_progress_text() -> None:
    assert _progress_text({"progress": None}) == ""
    assert _progress_text({"progress": 0.456, "progress_message": "step 3"}) == "46% step 3  "
    assert _progress_text({"progress": 12, "progress_message": ""}) == "12  "


# -- the real CLI against a real Redis and worker -------------------------------------------------


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


@pytest.fixture
def worker_tasks() -> str:
    return "tests.tasks_features,tests.tasks_periodic"


def bagbot(redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAGBOT_", "JOB_STORE", "REDIS_URL"))}
    env.update(JOB_STORE="redis", REDIS_URL=redis_url, BAGBOT_PREFIX=prefix, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.mark.redis_only
async def test_cli_wait_follows_progress_and_lists_schedules(
    store: RedisJobStore, spawner: Spawner, redis_url: str, prefix: str
) -> None:
    await spawner.start(1)
    done = as_json(bagbot(redis_url, prefix, "enqueue", "features.progress_async", "20", "0.05", "--wait",
                          "--json"))
    assert done["state"] == "done" and done["result"] == 20
    assert done["progress"] == pytest.approx(1.0, abs=0.5)
    assert done["events"] is True  # --wait asks for events and follows them
    job = await store.get(done["id"])
    assert job is not None and job.events and job.state is JobState.DONE
    listed = as_json(bagbot(redis_url, prefix, "schedules", "--json"))
    assert [(s["name"], s["handler"], s["expression"]) for s in listed] == [
        ("tick", "periodic.tick", "every 1s")]
    assert listed[0]["next_fire"] > time.time() - 5
    table = bagbot(redis_url, prefix, "schedules")
    assert table.returncode == 0 and "every 1s" in table.stdout
    # cancel of a running job through the CLI: a request, then cancelled
    await store.enqueue(JobSpec("features.long_async", args=[60], id="cli-long"))
    await wait_state(store, "cli-long", JobState.RUNNING)
    asked = bagbot(redis_url, prefix, "jobs", "cancel", "cli-long")
    assert asked.returncode == 0 and "cancel requested" in asked.stdout
    await wait_state(store, "cli-long", JobState.CANCELLED, timeout=20)


async def test_job_events_stream_as_server_sent_events(
    mem_client: httpx.AsyncClient, mem: MemoryJobStore
) -> None:
    import asyncio

    async def produce() -> None:
        await asyncio.sleep(0.3)
        await mem.enqueue(JobSpec("t.job", id="quiet"))
        job = await mem.enqueue(JobSpec("t.job", id="loud", events=True))
        claimed = await mem.claim("w", ["default"], 3, 30)
        for running in claimed:
            await mem.complete(Claim(running.queue, running.id, running.token or ""))
        assert job.events

    await mem.enqueue(JobSpec("t.job", id="first"))  # the queue exists before the stream starts
    producer = asyncio.create_task(produce())
    response = await mem_client.get("/api/events", params={"max_seconds": 1.5})
    await producer
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    lines = response.text.splitlines()
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert {"id": "loud", "event": "running"} in data and {"id": "loud", "event": "done"} in data
    assert all(item["id"] == "loud" for item in data)
    assert (await mem_client.get("/api/events", params={"queue": "bad queue!"})).status_code == 422
