"""The Redis job store: script calls, batching and error mapping.

Every state change is one Lua script from `redis/lua/` (one file per transition), called by SHA, on
the server's clock, only through its description in `redis/scripts.py` (keys, arguments, reply).
Every script touches the keys of one queue only (hash tag `{queue}`): it runs unchanged on Redis
Cluster. Key names: `redis/keys.py`; read queries: `redis/reads.py`; redis-py errors: `redis/errors.py`.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from backend.config import redact_url
from backend.workers.history import MinuteStats
from backend.workers.job_store import JobNotFoundError, JobStore, ResetWatch
from backend.workers.models import (
    Claim,
    Completion,
    HeartbeatReply,
    Job,
    JobPage,
    JobSpec,
    JobState,
    MetricsSnapshot,
    StoreHealth,
    Tidied,
    WorkerInfo,
)
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc
from backend.workers.redis.batching import EnqueueBatcher
from backend.workers.redis.claiming import Claiming
from backend.workers.redis.codec import (
    job_from_hash,
    queue_metrics,
    s_to_us,
)
from backend.workers.redis.connect import MAX_BLOCK_SECONDS, connect
from backend.workers.redis.declarations import Declarations
from backend.workers.redis.errors import mapped_errors
from backend.workers.redis.keys import QueueKeys, RedisKeys
from backend.workers.redis.operations import QueueOperations
from backend.workers.redis.per_queue import (
    QueueWarnings,
    extend_each_queue,
    group_claims,
    refs,
    tried_twice,
)
from backend.workers.redis.rates import QueueRates
from backend.workers.redis.reads import Reads
from backend.workers.redis.reset import ResetWatcher
from backend.workers.redis.tidy import tidy
from backend.workers.redis.worker_codec import worker_fields, worker_from_hash

ENQUEUE_BATCH = 500  # jobs per enqueue script call: keeps each script short for other clients
PRECISE_WAIT_BELOW = 1.0  # seconds: shorter waits for work end on a local timer (see wait_for_jobs)

A = TypeVar("A", bound=tuple[Any, ...])
R = TypeVar("R")


class RedisJobStore(Claiming, QueueOperations, QueueRates, Declarations, JobStore):
    """JobStore on one Redis server (or cluster slot per queue). Owns its client. Claiming and
    confirming: redis/claiming.py; bulk retry/cancel, purge and pause/resume: redis/operations.py;
    rate settings: redis/rates.py; worker declarations: redis/declarations.py."""

    backend = "redis"

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        prefix: str = "bagbot",
        retention_seconds: float = 7 * 24 * 3600.0,
        url: str = "",
    ) -> None:
        # Any: the standalone and the cluster client share the calls used here but no base class.
        self.redis: Any = client
        self.cluster = isinstance(client, RedisCluster)
        self.keys = RedisKeys(prefix)
        self.retention_seconds = retention_seconds
        self.safe_url = redact_url(url) if url else "redis"
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(script.source) for name, script in sc.SCRIPTS.items()
        }
        self._reads = Reads(client, self.keys, self._mapped_errors)
        self._known_queues: set[str] = set()
        self._batcher = EnqueueBatcher(self._send_enqueues)
        self._queue_warnings = QueueWarnings()  # a queue failing while others answer: rate-limited log

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "bagbot",
        retention_seconds: float = 7 * 24 * 3600.0,
        cluster: bool | None = None,
    ) -> RedisJobStore:
        """A store on `url`; `cluster=None` asks the server whether it is a Redis Cluster node."""
        client = connect(url, cluster)
        return cls(client, prefix=prefix, retention_seconds=retention_seconds, url=url)

    # -- plumbing ------------------------------------------------------------

    def _mapped_errors(self) -> AbstractContextManager[None]:
        return mapped_errors(self.safe_url)

    @property
    def label(self) -> str:
        return self.safe_url

    def reset_watch(self, queues: Sequence[str] = (), who: str = "") -> ResetWatch | None:
        return ResetWatcher(self.redis, self.keys, queues, who, errors=self._mapped_errors)

    async def _call(self, script: sc.Script[A, R], keys: QueueKeys | RedisKeys, args: A) -> R:
        """Run one script by its description: its own keys, its ARGV, its parsed reply."""
        with self._mapped_errors():
            raw = await self._scripts[script.name](keys=script.key_values(keys), args=sa.to_argv(args))
        return script.parse(raw, args)

    async def _note_queue(self, queue: str, fresh: bool = False) -> None:
        if fresh or queue not in self._known_queues:  # fresh: new, or emptied by tidy (redis/tidy.py)
            self._known_queues.discard(queue)  # not listed until SADD succeeds: a retried enqueue lists it
            with self._mapped_errors():
                await self.redis.sadd(self.keys.queues, queue)
            self._known_queues.add(queue)

    async def _queue_names(self, queues: Sequence[str] | None) -> list[str]:
        return list(queues) if queues is not None else await self.queues()

    # -- producers -----------------------------------------------------------

    async def enqueue(self, spec: JobSpec) -> Job:
        """Concurrent calls made in the same event-loop turn share one script call per queue
        (see redis/batching.py); a job with parents has a call of its own (its errors are its own)."""
        if spec.depends_on:
            return (await self.enqueue_many([spec]))[0]
        return await self._batcher.enqueue(spec)

    async def enqueue_many(self, specs: Sequence[JobSpec]) -> list[Job]:
        rows_by_queue: dict[str, list[tuple[int, JobSpec, sa.EnqueueItem]]] = defaultdict(list)
        for index, spec in enumerate(specs):
            rows_by_queue[spec.queue].append((index, spec, sa.EnqueueItem.from_spec(spec)))
        results: list[Job | None] = [None] * len(specs)
        for queue, rows in rows_by_queue.items():
            jobs = await self._send_enqueues(queue, [(spec, item) for _, spec, item in rows])
            for (index, _, _), job in zip(rows, jobs, strict=True):
                results[index] = job
        return [job for job in results if job is not None]

    async def _send_enqueues(self, queue: str, rows: Sequence[tuple[JobSpec, sa.EnqueueItem]]) -> list[Job]:
        await self._note_queue(queue)
        qkeys = self.keys.queue(queue)
        jobs: list[Job] = []
        for start in range(0, len(rows), ENQUEUE_BATCH):
            chunk = rows[start : start + ENQUEUE_BATCH]
            items = [item for _, item in chunk]
            reply = await self._call(sc.ENQUEUE, qkeys, sa.EnqueueArgs(queue, items))
            if reply.fresh:
                await self._note_queue(queue, fresh=True)
            jobs.extend(reply.jobs([spec for spec, _ in chunk], items))
        return jobs

    # -- reading -------------------------------------------------------------

    async def get(self, job_id: str, queue: str | None = None) -> Job | None:
        return await self._reads.get(job_id, [queue] if queue is not None else await self.queues())

    async def _locate(self, job_id: str, queue: str | None) -> str:
        if queue is not None:
            return queue
        job = await self.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id}")
        return job.queue

    async def list_jobs(self, queue: str | None = None, state: JobState | None = None,
                        name: str | None = None, limit: int = 50, cursor: str | None = None) -> JobPage:
        queues = [queue] if queue is not None else await self.queues()
        return await self._reads.list_jobs(queues, state, name, limit, cursor)

    async def counts(self) -> dict[str, dict[str, int]]:
        return await self._reads.counts(await self.queues())

    async def queues(self) -> list[str]:
        with self._mapped_errors():
            members = {str(member) for member in await self.redis.smembers(self.keys.queues)}
        self._known_queues.update(members)
        return sorted(members)

    # -- workers' side ---------------------------------------------------------

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        timeout = min(timeout, MAX_BLOCK_SECONDS)
        if timeout <= 0 or not queues:
            return
        keys = [self.keys.queue(queue).wake for queue in queues]
        # BLPOP's own timeout is only as precise as the server's hz (100 ms at the default 10): a short
        # wait (a job due soon) is ended by a local timer instead, the server's timeout a backstop.
        local = timeout if timeout < PRECISE_WAIT_BELOW else None
        block = timeout + 1.0 if local is not None else timeout
        with self._mapped_errors():
            if local is None and (not self.cluster or len(keys) == 1):
                await self.redis.blpop(keys, timeout=block)
                return
            # On a cluster the wake lists live in different slots: one BLPOP each, first one wins.
            groups = [[key] for key in keys] if self.cluster else [keys]
            waits = [asyncio.ensure_future(self.redis.blpop(group, timeout=block)) for group in groups]
            try:
                done, _ = await asyncio.wait(waits, timeout=local, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            for wait in done:  # a store that cannot be reached says so here, not at the next claim
                if (error := wait.exception()) is not None:
                    raise error

    async def next_wakeup(self, queues: Sequence[str]) -> float | None:
        waits = [await self._call(sc.WAKEUP, self.keys.queue(queue), sa.NoArgs()) for queue in queues]
        due = [wait for wait in waits if wait is not None]
        return min(due) / 1e6 if due else None

    async def finish(self, completions: Sequence[Completion]) -> list[JobState | None]:
        by_queue: dict[str, list[tuple[int, Completion]]] = defaultdict(list)
        for index, item in enumerate(completions):
            by_queue[item.claim.queue].append((index, item))
        results: list[JobState | None] = [None] * len(completions)
        for queue, items in by_queue.items():
            args = sa.FinishArgs.of(self.retention_seconds, [item for _, item in items])
            states = await self._call(sc.FINISH, self.keys.queue(queue), args)
            for (index, _), state in zip(items, states, strict=True):
                results[index] = state
        return results

    async def extend(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        return (await self._extend(claims, lease_seconds))[0]

    async def _extend(self, claims: Sequence[Claim], lease_seconds: float) -> tuple[list[Claim], list[Claim]]:
        """(stale claims, current claims whose job has a cancel request)."""
        lease_us = s_to_us(lease_seconds)
        return await extend_each_queue(claims, lambda queue, items: tried_twice(
            self.cluster, self._call, sc.EXTEND, self.keys.queue(queue), sa.ExtendArgs(lease_us, refs(items))
        ))

    async def progress(self, claim: Claim, value: float, message: str = "") -> bool:
        args = sa.ProgressArgs(claim.job_id, claim.token, repr(float(value)), message[:500])
        return await self._call(sc.PROGRESS, self.keys.queue(claim.queue), args)

    async def server_time(self) -> float:
        with self._mapped_errors():
            seconds, micros = await self.redis.time()
        return int(seconds) + int(micros) / 1e6

    def queue_job_events(self, queues: Sequence[str]) -> AsyncGenerator[tuple[str, str, str], None]:
        return self._reads.events({self.keys.queue(queue).events: queue for queue in queues}, self.cluster)

    async def release(self, claims: Sequence[Claim]) -> int:
        released = 0
        for queue, items in group_claims(claims).items():
            released += await self._call(sc.RELEASE, self.keys.queue(queue), sa.ReleaseArgs(refs(items)))
        return released

    async def recover(self, queues: Sequence[str] | None = None, limit: int = 1000) -> int:
        total = 0
        for queue in await self._queue_names(queues):
            qkeys = self.keys.queue(queue)
            total += await self._call(sc.RECOVER, qkeys, sa.RecoverArgs(limit, random.random()))
            await self._call(sc.UNPARK, qkeys, sa.LimitArgs(100))  # limits: see lua/unpark.lua
        return total

    async def promote(self, queues: Sequence[str] | None = None, limit: int = 1000) -> int:
        total = 0
        for queue in await self._queue_names(queues):
            total += await self._call(sc.PROMOTE, self.keys.queue(queue), sa.LimitArgs(limit))
        return total

    # -- operators -------------------------------------------------------------

    async def cancel(self, job_id: str, queue: str | None = None) -> Job:
        return await self._manual(sc.CANCEL, job_id, queue)

    async def retry(self, job_id: str, queue: str | None = None) -> Job:
        return await self._manual(sc.RETRY, job_id, queue)

    async def _manual(self, script: sc.Script[sa.JobArgs, dict[str, str]], job_id: str,
                      queue: str | None) -> Job:
        name = await self._locate(job_id, queue)
        data = await self._call(script, self.keys.queue(name), sa.JobArgs(job_id))
        return job_from_hash(data)

    async def tidy(self, stale_after: float | None = None) -> Tidied:
        return await tidy(self, stale_after)

    # -- worker registry -------------------------------------------------------

    async def _upsert(self, info: WorkerInfo, register: bool, claims: Sequence[Claim]) -> sc.HeartbeatResult:
        fields = worker_fields(info, claims).items()
        args = sa.HeartbeatArgs(info.id, 1 if register else 0, [sa.WorkerField(*kv) for kv in fields])
        return await self._call(sc.HEARTBEAT, self.keys, args)

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._upsert(info, True, ())

    async def heartbeat(self, info: WorkerInfo, claims: Sequence[Claim], lease_seconds: float
                        ) -> HeartbeatReply:
        # The registry and the leases at once: the registry's node down (seconds of redis-py's retries
        # on a cluster) must not delay, let alone prevent, any lease extension.
        upserted, extended = await asyncio.gather(
            self._upsert(info, False, claims),
            self._extend(claims, lease_seconds),
            return_exceptions=True,
        )
        if isinstance(extended, BaseException):
            raise extended
        if isinstance(upserted, BaseException):
            raise upserted
        stale, cancel = extended
        return HeartbeatReply(stale, not upserted.existed, cancel)

    async def deregister_worker(self, worker_id: str) -> None:
        # Registry entry first: a worker that dies between the two leaves only an unlisted hash.
        with self._mapped_errors():
            await self.redis.zrem(self.keys.registry, worker_id)
            await self.redis.delete(self.keys.worker(worker_id))

    async def list_workers(self, stale_after: float | None = None) -> list[WorkerInfo]:
        args = sa.WorkersArgs(-1 if stale_after is None else s_to_us(stale_after))
        reply = await self._call(sc.WORKERS, self.keys, args)
        return sorted((worker_from_hash(w, d, reply.now_us) for w, d in reply.workers), key=lambda w: w.id)

    # -- observability -----------------------------------------------------------

    async def metrics(self) -> MetricsSnapshot:
        queues = await self.queues()
        replies = await self._reads.stats(queues)
        workers = await self.list_workers()
        read = [queue_metrics(stats) for stats in replies]
        return MetricsSnapshot(
            queues={name: metrics for name, (metrics, _) in zip(queues, read, strict=True)},
            counts=await self.counts(),
            heartbeat_ages={worker.id: worker.heartbeat_age for worker in workers},
            unreadable=sum(skipped for _, skipped in read),
            paused=await self.paused_queues(),
        )

    async def history(self, queue: str, minutes: int) -> list[MinuteStats]:
        return await self._reads.history(self.keys.queue(queue), minutes)

    async def health(self) -> StoreHealth:
        return await self._reads.health(self.backend)

    async def close(self) -> None:
        with self._mapped_errors():
            await self.redis.aclose()

