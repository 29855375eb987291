"""/api/metrics: the exposition built from the store's snapshot, and the guide's checker script.

Values are checked exactly after driving runs through the store (memory and a
real Redis), by parsing the text the way Prometheus does.
"""

from __future__ import annotations

import asyncio
import http.server
import itertools
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.api.app import create_app
from backend.api.metrics import GUIDE_METRICS, cumulative_buckets, render
from backend.config import Settings
from backend.workers.job_store import JobStore
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Claim, Completion, JobError, JobSpec, MetricsSnapshot, WorkerInfo
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import DURATION_BUCKETS
from tests.api_server import delete_prefix
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "scripts" / "test_metrics_endpoint.py"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """sample name + labels -> value, as Prometheus would read the exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


@pytest.fixture
def store(app_store: JobStore) -> JobStore:
    return app_store


def client_for(store: JobStore) -> httpx.AsyncClient:
    app = create_app(Settings(), store=store)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/api/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def run_one(store: JobStore, queue: str, duration: float, error: bool, retryable: bool = True) -> None:
    (job,) = await store.claim("w-metrics", [queue], 1, 30)
    assert job.token is not None
    claim = Claim(job.queue, job.id, job.token)
    item = Completion(
        claim, duration, error=JobError("RuntimeError", "x") if error else None, retryable=retryable
    )
    assert (await store.finish([item]))[0] is not None


# -- the exposition ---------------------------------------------------------------------------------------


def test_every_family_is_declared_even_before_any_activity() -> None:
    text = render(MetricsSnapshot(queues={}, counts={}, heartbeat_ages={})).decode()
    for name in (*GUIDE_METRICS, "bagbot_jobs", "bagbot_workers"):
        assert f"# HELP {name} " in text
        assert f"# TYPE {name} " in text
    assert "# TYPE bagbot_job_run_duration_seconds histogram" in text
    assert "# TYPE bagbot_job_enqueue_total counter" in text
    assert "# TYPE bagbot_heartbeat_age_seconds gauge" in text
    assert value(parse(text), "bagbot_workers") == 0


async def test_scrapes_leave_the_global_registry_alone() -> None:
    """Each scrape uses a private registry: nothing accumulates in prometheus_client's global one."""
    from prometheus_client import REGISTRY

    store = MemoryJobStore()
    await store.enqueue(JobSpec("bagbot.echo"))
    async with client_for(store) as client:
        first = await scrape(client)
        assert first == await scrape(client)
    assert REGISTRY.get_sample_value("bagbot_workers") is None
    assert not any(name.startswith("bagbot_") for name in REGISTRY._names_to_collectors)


def test_cumulative_buckets_from_per_bucket_counts() -> None:
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    counts[0], counts[3], counts[-1] = 2, 1, 4
    buckets = cumulative_buckets(counts)
    assert [le for le, _ in buckets] == [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]
    assert buckets[0] == ("0.005", 2)
    assert buckets[2] == ("0.025", 2)
    assert buckets[3] == ("0.05", 3)
    assert buckets[-2] == ("300.0", 3)
    assert buckets[-1] == ("+Inf", 7)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    assert cumulative_buckets([1])[-1] == ("+Inf", 1)  # short list: missing slots count 0
    assert cumulative_buckets([0] * 20 + [5])[-1] == ("+Inf", 5)  # long list: extras go to +Inf


async def test_metrics_reflect_the_store_exactly(store: JobStore) -> None:
    for i in range(3):
        await store.enqueue(JobSpec("bagbot.echo", args=[i]))
    await store.enqueue(JobSpec("bagbot.fail", queue="mail", max_attempts=1))
    await run_one(store, "default", 0.003, error=False)  # done, first bucket
    await run_one(store, "default", 0.2, error=True)  # retry, le=0.25
    await run_one(store, "mail", 400.0, error=True)  # failed, +Inf
    await store.register_worker(WorkerInfo(id="w-metrics", queues=["default"]))

    async with client_for(store) as client:
        samples = parse(await scrape(client))

    assert value(samples, "bagbot_job_enqueue_total", queue="default", name="bagbot.echo") == 3
    assert value(samples, "bagbot_job_enqueue_total", queue="mail", name="bagbot.fail") == 1
    run = "bagbot_job_run_total"
    assert value(samples, run, queue="default", name="bagbot.echo", outcome="done") == 1
    assert value(samples, run, queue="default", name="bagbot.echo", outcome="retry") == 1
    assert value(samples, run, queue="mail", name="bagbot.fail", outcome="failed") == 1
    assert value(samples, "bagbot_retry_scheduled_total", queue="default", name="bagbot.echo") == 1
    # known (queue, name) pairs have every series from 0 on, so increase() sees the first event
    assert value(samples, "bagbot_retry_scheduled_total", queue="mail", name="bagbot.fail") == 0
    assert value(samples, run, queue="default", name="bagbot.echo", outcome="expired") == 0
    assert value(samples, run, queue="mail", name="bagbot.fail", outcome="done") == 0

    hist = "bagbot_job_run_duration_seconds"
    echo = {"queue": "default", "name": "bagbot.echo"}
    assert value(samples, hist + "_bucket", le="0.005", **echo) == 1
    assert value(samples, hist + "_bucket", le="0.1", **echo) == 1
    assert value(samples, hist + "_bucket", le="0.25", **echo) == 2
    assert value(samples, hist + "_bucket", le="+Inf", **echo) == 2
    assert value(samples, hist + "_count", **echo) == 2
    assert value(samples, hist + "_sum", **echo) == pytest.approx(0.203)
    fail = {"queue": "mail", "name": "bagbot.fail"}
    assert value(samples, hist + "_bucket", le="300.0", **fail) == 0
    assert value(samples, hist + "_bucket", le="+Inf", **fail) == 1
    assert value(samples, hist + "_sum", **fail) == pytest.approx(400.0)

    age = value(samples, "bagbot_heartbeat_age_seconds", worker="w-metrics")
    assert age is not None and 0 <= age < 60
    assert value(samples, "bagbot_workers") == 1
    assert value(samples, "bagbot_jobs", queue="default", state="enqueued") == 1
    assert value(samples, "bagbot_jobs", queue="default", state="done") == 1
    assert value(samples, "bagbot_jobs", queue="default", state="retry_scheduled") == 1
    assert value(samples, "bagbot_jobs", queue="mail", state="failed") == 1
    assert value(samples, "bagbot_jobs", queue="mail", state="running") == 0


async def test_expired_leases_are_counted_as_runs_and_retries(store: JobStore) -> None:
    await store.enqueue(JobSpec("bagbot.sleep", max_attempts=2))
    claimed = await store.claim("w-gone", ["default"], 1, 0.05)
    await store.extend([Claim(job.queue, job.id, job.token or "") for job in claimed], 0.05)  # received
    await asyncio.sleep(0.2)
    assert await store.recover() == 1
    async with client_for(store) as client:
        samples = parse(await scrape(client))
    labels = {"queue": "default", "name": "bagbot.sleep"}
    assert value(samples, "bagbot_job_run_total", outcome="expired", **labels) == 1
    assert value(samples, "bagbot_retry_scheduled_total", **labels) == 1
    assert value(samples, "bagbot_job_run_duration_seconds_count", **labels) == 0  # no duration observed


async def test_labels_are_bounded_never_a_job_id(store: JobStore) -> None:
    jobs = [await store.enqueue(JobSpec("bagbot.echo")) for _ in range(5)]
    for _ in range(3):
        await run_one(store, "default", 0.01, error=False)
    async with client_for(store) as client:
        text = await scrape(client)
    for job in jobs:
        assert job.id not in text
    label_names = {
        name for family in text_string_to_metric_families(text) for s in family.samples for name in s.labels
    }
    assert label_names <= {"queue", "name", "outcome", "state", "worker", "le"}


# -- cost of a scrape -------------------------------------------------------------------------------------


async def redis_commands(url: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        info = await client.info("stats")
        return int(info["total_commands_processed"])
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.redis_only
async def test_scrape_cost_does_not_grow_with_the_number_of_jobs(redis_url: str, prefix: str) -> None:
    """Round trips per scrape are the same with 10 and with 10,000 jobs; the time per scrape is printed."""
    store = RedisJobStore.from_url(redis_url, prefix=prefix)
    try:
        async with client_for(store) as client:
            await store.enqueue_many([JobSpec("bagbot.echo", args=[i]) for i in range(10)])
            await store.register_worker(WorkerInfo(id="w-cost", queues=["default"]))
            await scrape(client)  # scripts loaded, connections open
            before = await redis_commands(redis_url)
            await scrape(client)
            small = await redis_commands(redis_url) - before - 1  # minus INFO itself

            for start in range(10, 10_000, 1000):
                specs = [
                    JobSpec(f"bench.job{i % 5}", args=[i]) for i in range(start, min(start + 1000, 10_000))
                ]
                await store.enqueue_many(specs)
            for _ in range(50):
                await run_one(store, "default", 0.01, error=False)
            before = await redis_commands(redis_url)
            await scrape(client)
            large = await redis_commands(redis_url) - before - 1
            assert large == small, (small, large)

            timings = []
            for _ in range(20):
                started = time.perf_counter()
                text = await scrape(client)
                timings.append(time.perf_counter() - started)
            jobs = sum(v for (name, _), v in parse(text).items() if name == "bagbot_jobs")
            assert jobs == 10_000
    finally:
        await store.close()
        await delete_prefix(redis_url, prefix)
    median_ms = statistics.median(timings) * 1000
    print(
        f"\n/api/metrics scrape with {int(jobs)} jobs in Redis: median {median_ms:.2f} ms,"
        f" max {max(timings) * 1000:.2f} ms over {len(timings)} scrapes; {large} Redis commands per scrape"
        f" ({small} with 10 jobs); {len(text)} bytes"
    )


# -- the guide's checker script ---------------------------------------------------------------------------


class _CannedHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:
        if self.path != "/api/metrics":
            self.send_error(404)
            return
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[str, type[_CannedHandler]]]:
    """A tiny HTTP server whose /api/metrics answers whatever the test puts in the handler class."""
    handler = type("Handler", (_CannedHandler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def run_checker(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"},
    )


def full_snapshot() -> MetricsSnapshot:
    from backend.workers.models import QueueMetrics

    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    buckets[2] = 2
    qm = QueueMetrics(
        enqueued={"bagbot.fail": 1},
        runs={("bagbot.fail", "retry"): 1, ("bagbot.fail", "done"): 1},
        retries={"bagbot.fail": 1},
        duration_buckets={"bagbot.fail": buckets},
        duration_sum={"bagbot.fail": 0.03},
    )
    return MetricsSnapshot(
        queues={"default": qm}, counts={"default": {"done": 1}}, heartbeat_ages={"w1": 0.4}
    )


def test_checker_passes_when_all_five_have_samples(canned: tuple[str, type[_CannedHandler]]) -> None:
    url, handler = canned
    handler.body = render(full_snapshot())
    result = run_checker(url + "/")  # a trailing slash is fine
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"✓ Found metric: {name}" for name in GUIDE_METRICS]


def test_checker_names_what_is_missing(canned: tuple[str, type[_CannedHandler]]) -> None:
    url, handler = canned
    snapshot = full_snapshot()
    snapshot.heartbeat_ages = {}
    handler.body = render(snapshot)
    result = run_checker(url)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "✓ Found metric: bagbot_job_enqueue_total" in lines
    assert "✓ Found metric: bagbot_retry_scheduled_total" in lines
    assert "✗ Missing metric: bagbot_heartbeat_age_seconds" in lines
    assert "✓ Found metric: bagbot_heartbeat_age_seconds" not in lines
    assert "worker" in result.stdout  # the hint says where to look

    handler.body = render(MetricsSnapshot(queues={}, counts={}, heartbeat_ages={"w1": 0.2}))
    result = run_checker(url)
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith(("✓", "✗"))]
    assert lines == [f"✗ Missing metric: {name}" for name in GUIDE_METRICS[:4]] + [
        "✓ Found metric: bagbot_heartbeat_age_seconds"
    ]
    assert "Enqueue a test job" in result.stdout


async def test_checker_passes_once_a_job_is_enqueued_and_a_worker_heartbeats(
    canned: tuple[str, type[_CannedHandler]],
) -> None:
    """Nothing has run yet, but every series of the enqueued handler is there from 0."""
    url, handler = canned
    store = MemoryJobStore()
    await store.enqueue(JobSpec("bagbot.fail", kwargs={"times": 1}))
    await store.register_worker(WorkerInfo(id="w1"))
    handler.body = render(await store.metrics())
    result = await asyncio.to_thread(run_checker, url)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == [f"✓ Found metric: {name}" for name in GUIDE_METRICS]


def test_checker_wants_samples_not_just_declarations(canned: tuple[str, type[_CannedHandler]]) -> None:
    url, handler = canned
    handler.body = render(MetricsSnapshot(queues={}, counts={}, heartbeat_ages={}))
    result = run_checker(url)
    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if line.startswith(("✓", "✗"))] == [
        f"✗ Missing metric: {name}" for name in GUIDE_METRICS
    ]
    assert "only appear after activity" in result.stdout


def test_checker_reports_an_unreachable_or_failing_endpoint(canned: tuple[str, type[_CannedHandler]]) -> None:
    result = run_checker(f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "Cannot reach" in result.stdout and "/api/metrics" in result.stdout
    assert "Traceback" not in result.stderr

    url, handler = canned
    handler.status = 503
    handler.body = b'{"detail": "the job store is unavailable"}'
    result = run_checker(url)
    assert result.returncode == 2
    assert "HTTP 503" in result.stdout and "unavailable" in result.stdout

    result = run_checker("bagbot-backend.onrender.com")
    assert result.returncode == 2
    assert "http://" in result.stdout
