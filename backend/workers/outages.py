"""Living through store outages: which errors mean "Redis is away for now", how long to wait
before trying again, and logging each outage once rather than once per failed call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from backend.workers.job_store import StoreFullError, StoreUnavailableError
from backend.workers.logfmt import fmt

log = logging.getLogger("bagbot.worker")

# Errors that mean "the store is unreachable for now": wait and retry, never crash. Only the
# contract's: each store maps its backend's errors to these in one place (redis/errors.py).
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (StoreUnavailableError, StoreFullError)


class ReconnectBackoff:
    """Reconnect delays: 0.1 s doubling to 5 s, with jitter so workers do not reconnect in step."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        delay = self.current * (0.5 + random.random() / 2)
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


class OutageLog:
    """Logs an outage once when it starts and once when it ends, however many calls fail, and
    wakes every loop waiting out its backoff as soon as one of them reaches the store again."""

    def __init__(self, worker_id: str, where: str) -> None:
        self.worker_id, self.where = worker_id, where
        self.since: float | None = None
        self._back = asyncio.Event()

    async def pause(self, seconds: float) -> None:
        """Wait `seconds` of backoff, or less when the store answers again meanwhile: results kept
        through an outage are reported, and leases extended, before they can expire."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._back.wait(), timeout=seconds)

    def failed(self, op: str, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self._back.clear()
            log.warning(
                fmt(
                    "store_unavailable",
                    worker=self.worker_id,
                    store=self.where,
                    op=op,
                    error=f"{type(exc).__name__}: {exc}",
                    action="retrying with backoff; running jobs continue and their results are kept",
                )
            )

    def recovered(self) -> None:
        if self.since is not None:
            log.info(fmt("store_back", worker=self.worker_id, after=time.monotonic() - self.since))
            self.since = None
            self._back.set()
