"""The CLI's client on the JobStore contract in this process (JOB_STORE=redis for shared data).

The same commands as over HTTP, but straight on the store: the store's own errors (the
contract's, see `backend/workers/job_store.py`) become `OpsError`s with the CLI's exit codes.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backend.ops.client import Client, ExitCode, JSONDict, OpsError, Page
from backend.workers.bulk import MAX_BULK, MAX_PURGE, BulkAction, BulkFilter, purge_state
from backend.workers.job_store import (
    IllegalTransitionError,
    JobNotFoundError,
    JobStore,
    StoreFullError,
    StoreUnavailableError,
)
from backend.workers.models import JobSpec, JobState
from backend.workers.rules import InvalidJobError, validate_queue

if TYPE_CHECKING:
    from backend.workers.event_feed import EventFeed


class StoreClient(Client):
    """Talks to the JobStore contract in this process (JOB_STORE=redis for shared data)."""

    def __init__(self, store: JobStore, where: str) -> None:
        self.store = store
        self.where = where
        self._events: EventFeed | None = None
        self._events_broken = False

    async def enqueue(self, body: JSONDict) -> JSONDict:
        spec = JobSpec(
            name=body["name"],
            args=list(body.get("args") or []),
            kwargs=dict(body.get("kwargs") or {}),
            queue=body.get("queue") or "default",
            id=body.get("id"),
            delay=body.get("delay"),
            run_at=_run_at(body.get("run_at")),
            priority=int(body.get("priority") or 0),
            max_attempts=int(body["max_attempts"]) if body.get("max_attempts") else None,
            timeout=body.get("timeout"),
            unique_key=body.get("unique_key"),
            events=bool(body.get("events")),
        )
        async with self._errors():
            job = await self.store.enqueue(spec)
        return job.to_json()

    async def get(self, job_id: str, queue: str | None = None) -> JSONDict:
        async with self._errors():
            job = await self.store.get(job_id, queue)
        if job is None:
            raise OpsError(f"no job {job_id}", ExitCode.NOT_FOUND)
        return job.to_json()

    async def list_jobs(
        self, queue: str | None, state: str | None, name: str | None, limit: int, cursor: str | None
    ) -> Page:
        async with self._errors():
            page = await self.store.list_jobs(
                queue=queue, state=JobState(state) if state else None, name=name, limit=limit, cursor=cursor
            )
        return Page([job.to_json() for job in page.jobs], page.cursor)

    async def cancel(self, job_id: str, queue: str | None = None) -> JSONDict:
        async with self._errors():
            return (await self.store.cancel(job_id, queue)).to_json()

    async def retry(self, job_id: str, queue: str | None = None) -> JSONDict:
        async with self._errors():
            return (await self.store.retry(job_id, queue)).to_json()

    async def counts(self) -> dict[str, dict[str, int]]:
        async with self._errors():
            return await self.store.counts()

    async def schedules(self) -> list[JSONDict]:
        from backend.workers.schedules import ScheduleError, schedule_from_info

        async with self._errors():
            now = await self.store.server_time()
            listed = await self.store.list_schedules()
        out = []
        for info in listed:
            try:
                next_fire = schedule_from_info(info).next_after(now)
            except ScheduleError:
                next_fire = None
            out.append(info.to_json() | {"next_fire": next_fire})
        return out

    async def wait_change(self, job: JSONDict) -> None:
        """Woken by the job's events (Redis pub/sub) when it asked for them; re-reads at least
        once a second anyway (pub/sub is best effort), and polls if it cannot subscribe."""
        if not job.get("events") or self._events_broken:
            await asyncio.sleep(0.1)
            return
        if self._events is None:
            from backend.workers.event_feed import EventFeed

            self._events = EventFeed(self.store, [str(job.get("queue") or "default")])
        deadline = asyncio.get_running_loop().time() + 1.0
        try:
            while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
                event = await self._events.get(remaining)
                if event is None or event[0] == job["id"]:
                    return
        except Exception:  # no pub/sub here (e.g. a restricted server): poll instead
            self._events_broken = True

    async def workers(self) -> list[JSONDict]:
        async with self._errors():
            return [w.to_json() for w in await self.store.list_workers()]

    async def purge(self, older_than: float, queues: list[str] | None, state: str | None = None) -> int:
        async with self._errors():
            return await self.store.purge(older_than, queues, MAX_PURGE, purge_state(state))

    async def bulk(self, action: str, body: JSONDict) -> JSONDict:
        ids = body.get("ids")
        async with self._errors():
            state = JobState(body["state"]) if body.get("state") else None
            selection = BulkFilter(state=state, queue=body.get("queue"), name=body.get("name"),
                                   ids=tuple(ids) if ids is not None else None,
                                   limit=int(body.get("limit") or MAX_BULK))
            move = self.store.retry_many if BulkAction(action) is BulkAction.RETRY else self.store.cancel_many
            return (await move(selection)).to_json()

    async def set_paused(self, queue: str, paused: bool) -> JSONDict:
        async with self._errors():
            validate_queue(queue)
            await (self.store.pause_queue if paused else self.store.resume_queue)(queue)
        return {"queue": queue, "paused": paused}

    async def paused(self) -> set[str]:
        async with self._errors():
            return await self.store.paused_queues()

    async def ready(self) -> tuple[bool, JSONDict]:
        health = await self.store.health()
        body = {
            "ok": health.ok,
            "backend": health.backend,
            "version": health.version,
            "maxmemory_policy": health.maxmemory_policy,
            "detail": health.detail,
        }
        return health.ok, body

    async def metrics_text(self) -> str | None:
        return None

    async def close(self) -> None:
        if self._events is not None:
            await self._events.close()
        await self.store.close()

    def _errors(self) -> _StoreErrors:
        return _StoreErrors(self.where)


class _StoreErrors:
    """Maps the store contract's errors to OpsError (async context manager)."""

    def __init__(self, where: str) -> None:
        self.where = where

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            return
        mapped = map_store_error(exc, self.where)
        if mapped is not None:
            raise mapped from None


def _run_at(value: Any) -> float | None:
    """The body's run_at (an aware ISO time, as the HTTP API takes it, or epoch seconds)."""
    if value is None or isinstance(value, int | float):
        return value
    return datetime.fromisoformat(str(value)).timestamp()


def map_store_error(exc: BaseException, where: str) -> OpsError | None:
    """The OpsError for one of the store contract's errors (or an OSError), or None to let it propagate.

    Only the contract's errors are named here: each store turns its own (redis-py's, say) into
    `StoreUnavailableError` or `StoreFullError` itself, so this client works with any store.
    """
    if isinstance(exc, JobNotFoundError):
        return OpsError(str(exc) or "no such job", ExitCode.NOT_FOUND)
    if isinstance(exc, IllegalTransitionError):
        return OpsError(str(exc), ExitCode.REFUSED)
    if isinstance(exc, StoreFullError):
        return OpsError(f"Redis is out of memory: {exc}", ExitCode.REFUSED)
    if isinstance(exc, InvalidJobError):
        return OpsError(str(exc), ExitCode.USAGE)
    if isinstance(exc, StoreUnavailableError | OSError):
        text = str(exc)
        message = text if where in text else f"job store unavailable at {where}: {text}"
        return OpsError(message, ExitCode.UNAVAILABLE)
    return None
