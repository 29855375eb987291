"""Dependencies, batches and chains at the edges: the HTTP API, the typed client and the CLI.

The jobs are driven through the store's own transitions (claim, complete, fail), so each test
shows what the edge reports at each step without waiting on a worker.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from backend.client.client import Client
from backend.client.tasks import task
from backend.client.workflows import Call
from backend.workers.bulk import BulkFilter
from backend.workers.handlers import HandlerRegistry
from backend.workers.job_store import JobStore
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import InvalidJobError
from tests.test_store_contract import BOOM, claim_of

ROOT = Path(__file__).resolve().parent.parent
registry = HandlerRegistry()


@task("wf.add", registry=registry)
async def add(x: int, y: int) -> int:
    return x + y


@task("wf.total", registry=registry)
async def total() -> int:
    return 0


async def finish_next(store: JobStore, ok: bool = True, result: object = None) -> str:
    (job,) = await store.claim("w1", ["default"], 1, 30.0)
    if ok:
        await store.complete(claim_of(job), result)
    else:
        await store.fail(claim_of(job), BOOM, retryable=False)
    return job.id


async def test_api_enqueue_with_depends_on(mem_client: httpx.AsyncClient, mem: MemoryJobStore) -> None:
    parent = (await mem_client.post("/api/jobs", json={"name": "bagbot.noop"})).json()
    reply = await mem_client.post("/api/jobs", json={"name": "bagbot.echo", "depends_on": [parent["id"]]})
    assert reply.status_code == 201, reply.text
    child = reply.json()
    assert child["state"] == "deferred" and child["depends_on"] == [parent["id"]]
    queues = (await mem_client.get("/api/queues")).json()["queues"]
    assert queues[0]["counts"]["deferred"] == 1
    assert 'bagbot_jobs{queue="default",state="deferred"} 1.0' in (await mem_client.get("/api/metrics")).text
    deferred = (await mem_client.get("/api/jobs?state=deferred")).json()["jobs"]
    assert [j["id"] for j in deferred] == [child["id"]]
    await finish_next(mem)
    child = (await mem_client.get(f"/api/jobs/{child['id']}")).json()
    assert child["state"] == "enqueued" and child["parent_states"] == {parent["id"]: "done"}


@pytest.mark.parametrize("parents", [["nosuchjob"], ["bad id"], ["x"] * 10_001])
async def test_api_refuses_unknown_or_invalid_parents_with_422(
    mem_client: httpx.AsyncClient, parents: list[str]
) -> None:
    reply = await mem_client.post("/api/jobs", json={"name": "bagbot.noop", "depends_on": parents})
    assert reply.status_code == 422, reply.text


async def test_api_refuses_a_parent_of_another_queue(mem_client: httpx.AsyncClient) -> None:
    other = (await mem_client.post("/api/jobs", json={"name": "bagbot.noop", "queue": "q2"})).json()
    reply = await mem_client.post("/api/jobs", json={"name": "bagbot.noop", "depends_on": [other["id"]]})
    assert reply.status_code == 422 and "its own queue" in reply.json()["detail"]


async def test_api_batch_and_its_status(mem_client: httpx.AsyncClient, mem: MemoryJobStore) -> None:
    body = {"id": "b1", "jobs": [{"name": "bagbot.echo", "args": [i]} for i in range(3)],
            "callback": {"name": "bagbot.echo", "args": ["all ended"]}}
    reply = await mem_client.post("/api/batches", json=body)
    assert reply.status_code == 201, reply.text
    batch = reply.json()
    assert batch["jobs"] == ["b1-0", "b1-1", "b1-2"] and batch["pending"] == 3 and not batch["finished"]
    repeat = (await mem_client.post("/api/batches", json=body)).json()  # a repeat: no-op
    assert repeat["jobs"] == batch["jobs"]
    await finish_next(mem, result=0)
    await finish_next(mem, ok=False)
    status = (await mem_client.get("/api/batches/b1")).json()
    assert (status["done"], status["failed"], status["pending"]) == (1, 1, 1)
    assert status["callback_state"] == "deferred"
    await finish_next(mem, result=2)
    status = (await mem_client.get("/api/batches/b1?queue=default")).json()
    assert status["finished"] and status["callback_state"] == "enqueued"
    assert status["results"] == {"b1-0": 0, "b1-2": 2}
    assert await finish_next(mem) == "b1"  # the callback runs
    assert (await mem_client.get("/api/batches/nosuch")).status_code == 404
    mixed = {"jobs": [{"name": "bagbot.noop"}, {"name": "bagbot.noop", "queue": "q2"}]}
    assert (await mem_client.post("/api/batches", json=mixed)).status_code == 422
    assert (await mem_client.post("/api/batches", json={"jobs": []})).status_code == 422


@pytest.fixture
async def client(redis_store: RedisJobStore) -> AsyncIterator[Client]:
    async with Client(redis_store, owns_store=False) as c:
        yield c


async def test_client_depends_on_handles_batch_and_chain(client: Client, redis_store: RedisJobStore) -> None:
    first = await client.enqueue(add, 1, 2)
    second = await client.enqueue(add.with_options(depends_on=[first]), 3, 4)
    assert await second.status() is JobState.DEFERRED
    with pytest.raises(InvalidJobError, match="its own queue"):
        await client.enqueue(add.with_options(queue="other", depends_on=[first]), 1, 1)
    await finish_next(redis_store, result=3)
    assert await second.status() is JobState.ENQUEUED
    await finish_next(redis_store, result=7)

    batch = await client.batch([add.call(1, 1), add.call(2, 2)], callback=total.call())
    await finish_next(redis_store, result=2)
    await finish_next(redis_store, result=4)
    status = await batch.wait(timeout=10)
    assert (status.total, status.done, status.callback_state) == (2, 2, JobState.ENQUEUED)
    assert sorted((await batch.results()).values()) == [2, 4]
    assert [h.id for h in await client.batch_of(batch.id).jobs()] == batch.job_ids
    await finish_next(redis_store)

    last = await client.chain(add.call(1, 1), add.call(2, 2), total.call())
    assert await last.status() is JobState.DEFERRED
    await finish_next(redis_store, result=2)
    await finish_next(redis_store, ok=False)  # the middle link fails: the rest is cancelled
    assert await last.status() is JobState.CANCELLED
    untyped = await client.chain(Call.of("bagbot.noop"), Call.of("bagbot.noop"))
    assert await untyped.status() is JobState.DEFERRED
    await redis_store.cancel_many(BulkFilter())  # leave nothing live behind (its dependant goes too)
    assert (await redis_store.counts())["default"]["deferred"] == 0
    await redis_store.purge(-1.0)


def test_cli_enqueue_depends_on(redis_url: str, prefix: str, delete_prefix_after: None) -> None:
    env = {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix, "PATH": "/usr/bin:/bin"}

    def bagbot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    parent = bagbot("enqueue", "bagbot.noop", "--id", "p1")
    assert parent.returncode == 0, parent.stderr
    child = bagbot("enqueue", "bagbot.noop", "--depends-on", "p1", "--run-on-failure")
    assert child.returncode == 0, child.stderr
    assert "deferred" in child.stdout
    missing = bagbot("enqueue", "bagbot.noop", "--depends-on", "nosuch")
    assert missing.returncode != 0 and "no job nosuch" in missing.stderr
