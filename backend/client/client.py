"""`Client`: the application's connection to the job store, with the services' settings.

`Client.from_env()` reads the same environment as the worker and the API (JOB_STORE,
REDIS_URL, BAGBOT_PREFIX, ...). A memory store is private to the process that opens it, so a
client in a process that runs no worker on it would enqueue jobs nobody ever runs: it refuses,
saying what to set. `Client.sync_from_env()` gives the blocking facade (`backend.client.sync`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from backend.client.handle import JobHandle
from backend.client.options import JobOptions
from backend.config import Settings
from backend.workers.job_store import JobStore
from backend.workers.models import JSON

if TYPE_CHECKING:
    from backend.client.sync import SyncClient
    from backend.client.tasks import Task

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C")


class ClientConfigError(RuntimeError):
    """The client's settings cannot work (e.g. a memory store in a process without a worker)."""


WORKER_GRACE_SECONDS = 2.0
NO_WORKER_HINT = (
    "JOB_STORE is {kind!r}: that store lives inside this process only, and no worker runs in this "
    "process, so the job would never run and would vanish when the process exits. Set JOB_STORE=redis "
    "and REDIS_URL (and BAGBOT_PREFIX) to the values your worker uses, or pass Client(store) a store "
    "that a worker in this process runs."
)


class Client:
    """Enqueues jobs and hands out `JobHandle`s. Use it as `async with Client.from_env() as client:`."""

    def __init__(self, store: JobStore, *, owns_store: bool = True) -> None:
        self.store = store
        self._owns_store = owns_store
        self._worker_seen = not store.needs_embedded_worker

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Client:
        """A client on the store the environment names, as the services read it."""
        from backend.workers.stores import create_job_store, private_to_one_process

        settings = Settings.from_env(env)
        if private_to_one_process(settings):
            raise ClientConfigError(NO_WORKER_HINT.format(kind=settings.job_store))
        return cls(create_job_store(settings))

    @classmethod
    def sync_from_env(cls, env: Mapping[str, str] | None = None) -> SyncClient:
        """The blocking facade for scripts and Django/Flask views: no event loop needed."""
        from backend.client.sync import SyncClient

        return SyncClient(lambda: cls.from_env(env))

    async def __aenter__(self) -> Client:
        _defaults[asyncio.get_running_loop()] = self
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        loop = asyncio.get_running_loop()
        if _defaults.get(loop) is self:
            del _defaults[loop]
        await self.close()

    async def close(self) -> None:
        if self._owns_store:
            await self.store.close()

    async def enqueue(self, task: Task[P, R, C], /, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue `task(*args, **kwargs)` as a job, with the task's `with_options(...)`."""
        return await self._enqueue_spec(task.options.spec(task.name, list(args), dict(kwargs)))

    async def enqueue_name(
        self,
        name: str,
        args: Sequence[JSON] = (),
        kwargs: Mapping[str, JSON] | None = None,
        *,
        queue: str | None = None,
        delay: float | None = None,
        run_at: datetime | float | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        id: str | None = None,  # the job's id
        max_attempts: int | None = None,
        timeout: float | None = None,
        events: bool | None = None,
    ) -> JobHandle[Any]:
        """Enqueue a job by handler name, for callers that do not import the handler (untyped)."""
        options = JobOptions(queue=queue, delay=delay, run_at=run_at, priority=priority,
                             unique_key=unique_key, id=id, max_attempts=max_attempts, timeout=timeout,
                             events=events)
        return await self._enqueue_spec(options.spec(name, list(args), dict(kwargs or {})))

    def job(self, job_id: str, queue: str | None = None) -> JobHandle[Any]:
        """The handle of an existing job (its queue speeds up the look-up, if known)."""
        return JobHandle(self.store, job_id, queue)

    async def _enqueue_spec(self, spec: Any) -> JobHandle[Any]:
        await self._check_worker()
        job = await self.store.enqueue(spec)
        return JobHandle(self.store, job.id, job.queue, job)

    async def _check_worker(self) -> None:
        """A store private to this process needs a worker in this process, registered on it."""
        if self._worker_seen:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WORKER_GRACE_SECONDS  # a worker started just now registers soon
        while not await self.store.list_workers():
            if loop.time() > deadline:
                raise ClientConfigError(NO_WORKER_HINT.format(kind=self.store.backend))
            await asyncio.sleep(0.05)
        self._worker_seen = True


_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client] = weakref.WeakKeyDictionary()


def default_client() -> Client:
    """The client `task.enqueue(...)` uses: the one open in `async with` on this event loop, else
    one made from the environment on first use (kept for the loop's life)."""
    loop = asyncio.get_running_loop()
    client = _defaults.get(loop)
    if client is None:
        client = _defaults[loop] = Client.from_env()
    return client


def set_default_client(client: Client | None) -> None:
    """Make `client` what `task.enqueue(...)` uses on this event loop (None: forget it)."""
    loop = asyncio.get_running_loop()
    if client is None:
        _defaults.pop(loop, None)
    else:
        _defaults[loop] = client
