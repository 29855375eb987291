"""One job-event subscription per queue, shared by every wait of one client.

Jobs enqueued through a client publish their state changes (`events=True`); a waiter asks the
watcher to wake it when an event names its job. The subscription is made once per queue and
kept until the client closes, so waits after the first cost no new connection. The store
cannot say when a new subscription is in place, so a feed younger than `SETTLE_SECONDS` asks
its waiters to re-read the job a few times meanwhile (a job can finish in a millisecond).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator

from backend.workers.job_store import JobStore

SETTLE_SECONDS = 0.5
CLOSE_TRIES = 20  # redis-py can swallow a cancel while it connects: cancel again every 0.1 s


class QueueFeed:
    """The events of one queue, dispatched to waiters by job id."""

    def __init__(self, store: JobStore, queue: str) -> None:
        self.store, self.queue = store, queue
        self.started = asyncio.get_running_loop().time()
        self.waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.broken: BaseException | None = None
        self._task = asyncio.create_task(self._dispatch(), name=f"job-events:{queue}")

    @property
    def settled(self) -> bool:
        return asyncio.get_running_loop().time() - self.started > SETTLE_SECONDS

    async def _dispatch(self) -> None:
        try:
            async for job_id, _what in self.store.job_events([self.queue]):
                for waiter in self.waiters.get(job_id, ()):
                    waiter.set()
            raise RuntimeError("job event subscription ended")
        except Exception as exc:  # the store cannot subscribe: waiters re-read instead
            self.broken = exc
            for waiters in self.waiters.values():
                for waiter in waiters:
                    waiter.set()

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever an event names `job_id` (registered before the caller re-reads
        the job, so a change between that read and the wait is not lost)."""
        waiter = asyncio.Event()
        self.waiters[job_id].add(waiter)
        try:
            yield waiter
        finally:
            self.waiters[job_id].discard(waiter)
            if not self.waiters[job_id]:
                del self.waiters[job_id]

    async def close(self) -> None:
        """Cancel the subscription, again if a cancel was swallowed (redis-py can, mid-connect)."""
        for _ in range(CLOSE_TRIES):
            self._task.cancel()
            done, _pending = await asyncio.wait({self._task}, timeout=0.1)
            if done:
                break


class Watcher:
    """The feeds of one client, made on first use per queue (on the loop that uses them)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._feeds: dict[str, QueueFeed] = {}

    def feed(self, queue: str) -> QueueFeed | None:
        """The queue's feed, or None once it broke (the caller re-reads at its own pace)."""
        feed = self._feeds.get(queue)
        if feed is None:
            feed = self._feeds[queue] = QueueFeed(self.store, queue)
        return None if feed.broken is not None else feed

    async def close(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            await feed.close()
