"""One job-event subscription per backend process, fanned out to every open /api/events stream.

A subscription holds a Redis connection for as long as it lasts. One per stream let about a
hundred open dashboards (no token needed) take every connection of the pool, and then every
endpoint answered 503. The hub holds one subscription (one connection) to the union of the queues
its streams asked for, and copies each event into the bounded buffer of every stream that wants
it. Streams are capped (`BAGBOT_MAX_EVENT_STREAMS`): one more is refused with 503 and
Retry-After, and nothing else in the API depends on how many are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence

from backend.workers.job_store import JobStore

log = logging.getLogger("bagbot.api.events")

BACKLOG = 1000  # events buffered per stream: a slow reader loses the oldest, never slows the others
RESUBSCRIBE_DELAY = 1.0  # after the subscription broke (Redis away): try again this often
EXPIRY_MARGIN = 30.0  # a stream past its max_seconds by this much is gone, closed or not
QUEUES_TTL = 5.0  # how long the list of known queues (for streams of every queue) is reused


class StreamsFullError(Exception):
    """Every allowed stream is open: the caller answers 503 with Retry-After."""


class Stream:
    """One reader's view of the hub: the events of its queues, buffered."""

    def __init__(self, queues: frozenset[str], expires: float) -> None:
        self.queues = queues
        self.expires = expires  # monotonic: a stream whose response never ran cannot hold its slot past it
        self.events: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=BACKLOG)

    def offer(self, job_id: str, what: str) -> None:
        if self.events.full():
            self.events.get_nowait()
        self.events.put_nowait((job_id, what))

    async def get(self, timeout: float) -> tuple[str, str] | None:
        """The next (job id, what), or None after `timeout` seconds."""
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError:
            return None


class EventHub:
    def __init__(self, store: JobStore, default_queues: Sequence[str], max_streams: int) -> None:
        self._store = store
        self._default_queues = list(default_queues)
        self.max_streams = max_streams
        self._streams: set[Stream] = set()
        self._subscribed: frozenset[str] = frozenset()
        self._pump: asyncio.Task[None] | None = None
        self._known: tuple[float, list[str]] | None = None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def subscribed_queues(self) -> frozenset[str]:
        return self._subscribed

    async def known_queues(self) -> list[str]:
        """Every queue the store knows (for a stream of all queues), re-read at most every few seconds
        so a burst of new streams costs one Redis call, not one each."""
        now = time.monotonic()
        if self._known is None or now - self._known[0] > QUEUES_TTL:
            self._known = (now, await self._store.queues() or self._default_queues)
        return self._known[1]

    def open(self, queues: Iterable[str], lasting: float) -> Stream:
        """A new stream on `queues` for `lasting` seconds; StreamsFullError when `max_streams` are open."""
        now = time.monotonic()
        if len(self._streams) >= self.max_streams:
            # A response that never started (its client left first) never closes its stream: expire it.
            self._streams -= {stream for stream in self._streams if stream.expires < now}
        if len(self._streams) >= self.max_streams:
            raise StreamsFullError(f"{self.max_streams} event streams are open (BAGBOT_MAX_EVENT_STREAMS)")
        stream = Stream(frozenset(queues), now + lasting + EXPIRY_MARGIN)
        self._streams.add(stream)
        if not stream.queues <= self._subscribed or self._pump is None:
            # the queues of the open streams only: what closed streams asked for is dropped here,
            # so the subscription stays bounded by the open streams however many queues were named
            self._subscribe(frozenset().union(*(open_stream.queues for open_stream in self._streams)))
        return stream

    def close(self, stream: Stream) -> None:
        self._streams.discard(stream)
        if not self._streams and self._pump is not None:  # nobody listens: give the connection back
            self._pump.cancel()
            self._pump = None
            self._subscribed = frozenset()

    async def aclose(self) -> None:
        pump, self._pump = self._pump, None
        self._streams.clear()
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    def _subscribe(self, queues: frozenset[str]) -> None:
        """(Re)subscribe to `queues` (the events of the last few milliseconds may be missed: best effort)."""
        if self._pump is not None:
            self._pump.cancel()
        self._subscribed = queues
        self._pump = asyncio.create_task(self._run(sorted(queues)), name="job-event-hub")

    async def _run(self, queues: list[str]) -> None:
        while True:
            try:
                async with contextlib.aclosing(self._store.queue_job_events(queues)) as events:
                    async for queue, job_id, what in events:
                        for stream in self._streams:
                            if queue in stream.queues:
                                stream.offer(job_id, what)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: streams keep their keep-alives, events resume after
                log.warning("job event subscription broke (%s); subscribing again in %.0f s",
                            exc, RESUBSCRIBE_DELAY)
            await asyncio.sleep(RESUBSCRIBE_DELAY)
