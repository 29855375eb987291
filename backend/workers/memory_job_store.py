"""The job store in one process: the Redis store's own Lua scripts on an in-process Redis engine.

There is one state machine, in `redis/lua/`: this store runs those scripts unchanged on
fakeredis (with Lua by lupa), so it cannot drift from what runs on a real server. It keeps the
meaning of `JOB_STORE=memory`: one process, nothing persisted, and the process that holds it
runs the worker too (the API embeds one). Each store has a private engine: two stores never
share jobs. Retention is applied as reads happen (the `purge` script, at most a few times per
retention period), so a process that runs no worker housekeeping still forgets old jobs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import fakeredis

from backend.workers.models import Job, JobPage, JobState, StoreHealth
from backend.workers.redis_job_store import RedisJobStore


class MemoryJobStore(RedisJobStore):
    """Jobs in this process's memory; nothing survives it."""

    backend = "memory"
    needs_embedded_worker = True

    def __init__(self, retention_seconds: float = 7 * 24 * 3600.0) -> None:
        engine = fakeredis.FakeServer()
        super().__init__(
            fakeredis.FakeAsyncRedis(server=engine, decode_responses=True),
            prefix="bagbot",
            retention_seconds=retention_seconds,
        )
        self.safe_url = "memory"
        self._purged_at = float("-inf")

    async def _forget_expired(self) -> None:
        now = time.monotonic()
        if now - self._purged_at >= min(1.0, self.retention_seconds / 4):
            self._purged_at = now
            await self.purge(self.retention_seconds)

    async def get(self, job_id: str, queue: str | None = None) -> Job | None:
        await self._forget_expired()
        return await super().get(job_id, queue)

    async def list_jobs(
        self,
        queue: str | None = None,
        state: JobState | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        await self._forget_expired()
        return await super().list_jobs(queue, state, name, limit, cursor)

    async def counts(self) -> dict[str, dict[str, int]]:
        await self._forget_expired()
        return await super().counts()

    def reset_watch(self, queues: Sequence[str] = (), who: str = "") -> None:
        return None  # nothing outside this process can empty it

    async def health(self) -> StoreHealth:
        return StoreHealth(ok=True, backend=self.backend, version="in-process")
