"""Calls made one queue at a time, where one queue's failure must cost the others nothing.

A claim across queues returns the jobs of healthy queues and raises the first error only when no
queue gave any: the next claim meets that queue again.

On a Redis Cluster each queue (and the worker registry) may live on another node: a claim across
queues keeps what the healthy queues gave, and a heartbeat extends every lease it can reach, even
when another queue's node or the registry's is down. The first failure is raised afterwards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from backend.workers.job_store import StoreUnavailableError
from backend.workers.models import Claim
from backend.workers.redis import script_args as sa

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
