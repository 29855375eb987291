"""A job-event subscription that readers can wait on with a timeout.

`JobStore.job_events` is an async generator: cancelling a wait on it (a timeout) would close
it and drop the subscription. The feed pumps it into a queue in a task of its own instead, so
a reader can wait, time out, and wait again on the same subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from backend.workers.job_store import JobStore

MAX_BACKLOG = 1000  # a slow reader loses the oldest events, never blocks the subscription


class EventFeed:
    def __init__(self, store: JobStore, queues: Sequence[str]) -> None:
        self._events: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=MAX_BACKLOG)
        self._task = asyncio.create_task(self._pump(store, list(queues)), name="job-events")

    async def _pump(self, store: JobStore, queues: list[str]) -> None:
        async for event in store.job_events(queues):
            if self._events.full():
                self._events.get_nowait()
            self._events.put_nowait(event)

    async def get(self, timeout: float) -> tuple[str, str] | None:
        """The next (job id, what), or None after `timeout` seconds. Raises what broke the
        subscription (e.g. the store cannot subscribe), so callers can fall back to polling."""
        if self._task.done() and self._events.empty():
            self._task.result()  # re-raises the subscription's error
            raise RuntimeError("job event subscription ended")
        getter = asyncio.ensure_future(self._events.get())
        await asyncio.wait({getter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter
        if getter.done() and not getter.cancelled():
            return getter.result()
        if self._task.done():
            return await self.get(0)  # raises the subscription's error
        return None

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
