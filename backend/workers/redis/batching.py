"""Enqueue coalescing: concurrent `enqueue` calls made in the same event-loop turn share one
enqueue script call per queue (each job still gets its own atomic create-or-return-existing step
inside it). Every caller gets its own job, or the error of the call that carried it."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

from backend.workers.models import Job, JobSpec
from backend.workers.redis.script_args import EnqueueItem

Send = Callable[[str, Sequence[tuple[JobSpec, EnqueueItem]]], Awaitable[list[Job]]]
_Pending = tuple[JobSpec, EnqueueItem, "asyncio.Future[Job]"]


class EnqueueBatcher:
    def __init__(self, send: Send) -> None:
        self._send = send  # one queue's (spec, item) rows -> their jobs, in order
        self._pending: dict[str, list[_Pending]] = defaultdict(list)
        self._scheduled = False
        self._flushes: set[asyncio.Future[None]] = set()

    async def enqueue(self, spec: JobSpec) -> Job:
        item = EnqueueItem.from_spec(spec)  # validation errors reach this caller now
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Job] = loop.create_future()
        self._pending[spec.queue].append((spec, item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, defaultdict(list)
        for queue, rows in pending.items():
            task = asyncio.ensure_future(self._deliver(queue, rows))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _deliver(self, queue: str, rows: list[_Pending]) -> None:
        try:
            jobs = await self._send(queue, [(spec, item) for spec, item, _ in rows])
        except BaseException as exc:
            for _, _, future in rows:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), job in zip(rows, jobs, strict=True):
            if not future.done():
                future.set_result(job)
