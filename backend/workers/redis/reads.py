"""The Redis store's read side: jobs by id, paged listings, counts, metric counters and job events.

Plain pipelined reads (no script): each one reads keys of one queue, so they work unchanged on
Redis Cluster (the cluster client splits a pipeline by slot).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from redis import exceptions as redis_errors

from backend.workers.history import MinuteStats
from backend.workers.models import ALL_STATES, Job, JobPage, JobState, StoreHealth
from backend.workers.redis.codec import format_cursor, job_from_hash, parse_cursor
from backend.workers.redis.keys import QueueKeys, RedisKeys
from backend.workers.rules import HISTORY_MINUTES


def index_key(qkeys: QueueKeys, state: JobState | None) -> str:
    """The sorted set that lists the jobs in `state` (every job when None): enqueued and running
    jobs are listed by the ready and running sets themselves, so the hot path keeps no extra index."""
    if state is None:
        return qkeys.jobs
    if state is JobState.ENQUEUED:
        return qkeys.ready
    if state is JobState.RUNNING:
        return qkeys.running
    return qkeys.state(state.value)


class Reads:
    """The read queries, on the store's client, through the store's error mapping."""

    def __init__(self, client: Any, keys: RedisKeys, errors: Callable[[], AbstractContextManager[None]]):
        self.redis: Any = client
        self.keys = keys
        self.errors = errors

    async def get(self, job_id: str, queues: Sequence[str]) -> Job | None:
        if not queues:
            return None
        replies = await self._hgetall([self.keys.queue(name).job(job_id) for name in queues])
        for reply in replies:
            if reply:
                return job_from_hash(reply, job_id)
        return None

    async def _hgetall(self, keys: Sequence[str]) -> list[dict[str, str]]:
        with self.errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                return list(await pipe.execute())

    async def list_jobs(
        self, queues: Sequence[str], state: JobState | None, name: str | None, limit: int, cursor: str | None
    ) -> JobPage:
        limit = max(1, min(limit, 1000))
        after = parse_cursor(cursor)
        found: list[Job] = []
        for _ in range(20):  # bounded scan when a name filter drops most entries
            batch = limit * (1 if name is None else 4)
            entries = await self._index_page(queues, state, after, batch)
            if not entries:
                return JobPage(found, None)
            replies = await self._hgetall([self.keys.queue(q).job(job_id) for _, job_id, q in entries])
            for (score, job_id, _), reply in zip(entries, replies, strict=True):
                after = (score, job_id)
                job = job_from_hash(reply, job_id) if reply else None
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
        """Up to `count` (score, id, queue) entries strictly after `after` in (score, id) order, newest
        first. Many entries can share one score (one script call stamps a whole batch with one TIME),
        so the entries tied with the cursor's score are read whole and the rest strictly below it:
        a page never skips a job however many share a timestamp."""
        with self.errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                sources: list[str] = []
                for name in queues:
                    qkeys = self.keys.queue(name)
                    keys = [index_key(qkeys, state)]
                    if state is JobState.ENQUEUED:
                        keys.append(qkeys.parked)  # jobs over a concurrency limit are enqueued too
                    for key in keys:
                        sources.append(name)
                        if after is None:
                            pipe.zrevrangebyscore(key, "+inf", "-inf", start=0, num=count, withscores=True)
                        else:
                            sources.append(name)
                            pipe.zrevrangebyscore(key, after[0], after[0], withscores=True)  # the ties
                            pipe.zrevrangebyscore(key, f"({after[0]:.0f}", "-inf", start=0, num=count,
                                                  withscores=True)
                replies = await pipe.execute()
        merged: list[tuple[float, str, str]] = []
        for name, reply in zip(sources, replies, strict=True):
            for member, score in reply:
                if after is None or (float(score), str(member)) < after:
                    merged.append((float(score), str(member), name))
        merged.sort(reverse=True)
        return merged[:count]

    async def health(self, backend: str) -> StoreHealth:
        try:
            with self.errors():
                await self.redis.ping()
                server, memory = await self._server_info()
        except Exception as exc:  # health must answer, whatever went wrong
            return StoreHealth(ok=False, backend=backend, detail=str(exc), needs_noeviction=True)
        return StoreHealth(
            ok=True,
            backend=backend,
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

    async def counts(self, queues: Sequence[str]) -> dict[str, dict[str, int]]:
        with self.errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in queues:
                    qkeys = self.keys.queue(name)
                    for state in ALL_STATES:
                        pipe.zcard(index_key(qkeys, state))
                    pipe.zcard(qkeys.parked)
                replies = await pipe.execute()
        it = iter(replies)
        out: dict[str, dict[str, int]] = {}
        for name in queues:
            out[name] = {state.value: int(next(it)) for state in ALL_STATES}
            out[name][JobState.ENQUEUED.value] += int(next(it))  # parked jobs are enqueued too
        return out

    async def stats(self, queues: Sequence[str]) -> list[dict[str, str]]:
        """Each queue's metric counters (the stats hash)."""
        return await self._hgetall([self.keys.queue(name).stats for name in queues])

    async def history(self, qkeys: QueueKeys, minutes: int) -> list[MinuteStats]:
        """The last `minutes` minutes of the queue's history hash (lib.lua flush_history), oldest
        first, every minute present (zeros where nothing ran). Unreadable fields are skipped."""
        with self.errors():
            seconds, _ = await self.redis.time()
            data = await self.redis.hgetall(qkeys.history)
        last, minutes = int(seconds) // 60, max(1, min(minutes, HISTORY_MINUTES))
        out = {m: MinuteStats(at=m * 60.0) for m in range(last - minutes + 1, last + 1)}
        for name, raw in data.items():
            minute, _, kind = str(name).partition("|")
            try:
                stats = out.get(int(minute))
                if stats is None or not kind:
                    continue
                if kind == "s":
                    total = float(raw)
                    stats.duration_sum = total if math.isfinite(total) and total > 0 else 0.0
                elif kind in ("n", "f"):
                    setattr(stats, "processed" if kind == "n" else "failed", max(0, int(raw)))
                elif kind[0] == "d" and 1 <= int(kind[1:]) <= len(stats.buckets):
                    stats.buckets[int(kind[1:]) - 1] = max(0, int(raw))
            except (ValueError, OverflowError):
                continue
        return list(out.values())

    async def events(
        self, channels: Mapping[str, str], cluster: bool
    ) -> AsyncGenerator[tuple[str, str, str], None]:
        """(queue, job id, what) from the queues' event channels ({channel: queue}), on one
        subscription, until the caller stops iterating."""
        with self.errors():
            if cluster:
                await self.redis.initialize()  # the cluster pub/sub client needs the slot map
            pubsub = self.redis.pubsub()
            await pubsub.subscribe(*channels)
        try:
            while True:
                with self.errors():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                job_id, _, what = str(message["data"]).partition(" ")
                yield channels.get(str(message.get("channel")), ""), job_id, what
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
