"""What every client shares: a store, the memory-store refusal, and the default client per loop.

A memory store is private to the process that opens it, so a client in a process that runs no
worker on it would enqueue jobs nobody ever runs: it refuses, saying what to set.
`task.enqueue(...)` uses the client opened with `async with` on the running loop, else one
made from the environment on first use.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from backend.client.handle import JobHandle
from backend.client.watch import Watcher
from backend.config import Settings
from backend.workers import tracing
from backend.workers.job_store import JobStore
from backend.workers.models import JobSpec


class ClientConfigError(RuntimeError):
    """The client's settings cannot work (e.g. a memory store in a process without a worker)."""


WORKER_GRACE_SECONDS = 2.0  # a worker started in this process just now gets this long to register
NO_WORKER_HINT = (
    "JOB_STORE is {kind!r}: that store lives inside this process only, and no worker runs in this "
    "process, so the job would never run and would vanish when the process exits. Set JOB_STORE=redis "
    "and REDIS_URL (and BAGBOT_PREFIX) to the values your worker uses, or pass Client(store) a store "
    "that a worker in this process runs."
)


class Producer:
    """A store to enqueue on; `Client` adds the typed methods."""

    def __init__(self, store: JobStore, *, owns_store: bool = True) -> None:
        self.store = store
        self._owns_store = owns_store
        self._worker_seen = not store.needs_embedded_worker
        self.watcher = Watcher(store)  # job-event subscriptions shared by this client's waits

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """A client on the store the environment names, as the services read it."""
        from backend.workers.stores import create_job_store, private_to_one_process

        settings = Settings.from_env(env)
        if private_to_one_process(settings):
            raise ClientConfigError(NO_WORKER_HINT.format(kind=settings.job_store))
        return cls(create_job_store(settings))

    async def __aenter__(self) -> Self:
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
        await self.watcher.close()
        if self._owns_store:
            await self.store.close()

    async def enqueue_spec(self, spec: JobSpec) -> JobHandle[Any]:
        """Enqueue a validated spec (the typed methods build it)."""
        await self.check_worker()
        with tracing.enqueue_span(spec):  # the caller's trace context goes with the job (tracing.py)
            job = await self.store.enqueue(spec)
        return JobHandle(self.store, job.id, job.queue, job, self.watcher)

    async def check_worker(self) -> None:
        """A store private to this process needs a worker in this process, registered on it."""
        if self._worker_seen:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WORKER_GRACE_SECONDS
        while not await self.store.list_workers():
            if loop.time() > deadline:
                raise ClientConfigError(NO_WORKER_HINT.format(kind=self.store.backend))
            await asyncio.sleep(0.05)
        self._worker_seen = True


_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Producer] = weakref.WeakKeyDictionary()


def default_producer() -> Producer:
    """The client `task.enqueue(...)` uses on the running loop (kept for the loop's life)."""
    loop = asyncio.get_running_loop()
    client = _defaults.get(loop)
    if client is None:
        client = _defaults[loop] = Producer.from_env()
    return client


def set_default_client(client: Producer | None) -> None:
    """Make `client` what `task.enqueue(...)` uses on this event loop (None: forget it)."""
    loop = asyncio.get_running_loop()
    if client is None:
        _defaults.pop(loop, None)
    else:
        _defaults[loop] = client
