"""Chaos: a backend, three workers and an AOF Redis, with a worker SIGKILLed every 2 s and Redis
killed and restarted once, while 2,000 jobs of mixed handlers go through.

What must hold at the end (DESIGN §4): every accepted job is terminal and none is lost; the jobs
meant to succeed are `done` and the doomed ones `failed`; no attempt of a job ran twice (claims are
exclusive: each start carries a distinct attempt number); a job never ran more often than it was
claimed; and the counters the backend's /api/metrics shows agree with the job records exactly.

Sized for CI on two cores: about 1.5-3 minutes. Run with `pytest -s` to see the figures.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.workers.models import Job, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.api_server import BackendProcess
from tests.redis_server import RedisServer, start_server
from tests.worker_procs import WorkerProcess, eventually, read_records, worker_env

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]

PREFIX = "bbchaos"
TOTAL = 2000
BATCH = 40  # jobs enqueued per second: the enqueue phase lasts TOTAL / BATCH seconds
KILL_EVERY = 2.0
WORKERS = 3
DOOMED_MAX_ATTEMPTS = 2
MAX_ATTEMPTS = 10  # far more than the kills a short job can meet: every job but the doomed must end done


def job_body(i: int, rng: random.Random) -> dict[str, Any]:
    """A mix of handlers: sleeps, sync CPU work, fail-then-succeed (recorded and built-in), doomed."""
    kind = i % 10
    body: dict[str, Any] = {"id": f"chaos-{i:05d}", "max_attempts": MAX_ATTEMPTS}
    if kind < 4:
        body.update(name="tests.record", kwargs={"sleep": round(rng.uniform(0.05, 0.8), 3)})
    elif kind < 6:
        body.update(name="tests.cpu", kwargs={"n": 30_000})
    elif kind < 8:
        body.update(name="tests.flaky", kwargs={"times": 1 + kind % 2})
    elif kind == 8:
        body.update(name="bagbot.fail", kwargs={"times": 1})
    else:
        body.update(name="tests.flaky", kwargs={"times": 1000}, max_attempts=DOOMED_MAX_ATTEMPTS)
    if i % 7 == 0:
        body["unique_key"] = f"chaos-key-{i}"
    return body


def ideal_starts(body: dict[str, Any]) -> int:
    """How many handler runs the job needs without any fault."""
    if body["name"] == "tests.flaky":
        return min(int(body["kwargs"]["times"]) + 1, int(body["max_attempts"]))
    return 1


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    server = start_server("--appendonly", "yes", "--appendfsync", "always")
    yield server
    server.cleanup()


class Chaos:
    """The worker fleet: keeps WORKERS alive, SIGKILLs a random one every KILL_EVERY seconds."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.alive: list[WorkerProcess] = []
        self.all: list[WorkerProcess] = []
        self.kills = 0
        self.redis_restarts = 0
        self.rng = random.Random(7)

    def spawn(self) -> WorkerProcess:
        proc = WorkerProcess(self.tmp, f"worker{len(self.all)}", self.env)
        self.alive.append(proc)
        self.all.append(proc)
        return proc

    def kill_one(self) -> None:
        victim = self.alive.pop(self.rng.randrange(len(self.alive)))
        victim.send(signal.SIGKILL)
        self.kills += 1
        self.spawn()

    def stop_all(self) -> None:
        for proc in self.all:
            proc.stop()


async def enqueue_all(client: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> Counter[int]:
    """POST every job, BATCH per second. A failed call (503 while Redis restarts, a cut connection)
    is simply sent again with the same id: the store makes the repeat a no-op."""
    statuses: Counter[int] = Counter()

    async def post(body: dict[str, Any]) -> None:
        for _ in range(200):
            try:
                response = await client.post("/api/jobs", json=body)
            except httpx.TransportError:
                statuses[0] += 1
                await asyncio.sleep(0.2)
                continue
            statuses[response.status_code] += 1
            if response.status_code in (200, 201):
                assert response.json()["id"] == body["id"], response.text
                return
            assert response.status_code == 503, response.text
            await asyncio.sleep(0.2)
        raise AssertionError(f"could not enqueue {body['id']}")

    for start in range(0, len(bodies), BATCH):
        tick = time.monotonic()
        await asyncio.gather(*(post(body) for body in bodies[start : start + BATCH]))
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    return statuses


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric_name: str, /, **labels: str
) -> float:
    return samples.get((metric_name, frozenset(labels.items())), 0.0)


async def all_jobs(store: RedisJobStore) -> dict[str, Job]:
    jobs: dict[str, Job] = {}
    for state in (JobState.DONE, JobState.FAILED):
        cursor = None
        while True:
            page = await store.list_jobs(state=state, limit=1000, cursor=cursor)
            jobs.update({job.id: job for job in page.jobs})
            if (cursor := page.cursor) is None:
                break
    return jobs


def check_jobs(bodies: list[dict[str, Any]], jobs: dict[str, Job]) -> None:
    """Every job is there, terminal, and the right ones are done."""
    assert sorted(jobs) == [body["id"] for body in bodies], "a job was lost or duplicated"
    for body in bodies:
        job = jobs[body["id"]]
        doomed = body["max_attempts"] == DOOMED_MAX_ATTEMPTS
        assert job.state is (JobState.FAILED if doomed else JobState.DONE), (body, job)
        assert job.attempts <= int(body["max_attempts"])
        if body["name"] == "tests.flaky" and not doomed:
            assert job.result == job.attempts  # it succeeded on the attempt it was told to


def check_executions(bodies: list[dict[str, Any]], jobs: dict[str, Job], record: Path) -> tuple[int, int]:
    """Each attempt ran at most once (exclusive claims), never more runs than claims.
    Returns (executions, extra executions beyond what the jobs needed without faults)."""
    starts: dict[str, list[int]] = defaultdict(list)
    for ex in read_records(record):
        if ex.event == "start":
            starts[ex.job_id].append(ex.attempt)
    for job_id, attempts in starts.items():
        assert len(attempts) == len(set(attempts)), f"{job_id}: an attempt ran twice {attempts}"
        assert len(attempts) <= jobs[job_id].attempts
    recorded = [body for body in bodies if body["name"] != "bagbot.fail"]
    # a done job ran at least once (a doomed one may, rarely, lose both attempts to kills before its start)
    never = [b["id"] for b in recorded if jobs[b["id"]].state is JobState.DONE and not starts[b["id"]]]
    assert never == [], "a done job never ran"
    extra = sum(max(0, len(starts[body["id"]]) - ideal_starts(body)) for body in recorded)
    return sum(len(a) for a in starts.values()), extra


def check_metrics(bodies: list[dict[str, Any]], jobs: dict[str, Job], text: str) -> float:
    """The backend's /api/metrics agree with the job records exactly. Returns the expired runs."""
    samples = scrape(text)
    expired = 0.0
    for name, count in Counter(body["name"] for body in bodies).items():
        of_name = [job for job in jobs.values() if job.name == name]
        q = {"queue": "default", "name": name}
        runs = {o: metric(samples, "bagbot_job_run_total", **q, outcome=o)
                for o in ("done", "retry", "failed", "expired")}
        expired += runs["expired"]
        assert metric(samples, "bagbot_job_enqueue_total", **q) == count, name
        assert runs["done"] == sum(job.state is JobState.DONE for job in of_name), name
        claims = sum(job.attempts for job in of_name)
        assert sum(runs.values()) == claims, (name, runs, claims)  # every claim ended exactly once
        assert metric(samples, "bagbot_retry_scheduled_total", **q) == claims - count, name
        observed = runs["done"] + runs["retry"] + runs["failed"]  # expired runs have no duration
        assert metric(samples, "bagbot_job_run_duration_seconds_count", **q) == observed, name
    for state, count in Counter(job.state.value for job in jobs.values()).items():
        assert metric(samples, "bagbot_jobs", queue="default", state=state) == count
    assert metric(samples, "bagbot_store_resets_total") == 0  # the AOF kept everything: not a reset
    return expired


async def run_chaos(
    chaos: Chaos, redis: RedisServer, client: httpx.AsyncClient, bodies: list[dict[str, Any]]
) -> Counter[int]:
    """Enqueue at BATCH jobs/s; meanwhile kill a worker every KILL_EVERY s, and Redis once, midway."""
    enqueuer = asyncio.create_task(enqueue_all(client, bodies))
    restart_at = time.monotonic() + len(bodies) / BATCH / 2
    while not enqueuer.done() or time.monotonic() < restart_at:
        await asyncio.sleep(KILL_EVERY)
        chaos.kill_one()
        if chaos.redis_restarts == 0 and time.monotonic() >= restart_at:
            redis.kill()  # SIGKILL: only appendfsync=always keeps what was acknowledged
            await asyncio.sleep(1.5)
            redis.start()
            chaos.redis_restarts += 1
    return await enqueuer


async def test_chaos_kills_and_a_redis_restart_lose_nothing(aof_redis: RedisServer, tmp_path: Path) -> None:
    started = time.monotonic()
    record = tmp_path / "record.txt"
    chaos = Chaos(tmp_path, worker_env(aof_redis.url, PREFIX, record, BAGBOT_CONCURRENCY="8"))
    backend_env = {"JOB_STORE": "redis", "REDIS_URL": aof_redis.url, "BAGBOT_PREFIX": PREFIX,
                   "BAGBOT_HEARTBEAT_SECONDS": "0.5"}
    backend = BackendProcess(tmp_path, backend_env)
    store = RedisJobStore.from_url(aof_redis.url, prefix=PREFIX)
    rng = random.Random(2026)
    bodies = [job_body(i, rng) for i in range(TOTAL)]
    try:
        backend.wait_ready()
        for _ in range(WORKERS):
            chaos.spawn()
        for proc in chaos.alive:
            await proc.wait_for_log("✓ Worker registration successful")
        async with httpx.AsyncClient(base_url=backend.base_url, timeout=30) as client:
            statuses = await run_chaos(chaos, aof_redis, client, bodies)

            async def all_terminal() -> bool:
                counts = (await store.counts())["default"]
                return counts["done"] + counts["failed"] + counts["cancelled"] == TOTAL

            await eventually(all_terminal, 150, f"all {TOTAL} jobs terminal")
            metrics_text = (await client.get("/api/metrics")).text
        jobs = await all_jobs(store)
        check_jobs(bodies, jobs)
        executions, extra = check_executions(bodies, jobs, record)
        expired = check_metrics(bodies, jobs, metrics_text)
        assert chaos.kills >= 10 and chaos.redis_restarts == 1
        states = Counter(job.state.value for job in jobs.values())
        print(
            f"\nchaos: jobs={TOTAL} done={states['done']} failed={states['failed']}"
            f" worker_kills={chaos.kills} redis_restarts={chaos.redis_restarts}"
            f" executions={executions} extra_executions={extra} expired_leases={expired:.0f}"
            f" enqueue_calls={dict(statuses)} wall={time.monotonic() - started:.1f}s"
        )
    finally:
        chaos.stop_all()
        backend.stop()
        await store.close()
