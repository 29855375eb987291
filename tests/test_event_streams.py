"""500 open /api/events streams against a real uvicorn and a real Redis: the rest of the API never notices.

The Redis here allows 100 clients, as a managed Key Value does (Render's smallest plans allow 50 to
a few hundred): with one subscription per stream, the streams took every connection and every
endpoint answered 503. With one subscription per backend process (backend/api/event_hub.py) the
streams hold one Redis connection between them, the ones above BAGBOT_MAX_EVENT_STREAMS get 503
with Retry-After, and /api/ready, GET /api/jobs and an authenticated enqueue answer as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from backend.api import event_hub
from backend.api.event_hub import EventHub, Stream, StreamsFullError
from backend.workers.job_store import JobNotFoundError, StoreUnavailableError
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import JobSpec
from backend.workers.redis_job_store import RedisJobStore
from tests.api_server import BackendProcess, delete_prefix
from tests.redis_server import RedisServer, start_server

STREAMS = 500
CAP = 450
TOKEN = "stream-test-token"


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    server = start_server("--maxclients", "100")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def backend(small_redis: RedisServer, prefix: str, tmp_path: Path) -> Iterator[BackendProcess]:
    env = {"JOB_STORE": "redis", "REDIS_URL": small_redis.url, "BAGBOT_PREFIX": prefix,
           "BAGBOT_API_TOKEN": TOKEN, "BAGBOT_MAX_EVENT_STREAMS": str(CAP)}
    server = BackendProcess(tmp_path, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        asyncio.run(delete_prefix(small_redis.url, prefix))


class SseStream:
    """One raw /api/events connection: its status line, then its lines as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(cls, port: int) -> SseStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/events?max_seconds=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        stream = cls(reader, writer)
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)).decode()
        stream.status = int(head.split()[1])
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            stream.headers[name.strip().lower()] = value.strip()
        return stream

    async def next_event(self, timeout: float) -> dict[str, str]:
        """The next `data:` message (chunked transfer framing and comments skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.reader.readline()).decode().strip()
                if not line and self.reader.at_eof():
                    raise AssertionError("stream ended")
                if line.startswith("data: "):
                    message: dict[str, str] = json.loads(line[len("data: "):])
                    return message

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def open_streams(port: int, count: int) -> AsyncIterator[list[SseStream]]:
    streams: list[SseStream] = []
    try:
        for start in range(0, count, 50):  # in waves, as dashboards arrive: not one SYN flood
            wave = min(count, start + 50) - start
            streams += await asyncio.gather(*(SseStream.open(port) for _ in range(wave)))
        yield streams
    finally:
        for stream in streams:
            stream.close()


async def subscribers(url: str) -> int:
    """Clients of the Redis server with a pub/sub subscription."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        clients = await client.client_list()
        return sum(1 for info in clients if int(info.get("sub", 0)) + int(info.get("psub", 0)) > 0)
    finally:
        await client.aclose()


@pytest.mark.redis_only
@pytest.mark.slow
async def test_500_open_streams_leave_the_api_answering(
    backend: BackendProcess, small_redis: RedisServer
) -> None:
    async with open_streams(backend.port, STREAMS) as streams, httpx.AsyncClient(
        base_url=backend.base_url, timeout=30
    ) as api:
        ready = await api.get("/api/ready")
        assert ready.status_code == 200, ready.text
        listed = await api.get("/api/jobs")
        assert listed.status_code == 200, listed.text
        auth = {"Authorization": f"Bearer {TOKEN}"}
        enqueued = await api.post("/api/jobs", json={"name": "bagbot.noop", "events": True}, headers=auth)
        assert enqueued.status_code == 201, enqueued.text
        statuses = [stream.status for stream in streams]
        assert statuses.count(200) == CAP, statuses
        refused = [stream for stream in streams if stream.status == 503]
        assert len(refused) == STREAMS - CAP
        assert all(stream.headers.get("retry-after") == "5" for stream in refused)
        assert await subscribers(small_redis.url) == 1  # one subscription for all the open streams

        cancelled = await api.post(f"/api/jobs/{enqueued.json()['id']}/cancel", headers=auth)
        assert cancelled.status_code == 200, cancelled.text

        # Every open stream gets the event, from the one subscription.
        listening = [stream for stream in streams if stream.status == 200]
        events = await asyncio.gather(*(stream.next_event(30) for stream in listening))
        assert {event["id"] for event in events} == {enqueued.json()["id"]}

        for stream in listening[:10]:  # streams that close free their slots for new ones
            stream.close()

        async def admitted() -> bool:
            again = await SseStream.open(backend.port)
            again.close()
            return again.status == 200

        for _ in range(100):
            if await admitted():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("closed streams never freed their slots")
    assert "Traceback" not in backend.log()


# -- the hub itself: outages, slow readers, streams whose response never ran -----------------------


async def wait_for_event(stream: Stream, store: RedisJobStore, timeout: float = 30.0) -> tuple[str, str]:
    """Cancel opted-in jobs until one of their events reaches `stream` (pub/sub is best effort:
    an event sent while the hub (re)subscribes is not seen)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(StoreUnavailableError, JobNotFoundError):  # Redis away, or back empty
            await store.cancel((await store.enqueue(JobSpec("bagbot.noop", events=True))).id, "default")
        event = await stream.get(0.5)
        if event is not None:
            return event
    raise AssertionError("no event reached the stream")


async def test_streams_outlive_a_redis_restart_and_events_resume(prefix: str) -> None:
    server = start_server()
    store = RedisJobStore.from_url(server.url, prefix=prefix)
    hub = EventHub(store, ["default"], max_streams=10)
    try:
        streams = [hub.open(["default"], lasting=60) for _ in range(3)]
        for stream in streams:
            await wait_for_event(stream, store)
        server.stop()
        await asyncio.sleep(1.5)  # the subscription breaks; the hub retries every second
        server.start()
        for stream in streams:
            while stream.events.qsize():
                stream.events.get_nowait()
            await wait_for_event(stream, store)
        assert hub.open_streams == 3
    finally:
        await hub.aclose()
        await store.close()
        server.cleanup()


async def test_a_slow_reader_loses_its_oldest_events_and_never_holds_up_the_others() -> None:
    store = MemoryJobStore()
    hub = EventHub(store, ["default"], max_streams=10)
    try:
        slow, fast = hub.open(["default"], lasting=60), hub.open(["default"], lasting=60)
        await wait_for_event(fast, store)
        jobs = await store.enqueue_many([JobSpec("bagbot.noop", events=True) for _ in range(1500)])
        ids = [job.id for job in jobs]

        async def read_fast() -> int:
            seen = 0
            while seen < len(ids) and (event := await fast.get(5)) is not None:
                seen += event[0] in ids
            return seen

        reader = asyncio.create_task(read_fast())
        for job_id in ids:
            await store.cancel(job_id)
        assert await reader == 1500  # the fast reader saw every event, the slow one did not hold it up
        assert slow.events.qsize() == 1000  # the slow one holds at most its backlog: the newest
        last = None
        while slow.events.qsize():
            last = slow.events.get_nowait()
        assert last is not None and last[0] == ids[-1]
    finally:
        await hub.aclose()
        await store.close()


async def test_a_stream_whose_response_never_ran_frees_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_hub, "EXPIRY_MARGIN", 0.0)
    store = MemoryJobStore()
    hub = EventHub(store, ["default"], max_streams=2)
    try:
        hub.open(["default"], lasting=0.2)  # never closed: its client left before the response ran
        kept = hub.open(["default"], lasting=60)
        with pytest.raises(StreamsFullError):
            hub.open(["default"], lasting=60)
        await asyncio.sleep(0.3)
        hub.open(["q2"], lasting=60)  # the expired one's slot
        with pytest.raises(StreamsFullError):
            hub.open(["default"], lasting=60)
        hub.close(kept)
        hub.open(["default"], lasting=60)
    finally:
        await hub.aclose()
        await store.close()


async def test_the_subscription_covers_the_open_streams_only() -> None:
    """Streams naming ever new queues cannot grow the one subscription past what is open."""
    store = MemoryJobStore()
    hub = EventHub(store, ["default"], max_streams=5)
    try:
        kept = hub.open(["default"], lasting=60)
        for i in range(50):
            hub.close(hub.open([f"q{i}"], lasting=60))
        last = hub.open(["last"], lasting=60)
        assert hub.subscribed_queues == {"default", "last"}
        hub.close(last)
        hub.close(kept)
        assert hub.subscribed_queues == set()
    finally:
        await hub.aclose()
        await store.close()
