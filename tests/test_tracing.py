"""OpenTelemetry tracing (backend/workers/tracing.py) with the SDK's in-memory exporter.

An in-process Worker on the memory store and on a real Redis: the enqueuer's context is stored with
the job and the run span links to it; a failing handler marks its span ERROR; without a provider,
or without the package at all (a subprocess where `import opentelemetry` fails), nothing is
recorded, nothing is stored and jobs run as before.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from backend.client.client import Client
from backend.config import Settings
from backend.workers import tracing
from backend.workers.job_store import JobStore
from backend.workers.models import Job, JobSpec, JobState
from backend.workers.orchestration import Worker

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = Settings(heartbeat_seconds=0.2, lease_seconds=5.0, concurrency=4, shutdown_grace_seconds=2.0)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """A private SDK provider (the process-wide one is left alone, so other tests stay untraced)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.set_provider(provider)
    try:
        yield memory
    finally:
        tracing.set_provider(None)
        provider.shutdown()


@pytest.fixture
async def worker(app_store: JobStore) -> AsyncIterator[Worker]:
    running = Worker(app_store, SETTINGS, worker_id="w-tracing")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def finished(store: JobStore, job_id: str, timeout: float = 30.0) -> Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await store.get(job_id)
        if job is not None and job.is_terminal:
            return job
        assert asyncio.get_running_loop().time() < deadline, f"job {job_id} did not finish"
        await asyncio.sleep(0.02)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def settled(memory: InMemorySpanExporter, name: str, timeout: float = 10.0) -> list[ReadableSpan]:
    """The spans called `name` once there is one (the run span ends just after the job's finish)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not named(memory.get_finished_spans(), name):
        assert asyncio.get_running_loop().time() < deadline, f"no span {name}"
        await asyncio.sleep(0.02)
    return named(memory.get_finished_spans(), name)


async def test_the_run_span_links_to_the_enqueuers_span_with_the_jobs_attributes(
    app_store: JobStore, worker: Worker, exporter: InMemorySpanExporter
) -> None:
    client = Client(app_store, owns_store=False)
    tracer = trace.get_tracer("app", tracer_provider=tracing._provider)
    with tracer.start_as_current_span("request") as request:
        handle = await client.enqueue_name("bagbot.echo", ["hi"], queue="default")
    assert await handle.result(timeout=30) == ["hi"]
    job = await finished(app_store, handle.id)

    (producer,) = await settled(exporter, "bagbot.enqueue bagbot.echo")
    assert producer.kind is SpanKind.PRODUCER
    assert producer.parent is not None and producer.parent.span_id == request.get_span_context().span_id
    ctx = producer.get_span_context()
    assert job.trace is not None and job.trace.startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")

    (run,) = await settled(exporter, "bagbot.run bagbot.echo")
    assert run.kind is SpanKind.CONSUMER
    assert run.parent is None  # a root of its own, linked (not parented) to the enqueuer
    assert [(link.context.trace_id, link.context.span_id) for link in run.links] == [
        (ctx.trace_id, ctx.span_id)
    ]
    attrs = dict(run.attributes or {})
    assert attrs["bagbot.job.id"] == job.id
    assert attrs["bagbot.job.name"] == "bagbot.echo"
    assert attrs["bagbot.job.queue"] == "default"
    assert attrs["bagbot.job.attempt"] == 1
    assert attrs["messaging.system"] == "bagbot"
    assert run.status.status_code is StatusCode.UNSET

    claims = [
        s
        for s in await settled(exporter, "bagbot.claim")
        if s.attributes.get("messaging.batch.message_count")
    ]
    finishes = await settled(exporter, "bagbot.finish")
    assert claims and finishes
    assert finishes[0].attributes["messaging.batch.message_count"] >= 1
    await client.close()


async def test_a_failing_handler_marks_its_run_span_error_with_the_exception(
    app_store: JobStore, worker: Worker, exporter: InMemorySpanExporter
) -> None:
    client = Client(app_store, owns_store=False)
    handle = await client.enqueue_name("bagbot.fail", kwargs={"times": 5}, max_attempts=1)
    job = await finished(app_store, handle.id)
    assert job.state is JobState.FAILED
    (run,) = await settled(exporter, "bagbot.run bagbot.fail")
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description and run.status.description.startswith(job.last_error.type)  # type: ignore[union-attr]
    (event,) = [e for e in run.events if e.name == "exception"]
    assert event.attributes["exception.type"] == job.last_error.type  # type: ignore[union-attr]
    # no span was current at the enqueue: the producer span is a root, and the run still links to it
    (producer,) = named(exporter.get_finished_spans(), "bagbot.enqueue bagbot.fail")
    assert [link.context.span_id for link in run.links] == [producer.get_span_context().span_id]
    await client.close()


async def test_the_sync_client_carries_the_calling_threads_context(
    app_store: JobStore, worker: Worker, exporter: InMemorySpanExporter, request: pytest.FixtureRequest
) -> None:
    """SyncClient runs its calls on a loop in another thread: the context must still be the caller's."""
    from backend.client.client import SyncClient
    from backend.workers.redis_job_store import RedisJobStore

    def enqueue_from_a_thread() -> tuple[str, int]:
        own: JobStore = app_store  # the memory store is the worker's; Redis: a client of the sync loop's own
        if isinstance(app_store, RedisJobStore) and not app_store.needs_embedded_worker:
            own = RedisJobStore.from_url(
                request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("prefix")
            )
        sync = SyncClient(Client(own, owns_store=own is not app_store))
        tracer = trace.get_tracer("app", tracer_provider=tracing._provider)
        with tracer.start_as_current_span("view") as view:
            handle = sync.enqueue_name("bagbot.noop")
        sync.close() if own is not app_store else sync._runner.stop()
        return handle.id, view.get_span_context().trace_id

    job_id, trace_id = await asyncio.to_thread(enqueue_from_a_thread)
    job = await finished(app_store, job_id)
    assert job.trace is not None and job.trace.startswith(f"00-{trace_id:032x}-")


async def test_the_api_stores_the_requests_context(
    app_store: JobStore, worker: Worker, exporter: InMemorySpanExporter
) -> None:
    """POST /api/jobs in an instrumented app: the request's span (current in the endpoint, as
    FastAPI's instrumentation makes it; ASGITransport runs the app in this task) is the parent."""
    import httpx

    from backend.api.app import create_app

    app = create_app(Settings(), store=app_store)
    tracer = trace.get_tracer("app", tracer_provider=tracing._provider)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as http:
        with tracer.start_as_current_span("POST /api/jobs") as request:
            reply = await http.post("/api/jobs", json={"name": "bagbot.noop"})
    assert reply.status_code == 201, reply.text
    job = await finished(app_store, reply.json()["id"])
    (producer,) = await settled(exporter, "bagbot.enqueue bagbot.noop")
    assert producer.parent is not None and producer.parent.span_id == request.get_span_context().span_id
    assert producer.attributes is not None and producer.attributes["bagbot.job.id"] == job.id
    (run,) = await settled(exporter, "bagbot.run bagbot.noop")
    assert [link.context.span_id for link in run.links] == [producer.get_span_context().span_id]


async def test_without_a_provider_nothing_is_recorded_nor_stored(
    redis_url: str, prefix: str, delete_prefix_after: None
) -> None:
    from backend.workers.redis_job_store import RedisJobStore

    assert not isinstance(trace.get_tracer_provider(), TracerProvider), "a test set a global provider"
    store = RedisJobStore.from_url(redis_url, prefix=prefix)
    running = Worker(store, SETTINGS, worker_id="w-untraced")
    await running.start()
    try:
        handle = await Client(store, owns_store=False).enqueue_name("bagbot.noop")
        job = await finished(store, handle.id)
        assert job.state is JobState.DONE and job.trace is None
        raw = await store.redis.hgetall(f"{prefix}:{{default}}:job:{job.id}")
        assert raw and b"tp" not in raw and "tp" not in raw  # no empty field written
        assert tracing._tracer is None
    finally:
        await running.stop()
        await store.close()


MISSING = textwrap.dedent(
    """
    import asyncio, importlib.abc, sys

    class NoOtel(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(f"blocked {name}")
            return None

    sys.meta_path.insert(0, NoOtel())
    from backend.client.client import Client
    from backend.config import Settings
    from backend.workers import tracing
    from backend.workers.memory_job_store import MemoryJobStore
    from backend.workers.orchestration import Worker

    async def main():
        assert tracing.trace is None
        store = MemoryJobStore()
        worker = Worker(store, Settings(heartbeat_seconds=0.2, lease_seconds=5.0), worker_id="w-no-otel")
        await worker.start()
        client = Client(store, owns_store=False)
        ok = await client.enqueue_name("bagbot.echo", [1])
        bad = await client.enqueue_name("bagbot.fail", kwargs={"times": 5}, max_attempts=1)
        print(await ok.result(timeout=30))
        print((await bad.info()).trace, (await ok.info()).trace)
        await worker.stop()
        assert "opentelemetry" not in sys.modules
        print("ok")

    asyncio.run(main())
    """
)


def test_without_the_package_every_hook_is_a_no_op() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", MISSING], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[1]", "None None", "ok"], done.stdout


GLOBAL = textwrap.dedent(
    """
    import asyncio
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from backend.client.client import Client
    from backend.config import Settings
    from backend.workers.memory_job_store import MemoryJobStore
    from backend.workers.orchestration import Worker

    async def main():
        store = MemoryJobStore()
        worker = Worker(store, Settings(heartbeat_seconds=0.2, lease_seconds=5.0), worker_id="w-global")
        await worker.start()
        client = Client(store, owns_store=False)
        await (await client.enqueue_name("bagbot.noop")).result(timeout=30)  # before: untraced
        memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        trace.set_tracer_provider(provider)  # configured after start, as an app's lifespan may do
        await (await client.enqueue_name("bagbot.echo", [2])).result(timeout=30)
        await worker.stop()
        print(sorted({s.name for s in memory.get_finished_spans()} - {"bagbot.claim", "bagbot.finish"}))

    asyncio.run(main())
    """
)


def test_a_global_provider_set_after_start_is_used_from_then_on() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['bagbot.enqueue bagbot.echo', 'bagbot.run bagbot.echo']", done.stdout


INVALID_CONTEXTS = ["not-a-traceparent\n{{{not a tracestate", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "\n",
                    "00-zz\n" + "x" * 600]


@pytest.mark.parametrize("stored", INVALID_CONTEXTS)
async def test_a_corrupt_stored_context_runs_the_job_untouched_with_no_link(
    app_store: JobStore, worker: Worker, exporter: InMemorySpanExporter, stored: str
) -> None:
    """A hand-edited or garbled `trace` field must never fail, delay or change the run."""
    job = await app_store.enqueue(JobSpec(name="bagbot.echo", args=["ok"], trace=stored))
    done = await finished(app_store, job.id)
    assert (done.state, done.result, done.attempts, done.last_error) == (JobState.DONE, ["ok"], 1, None)
    (run,) = await settled(exporter, "bagbot.run bagbot.echo")
    assert list(run.links) == []
    assert run.status.status_code is StatusCode.UNSET
