"""Calls made one queue at a time, where one queue's failure must cost the others nothing.

A claim across queues returns the jobs of healthy queues and raises the first error only when no
queue gave any: the next claim meets that queue again.

On a Redis Cluster each queue (and the worker registry) may live on another node: a claim across
queues keeps what the healthy queues gave, and a heartbeat extends every lease it can reach, even
when another queue's node or the registry's is down. The first failure is raised afterwards.
Leases are extended on every queue at once: a call to a dead node can take seconds of redis-py's
retries, which must delay no other queue's lease.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from backend.workers.job_store import StoreUnavailableError
from backend.workers.models import Claim
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc

R = TypeVar("R")


class FirstFailure:
    """Lets each step fail on its own; remembers the first error so the caller can raise it later."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    @contextmanager
    def step(self) -> Iterator[None]:
        """Run one queue's call: an error ends this step only."""
        try:
            yield
        except Exception as exc:
            if self.error is None:
                self.error = exc

    def raise_first(self) -> None:
        if self.error is not None:
            raise self.error


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
