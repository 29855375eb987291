"""Calls made one queue at a time, where one queue's failure must cost the others nothing.

A claim across queues returns the jobs of healthy queues and raises the first error only when no
queue gave any: the next claim meets that queue again. Each failing queue is then logged as a warning
(`queue_call_failed`), at most once a minute per queue, so a queue that stays broken (a WRONGTYPE key,
a node that is gone) is not silent, yet a worker claiming many times a second does not flood its log.

On a Redis Cluster each queue (and the worker registry) may live on another node: a claim across
queues keeps what the healthy queues gave, and a heartbeat extends every lease it can reach, even
when another queue's node or the registry's is down. The first failure is raised afterwards.
Leases are extended on every queue at once: a call to a dead node can take seconds of redis-py's
retries, which must delay no other queue's lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from backend.workers.job_store import StoreUnavailableError
from backend.workers.logfmt import fmt
from backend.workers.models import Claim
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc

R = TypeVar("R")
log = logging.getLogger("bagbot.store")

WARN_EVERY_SECONDS = 60.0


class QueueWarnings:
    """Warns that one queue's call failed while other queues answered: once per `every` seconds per
    queue (not per call), with how many failures were not logged in between."""

    def __init__(self, every: float = WARN_EVERY_SECONDS) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = defaultdict(int)

    def warn(self, op: str, queue: str, exc: Exception) -> None:
        now = time.monotonic()
        last = self._last.get(queue)
        if last is not None and now - last < self.every:
            self._unlogged[queue] += 1
            return
        self._last[queue] = now
        log.warning(fmt("queue_call_failed", op=op, queue=queue, error=f"{type(exc).__name__}: {exc}",
                        not_logged_since=self._unlogged.pop(queue, 0) if last is not None else None,
                        action="the other queues' jobs are kept; this queue is tried again next time"))


class FirstFailure:
    """Lets each step fail on its own; remembers the first error so the caller can raise it later,
    and each failing queue's error so the failures nobody raises can be logged (`warnings`)."""

    def __init__(self, warnings: QueueWarnings | None = None, op: str = "") -> None:
        self.error: Exception | None = None
        self.errors: dict[str, Exception] = {}
        self.warnings, self.op = warnings, op

    @contextmanager
    def step(self, queue: str = "") -> Iterator[None]:
        """Run one queue's call: an error ends this step only."""
        try:
            yield
        except Exception as exc:
            if self.error is None:
                self.error = exc
            self.errors.setdefault(queue, exc)

    def raise_first(self) -> None:
        if self.error is not None:
            raise self.error

    def settle(self, any_ok: bool) -> None:
        """Raise the first error when no step gave anything; else warn about each failed queue."""
        if not any_ok:
            self.raise_first()
        elif self.warnings is not None:
            for queue, exc in self.errors.items():
                self.warnings.warn(self.op, queue, exc)


def group_claims(claims: Iterable[Claim]) -> dict[str, list[Claim]]:
    grouped: dict[str, list[Claim]] = defaultdict(list)
    for claim in claims:
        grouped[claim.queue].append(claim)
    return grouped


def refs(claims: Iterable[Claim]) -> list[sa.ClaimRef]:
    return [sa.ClaimRef(claim.job_id, claim.token) for claim in claims]


async def tried_twice(cluster: bool, call: Callable[..., Awaitable[R]], *args: Any) -> R:
    """On a cluster, the first call after one node failed can meet redis-py's slot-map refresh (it
    asks the dead node too) and fail although its own node is healthy: one more try reaches it."""
    if cluster:
        with suppress(StoreUnavailableError):
            return await call(*args)
    return await call(*args)


async def extend_each_queue(
    claims: Sequence[Claim], extend: Callable[[str, list[Claim]], Awaitable[sc.ExtendReply]]
) -> tuple[list[Claim], list[Claim]]:
    """(stale claims, current claims whose job has a cancel request), each queue's call made at once."""
    grouped = list(group_claims(claims).items())
    calls = (extend(queue, items) for queue, items in grouped)
    replies = await asyncio.gather(*calls, return_exceptions=True)
    stale: list[Claim] = []
    cancel: list[Claim] = []
    for (_, items), reply in zip(grouped, replies, strict=True):
        if not isinstance(reply, BaseException):
            stale.extend(claim for i, claim in enumerate(items) if i in reply.stale)
            cancel.extend(claim for i, claim in enumerate(items) if i in reply.cancel)
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return stale, cancel
