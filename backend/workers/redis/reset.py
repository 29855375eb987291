"""Notice that Redis lost its data, say so, and put back what every process relies on.

A Redis without persistence (Render's free plan), a FLUSHALL, or a failover to an empty replica
leaves the processes running with nothing behind them. Each data set gets a random marker
(`PREFIX:epoch`, set once with SET NX); a process that sees the marker vanish or change knows the
data it saw before is gone. The worker checks at every heartbeat and the backend on the same
interval, so both notice within one heartbeat, log it once per reset, and count it.

What is put back: the set of queue names (`PREFIX:queues`). Each store remembers which queues it
has already added to that set; after a reset those processes would keep enqueueing into queues
nobody can list, so new jobs would be invisible to the API until a restart. Workers re-register
through their own heartbeat (it re-creates a vanished entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from backend.workers.redis.errors import mapped_errors
from backend.workers.redis.keys import RedisKeys

log = logging.getLogger("bagbot.store")


class ResetWatcher:
    """One process's view of the Redis data set it works on."""

    def __init__(
        self,
        client: Any,
        keys: RedisKeys,
        queues: Iterable[str] = (),
        who: str = "",
        errors: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        # the store's error mapping: outages surface as the contract's errors
        self._errors = errors or (lambda: mapped_errors("redis"))
        self.redis: Any = client  # the store's own client (standalone or cluster)
        self.epoch_key = keys.epoch
        self.queues_key = keys.queues
        self.who = who
        self.epoch: str | None = None
        self.queues: set[str] = set(queues)  # every queue seen so far, restored after a reset
        self.resets = 0
        self.last_reset_at: float | None = None  # epoch seconds, this process's clock

    async def check(self) -> bool:
        """True when the data set changed since the last check (a reset). One round trip of reads
        while nothing changed, so it also works while Redis is full and refuses writes."""
        with self._errors():
            return await self._check()

    async def _check(self) -> bool:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.epoch_key)
            pipe.smembers(self.queues_key)
            current, members = await pipe.execute()
        if current is None:  # a new data set (or the first process ever): mark it, first writer wins
            fresh = f"{uuid.uuid4().hex}-{time.time():.0f}"
            await self.redis.set(self.epoch_key, fresh, nx=True)
            current = await self.redis.get(self.epoch_key)
        current = str(current)
        previous, self.epoch = self.epoch, current
        reset = previous is not None and current != previous
        if reset:
            self.resets += 1
            self.last_reset_at = time.time()
            if self.queues:
                await self.redis.sadd(self.queues_key, *sorted(self.queues))
            log.warning(
                "Redis lost its data (restart without persistence, FLUSHALL or failover to an empty"
                " replica): jobs stored before are gone; queue names restored, carrying on"
                f" event=store_reset who={self.who or '-'} resets={self.resets}"
                f" queues_restored={len(self.queues)}"
            )
        self.queues.update(str(member) for member in members)
        return reset

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Check every `interval` seconds until `stop` is set; an unreachable store is tried again.

        A stop event rather than task.cancel(): a cancellation that lands inside a redis-py read
        can be absorbed by the client's own timeout handling, and the loop would never end.
        """
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
