"""`JobStore.tidy` on Redis: what names and queues nobody uses any more stop costing.

Counters are kept per queue and handler name (23 metric series each), and `PREFIX:queues` lists
every queue a client used; without this both grow with every name or queue ever seen. One
`tidy.lua` call per queue drops the counters of names that no live worker registers and that have
no job left, and empties a queue that has no job and no live worker; such a queue is then taken
off `PREFIX:queues` here. That set lives in another cluster slot than the queue's keys, so the
removal is not in the script: an enqueue racing it re-creates the queue's `seq` key (enqueue.lua
reports it `fresh`, and its client adds the queue again), and the queue is put back here if `seq`
exists after the removal. Either way a queue with a job is listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from backend.workers.models import Tidied, WorkerInfo
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc
from backend.workers.redis.keys import QueueKeys, RedisKeys

A = TypeVar("A", bound=tuple[Any, ...])
R = TypeVar("R")


class TidyStore(Protocol):
    """What tidy needs of the Redis store."""

    redis: Any
    keys: RedisKeys
    _known_queues: set[str]

    def _mapped_errors(self) -> AbstractContextManager[None]: ...

    async def _call(self, script: sc.Script[A, R], keys: QueueKeys | RedisKeys, args: A) -> R: ...

    async def queues(self) -> list[str]: ...

    async def list_workers(self, stale_after: float | None = None) -> list[WorkerInfo]: ...


async def tidy(store: TidyStore, stale_after: float | None) -> Tidied:
    workers: Sequence[WorkerInfo] = await store.list_workers(stale_after)
    names, gone = 0, []
    for queue in await store.queues():
        qkeys = store.keys.queue(queue)
        dropped, emptied = await store._call(sc.TIDY, qkeys, sa.TidyArgs.of(queue, workers))
        names += dropped
        if emptied and await _unlist(store, queue, qkeys):
            gone.append(queue)
    return Tidied(names, tuple(gone))


async def _unlist(store: TidyStore, queue: str, qkeys: QueueKeys) -> bool:
    """Take an emptied queue off PREFIX:queues; False if an enqueue came in meanwhile (it stays)."""
    with store._mapped_errors():
        await store.redis.srem(store.keys.queues, queue)
        store._known_queues.discard(queue)
        if await store.redis.exists(qkeys.seq):
            await store.redis.sadd(store.keys.queues, queue)
            return False
    return True
