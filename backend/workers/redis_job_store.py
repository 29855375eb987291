"""The Redis job store: argument conversion, script calls and error mapping.

Every state change is one Lua script from `lua/` (one file per transition,
with `lib.lua` prepended), called by SHA, on the server's clock. Every script
touches the keys of one queue only (hash tag `{queue}`), so it runs unchanged
on Redis Cluster. Key names come from `redis_keys.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractContextManager
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from backend.config import redact_url
from backend.workers.job_store import (
    IllegalTransitionError,
    JobNotFoundError,
    JobStore,
    ResetWatch,
)
from backend.workers.models import (
    ALL_STATES,
    Claim,
    Completion,
    HeartbeatReply,
    Job,
    JobPage,
    JobSpec,
    JobState,
    MetricsSnapshot,
    ScheduleInfo,
    StoreHealth,
    WorkerInfo,
)
from backend.workers.redis.codec import (
    completion_argv,
    enqueue_row,
    format_cursor,
    job_from_hash,
    new_job,
    pairs_to_dict,
    parse_cursor,
    queue_metrics,
    s_to_us,
    worker_from_hash,
)
from backend.workers.redis.errors import mapped_errors
from backend.workers.redis.keys import QueueKeys, RedisKeys
from backend.workers.redis.reset import ResetWatcher
from backend.workers.rules import dumps, loads, new_job_id

QUEUE_SCRIPTS = ("enqueue", "claim", "finish", "extend", "release", "recover", "promote",
                 "cancel", "retry", "purge", "wakeup", "progress", "unpark")
REGISTRY_SCRIPTS = ("heartbeat", "workers")
ENQUEUE_BATCH = 500  # jobs per enqueue script call: keeps each script short for other clients
HOUSEKEEPING_LIMIT = 100  # due / expired jobs handled per claim call
MAX_BLOCK_SECONDS = 5.0  # BLPOP stays well under the client's socket timeout


@cache
def _script_source(name: str) -> str:
    lua = resources.files("backend.workers.redis").joinpath("lua")
    body = lua.joinpath(f"{name}.lua").read_text()
    if name in QUEUE_SCRIPTS:
        return lua.joinpath("lib.lua").read_text() + "\n" + body
    return "local unpack = unpack or table.unpack\n" + body


class RedisJobStore(JobStore):
    """JobStore on one Redis server (or cluster slot per queue). Owns its client."""

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
            name: client.register_script(_script_source(name)) for name in QUEUE_SCRIPTS + REGISTRY_SCRIPTS
        }
        self._known_queues: set[str] = set()
        self._pending_enqueues: dict[str, list[tuple[JobSpec, list[Any], asyncio.Future[Job]]]] = (
            defaultdict(list)
        )
        self._flush_scheduled = False
        self._flushes: set[asyncio.Future[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "bagbot",
        retention_seconds: float = 7 * 24 * 3600.0,
        cluster: bool | None = None,
    ) -> RedisJobStore:
        """A store on `url`; `cluster=None` asks the server whether it is a Redis Cluster node."""
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 5,
            "socket_timeout": MAX_BLOCK_SECONDS + 5,
        }
        if cluster is None:
            cluster = is_cluster(url)
        client: aioredis.Redis | RedisCluster
        if cluster:
            client = RedisCluster.from_url(url, **options)
        else:
            client = aioredis.Redis.from_url(url, health_check_interval=15, **options)
        return cls(client, prefix=prefix, retention_seconds=retention_seconds, url=url)

    # -- plumbing ------------------------------------------------------------

    def _mapped_errors(self) -> AbstractContextManager[None]:
        return mapped_errors(self.safe_url)

    @property
    def label(self) -> str:
        return self.safe_url

    def reset_watch(self, queues: Sequence[str] = (), who: str = "") -> ResetWatch | None:
        return ResetWatcher(self.redis, self.keys, queues, who, errors=self._mapped_errors)

    async def _run(self, script: str, qkeys: QueueKeys, args: Sequence[Any]) -> Any:
        with self._mapped_errors():
            return await self._scripts[script](keys=qkeys.script_keys(), args=list(args))

    async def _note_queue(self, queue: str) -> None:
        if queue not in self._known_queues:
            with self._mapped_errors():
                await self.redis.sadd(self.keys.queues, queue)
            self._known_queues.add(queue)

    async def _queue_names(self, queues: Sequence[str] | None) -> list[str]:
        return list(queues) if queues is not None else await self.queues()

    # -- producers -----------------------------------------------------------

    async def enqueue(self, spec: JobSpec) -> Job:
        """Concurrent calls made in the same event-loop turn share one script call per queue
        (each job still gets its own atomic create-or-return-existing step inside it)."""
        row = enqueue_row(spec)
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._pending_enqueues[spec.queue].append((spec, row, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_enqueues)
        return await future

    def _flush_enqueues(self) -> None:
        self._flush_scheduled = False
        pending, self._pending_enqueues = self._pending_enqueues, defaultdict(list)
        for queue, rows in pending.items():
            task = asyncio.ensure_future(self._deliver(queue, rows))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _deliver(self, queue: str, rows: list[tuple[JobSpec, list[Any], asyncio.Future[Job]]]) -> None:
        try:
            jobs = await self._send_enqueues(queue, [(spec, row) for spec, row, _ in rows])
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

    async def enqueue_many(self, specs: Sequence[JobSpec]) -> list[Job]:
        rows_by_queue: dict[str, list[tuple[int, JobSpec, list[Any]]]] = defaultdict(list)
        for index, spec in enumerate(specs):
            rows_by_queue[spec.queue].append((index, spec, enqueue_row(spec)))
        results: list[Job | None] = [None] * len(specs)
        for queue, rows in rows_by_queue.items():
            jobs = await self._send_enqueues(queue, [(spec, row) for _, spec, row in rows])
            for (index, _, _), job in zip(rows, jobs, strict=True):
                results[index] = job
        return [job for job in results if job is not None]

    async def _send_enqueues(self, queue: str, rows: Sequence[tuple[JobSpec, list[Any]]]) -> list[Job]:
        await self._note_queue(queue)
        qkeys = self.keys.queue(queue)
        jobs: list[Job] = []
        for start in range(0, len(rows), ENQUEUE_BATCH):
            chunk = rows[start : start + ENQUEUE_BATCH]
            argv: list[Any] = [queue, len(chunk)]
            for _, row in chunk:
                argv.extend(row)
            replies = await self._run("enqueue", qkeys, argv)
            for (spec, row), reply in zip(chunk, replies, strict=True):
                if int(reply[0]) == 1:
                    jobs.append(new_job(spec, row[0], reply[2], reply[3], reply[4]))
                else:
                    jobs.append(job_from_hash(pairs_to_dict(reply[1])))
        return jobs

    # -- reading -------------------------------------------------------------

    async def get(self, job_id: str, queue: str | None = None) -> Job | None:
        queues = [queue] if queue is not None else await self.queues()
        if not queues:
            return None
        with self._mapped_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in queues:
                    pipe.hgetall(self.keys.queue(name).job(job_id))
                replies = await pipe.execute()
        for reply in replies:
            if reply:
                return job_from_hash(reply)
        return None

    async def _locate(self, job_id: str, queue: str | None) -> str:
        if queue is not None:
            return queue
        job = await self.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id}")
        return job.queue

    async def list_jobs(
        self,
        queue: str | None = None,
        state: JobState | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        limit = max(1, min(limit, 1000))
        queues = [queue] if queue is not None else await self.queues()
        after = parse_cursor(cursor)
        found: list[Job] = []
        for _ in range(20):  # bounded scan when a name filter drops most entries
            batch = limit * (1 if name is None else 4)
            entries = await self._index_page(queues, state, after, batch)
            if not entries:
                return JobPage(found, None)
            jobs = await self._load(entries)
            for (score, job_id, _), job in zip(entries, jobs, strict=True):
                after = (score, job_id)
                if job is not None and (name is None or job.name == name):
                    found.append(job)
                    if len(found) == limit:
                        return JobPage(found, format_cursor(after))
            if len(entries) < batch:
                return JobPage(found, None)
        return JobPage(found, format_cursor(after) if after else None)

    async def _index_page(
        self, queues: Sequence[str], state: JobState | None, after: tuple[float, str] | None, count: int
    ) -> list[tuple[float, str, str]]:
        """Up to `count` (score, id, queue) entries strictly after `after`, newest first."""
        top: float | str = "+inf" if after is None else after[0]
        with self._mapped_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                sources: list[str] = []
                for name in queues:
                    qkeys = self.keys.queue(name)
                    keys = [_index_key(qkeys, state)]
                    if state is JobState.ENQUEUED:
                        keys.append(qkeys.parked)  # jobs over a concurrency limit are enqueued too
                    for key in keys:
                        sources.append(name)
                        pipe.zrevrangebyscore(key, top, "-inf", start=0, num=count + 100, withscores=True)
                replies = await pipe.execute()
        merged: list[tuple[float, str, str]] = []
        for name, reply in zip(sources, replies, strict=True):
            for member, score in reply:
                if after is None or (float(score), str(member)) < after:
                    merged.append((float(score), str(member), name))
        merged.sort(reverse=True)
        return merged[:count]

    async def _load(self, entries: Sequence[tuple[float, str, str]]) -> list[Job | None]:
        with self._mapped_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, job_id, name in entries:
                    pipe.hgetall(self.keys.queue(name).job(job_id))
                replies = await pipe.execute()
        return [job_from_hash(reply) if reply else None for reply in replies]

    async def counts(self) -> dict[str, dict[str, int]]:
        queues = await self.queues()
        with self._mapped_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in queues:
                    qkeys = self.keys.queue(name)
                    for state in ALL_STATES:
                        pipe.zcard(_index_key(qkeys, state))
                    pipe.zcard(qkeys.parked)
                replies = await pipe.execute()
        it = iter(replies)
        out: dict[str, dict[str, int]] = {}
        for name in queues:
            out[name] = {state.value: int(next(it)) for state in ALL_STATES}
            out[name][JobState.ENQUEUED.value] += int(next(it))  # parked jobs are enqueued too
        return out

    async def queues(self) -> list[str]:
        with self._mapped_errors():
            members = {str(member) for member in await self.redis.smembers(self.keys.queues)}
        self._known_queues.update(members)
        return sorted(members)

    # -- workers' side ---------------------------------------------------------

    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[Job]:
        claimed: list[Job] = []
        for queue in queues:
            wanted = limit - len(claimed)
            if wanted <= 0:
                break
            replies = await self._run(
                "claim",
                self.keys.queue(queue),
                [worker_id, wanted, s_to_us(lease_seconds), HOUSEKEEPING_LIMIT, random.random(),
                 new_job_id()[:16]],
            )
            claimed.extend(job_from_hash(pairs_to_dict(before) | pairs_to_dict(changes))
                           for before, changes in replies)
        return claimed

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        timeout = min(timeout, MAX_BLOCK_SECONDS)
        if timeout <= 0 or not queues:
            return
        keys = [self.keys.queue(queue).wake for queue in queues]
        with self._mapped_errors():
            if not self.cluster or len(keys) == 1:
                await self.redis.blpop(keys, timeout=timeout)
                return
            # On a cluster the wake lists live in different slots: one BLPOP each, first one wins.
            waits = [asyncio.ensure_future(self.redis.blpop([key], timeout=timeout)) for key in keys]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
                await asyncio.gather(*waits, return_exceptions=True)

    async def next_wakeup(self, queues: Sequence[str]) -> float | None:
        waits = [int(await self._run("wakeup", self.keys.queue(queue), [])) for queue in queues]
        due = [wait for wait in waits if wait >= 0]
        return min(due) / 1e6 if due else None

    async def finish(self, completions: Sequence[Completion]) -> list[JobState | None]:
        by_queue: dict[str, list[tuple[int, Completion]]] = defaultdict(list)
        for index, item in enumerate(completions):
            by_queue[item.claim.queue].append((index, item))
        results: list[JobState | None] = [None] * len(completions)
        for queue, items in by_queue.items():
            argv: list[Any] = [random.random(), len(items)]
            for _, item in items:
                argv.extend(completion_argv(item))
            replies = await self._run("finish", self.keys.queue(queue), argv)
            for (index, _), reply in zip(items, replies, strict=True):
                results[index] = JobState(reply) if reply else None
        return results

    async def extend(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        return (await self._extend(claims, lease_seconds))[0]

    async def _extend(self, claims: Sequence[Claim], lease_seconds: float) -> tuple[list[Claim], list[Claim]]:
        """(stale claims, current claims whose job has a cancel request)."""
        stale: list[Claim] = []
        cancel: list[Claim] = []
        for queue, items in _group_claims(claims).items():
            argv: list[Any] = [s_to_us(lease_seconds)]
            for claim in items:
                argv.extend((claim.job_id, claim.token))
            lost, asked = await self._run("extend", self.keys.queue(queue), argv)
            lost, asked = set(lost), set(asked)
            stale.extend(claim for claim in items if claim.job_id in lost)
            cancel.extend(claim for claim in items if claim.job_id in asked)
        return stale, cancel

    async def progress(self, claim: Claim, value: float, message: str = "") -> bool:
        argv = [claim.job_id, claim.token, repr(float(value)), message[:500]]
        return int(await self._run("progress", self.keys.queue(claim.queue), argv)) == 1

    async def server_time(self) -> float:
        with self._mapped_errors():
            seconds, micros = await self.redis.time()
        return int(seconds) + int(micros) / 1e6

    async def set_handler_limits(self, queue: str, limits: dict[str, int]) -> None:
        if not limits:
            return
        await self._note_queue(queue)
        with self._mapped_errors():
            await self.redis.hset(self.keys.queue(queue).hlimits, mapping=dict(limits))

    async def register_schedules(self, schedules: Sequence[ScheduleInfo]) -> None:
        if not schedules:
            return
        with self._mapped_errors():
            mapping = {schedule.name: dumps(schedule.to_json()) for schedule in schedules}
            await self.redis.hset(self.keys.schedules, mapping=mapping)

    async def list_schedules(self) -> list[ScheduleInfo]:
        with self._mapped_errors():
            raw = await self.redis.hgetall(self.keys.schedules)
        return sorted((ScheduleInfo.from_json(loads(value)) for value in raw.values()), key=lambda s: s.name)

    async def job_events(self, queues: Sequence[str]) -> AsyncIterator[tuple[str, str]]:
        channels = [self.keys.queue(queue).events for queue in queues]
        with self._mapped_errors():
            if self.cluster:
                await self.redis.initialize()  # the cluster pub/sub client needs the slot map
            pubsub = self.redis.pubsub()
            await pubsub.subscribe(*channels)
        try:
            while True:
                with self._mapped_errors():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                job_id, _, what = str(message["data"]).partition(" ")
                yield job_id, what
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def release(self, claims: Sequence[Claim]) -> int:
        released = 0
        for queue, items in _group_claims(claims).items():
            argv: list[Any] = []
            for claim in items:
                argv.extend((claim.job_id, claim.token))
            released += int(await self._run("release", self.keys.queue(queue), argv))
        return released

    async def recover(self, queues: Sequence[str] | None = None, limit: int = 1000) -> int:
        total = 0
        for queue in await self._queue_names(queues):
            total += int(await self._run("recover", self.keys.queue(queue), [limit, random.random()]))
            await self._run("unpark", self.keys.queue(queue), [100])  # limits: see lua/unpark.lua
        return total

    async def promote(self, queues: Sequence[str] | None = None, limit: int = 1000) -> int:
        total = 0
        for queue in await self._queue_names(queues):
            total += int(await self._run("promote", self.keys.queue(queue), [limit]))
        return total

    # -- operators -------------------------------------------------------------

    async def cancel(self, job_id: str, queue: str | None = None) -> Job:
        return await self._manual("cancel", job_id, queue)

    async def retry(self, job_id: str, queue: str | None = None) -> Job:
        return await self._manual("retry", job_id, queue)

    async def _manual(self, action: str, job_id: str, queue: str | None) -> Job:
        name = await self._locate(job_id, queue)
        reply = await self._run(action, self.keys.queue(name), [job_id])
        if reply[0] == "missing":
            raise JobNotFoundError(f"no job {job_id}")
        if reply[0] == "illegal":
            raise IllegalTransitionError(job_id, str(reply[1]), action)
        return job_from_hash(pairs_to_dict(reply[1]))

    async def purge(self, older_than: float, queues: Sequence[str] | None = None, limit: int = 10_000) -> int:
        total = 0
        for queue in await self._queue_names(queues):
            total += int(await self._run("purge", self.keys.queue(queue), [s_to_us(older_than), limit]))
        return total

    # -- worker registry -------------------------------------------------------

    async def _upsert_worker(self, info: WorkerInfo, register: bool, running: int) -> Any:
        fields: list[Any] = [
            "id", info.id, "host", info.host, "pid", info.pid, "queues", dumps(info.queues),
            "concurrency", info.concurrency, "version", info.version, "running", running,
        ]
        return await self._scripts["heartbeat"](
            keys=[self.keys.registry, self.keys.worker(info.id)],
            args=[info.id, "1" if register else "0", *fields],
        )

    async def register_worker(self, info: WorkerInfo) -> None:
        with self._mapped_errors():
            await self._upsert_worker(info, True, info.running)

    async def heartbeat(
        self, info: WorkerInfo, claims: Sequence[Claim], lease_seconds: float
    ) -> HeartbeatReply:
        with self._mapped_errors():
            existed, _ = await self._upsert_worker(info, False, len(claims))
        stale, cancel = await self._extend(claims, lease_seconds) if claims else ([], [])
        return HeartbeatReply(stale, int(existed) == 0, cancel)

    async def deregister_worker(self, worker_id: str) -> None:
        # Registry entry first: a worker that dies between the two leaves only an unlisted hash.
        with self._mapped_errors():
            await self.redis.zrem(self.keys.registry, worker_id)
            await self.redis.delete(self.keys.worker(worker_id))

    async def list_workers(self, stale_after: float | None = None) -> list[WorkerInfo]:
        with self._mapped_errors():
            reply = await self._scripts["workers"](
                keys=[self.keys.registry, self.keys.worker_prefix],
                args=[-1 if stale_after is None else s_to_us(stale_after)],
            )
        now_us = float(reply[0])
        return sorted((worker_from_hash(wid, pairs_to_dict(flat), now_us) for wid, flat in reply[1:]),
                      key=lambda w: w.id)

    # -- observability -----------------------------------------------------------

    async def metrics(self) -> MetricsSnapshot:
        queues = await self.queues()
        with self._mapped_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in queues:
                    pipe.hgetall(self.keys.queue(name).stats)
                replies = await pipe.execute()
        workers = await self.list_workers()
        return MetricsSnapshot(
            queues={name: queue_metrics(stats) for name, stats in zip(queues, replies, strict=True)},
            counts=await self.counts(),
            heartbeat_ages={worker.id: worker.heartbeat_age for worker in workers},
        )

    async def health(self) -> StoreHealth:
        try:
            with self._mapped_errors():
                await self.redis.ping()
                server, memory = await self._server_info()
        except Exception as exc:  # health must answer, whatever went wrong
            return StoreHealth(ok=False, backend=self.backend, detail=str(exc), needs_noeviction=True)
        return StoreHealth(
            ok=True,
            backend=self.backend,
            version=str(server.get("redis_version", "unknown")),
            maxmemory_policy=str(memory.get("maxmemory_policy", "unknown")),
            used_memory=int(memory.get("used_memory", 0)),
            needs_noeviction=True,
        )

    async def _server_info(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """INFO server + memory; servers that refuse INFO (some managed or fake ones) give empty dicts."""
        try:
            return await self.redis.info("server"), await self.redis.info("memory")
        except redis_errors.ResponseError:
            return {}, {}

    async def close(self) -> None:
        await self.redis.aclose()


def is_cluster(url: str) -> bool:
    """Whether the server at `url` runs in cluster mode (False when it cannot be asked now)."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as probe:
            return bool(probe.info("cluster").get("cluster_enabled"))
    except (redis_errors.RedisError, OSError):
        return False


def _index_key(qkeys: QueueKeys, state: JobState | None) -> str:
    """The sorted set that lists the jobs in `state` (every job when None): enqueued and running
    jobs are listed by the ready and running sets themselves, so the hot path keeps no extra index."""
    if state is None:
        return qkeys.jobs
    if state is JobState.ENQUEUED:
        return qkeys.ready
    if state is JobState.RUNNING:
        return qkeys.running
    return qkeys.state(state.value)


def _group_claims(claims: Iterable[Claim]) -> dict[str, list[Claim]]:
    grouped: dict[str, list[Claim]] = defaultdict(list)
    for claim in claims:
        grouped[claim.queue].append(claim)
    return grouped
