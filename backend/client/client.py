"""`Client`: the application's connection to the job store, with the services' settings.

`Client.from_env()` reads the same environment as the worker and the API (JOB_STORE,
REDIS_URL, BAGBOT_PREFIX, ...). A memory store is private to the process that opens it, so a
client in a process that runs no worker on it would enqueue jobs nobody ever runs: it refuses,
saying what to set (`producer.py`). `Client.sync_from_env()` gives the blocking facade below: one
`Client` on an event loop in a daemon thread of its own, each call handed to it, so it is safe to
share between threads (a WSGI server's) and never blocks on a loop of the calling thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from backend.client.handle import JobHandle, Progress
from backend.client.options import JobOptions, Parent
from backend.client.producer import Producer
from backend.client.workflows import BatchHandle, Call, enqueue_batch, enqueue_chain
from backend.workers.models import JSON, Job, JobState

if TYPE_CHECKING:
    from backend.client.tasks import Task

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C")
T = TypeVar("T")


class Client(Producer):
    """Enqueues jobs and hands out `JobHandle`s. Use it as `async with Client.from_env() as client:`."""

    @classmethod
    def sync_from_env(cls, env: Mapping[str, str] | None = None) -> SyncClient:
        """The blocking facade for scripts and Django/Flask views: no event loop needed."""
        return SyncClient(cls.from_env(env))

    async def enqueue(self, task: Task[P, R, C], /, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue `task(*args, **kwargs)` as a job, with the task's `with_options(...)`."""
        return await self.enqueue_spec(task.options.spec(task.name, list(args), dict(kwargs)))

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
        depends_on: Sequence[Parent] | None = None,
        run_on_failure: bool | None = None,
        rate_key: str | None = None,
        rate: str | None = None,
    ) -> JobHandle[Any]:
        """Enqueue a job by handler name, for callers that do not import the handler (untyped)."""
        options = JobOptions(queue=queue, delay=delay, run_at=run_at, priority=priority,
                             unique_key=unique_key, id=id, max_attempts=max_attempts, timeout=timeout,
                             events=events, depends_on=None if depends_on is None else tuple(depends_on),
                             run_on_failure=run_on_failure, rate_key=rate_key, rate=rate)
        return await self.enqueue_spec(options.spec(name, list(args), dict(kwargs or {})))

    async def batch(self, calls: Sequence[Call[R]], callback: Call[Any] | None = None,
                    id: str | None = None) -> BatchHandle[R]:
        """Enqueue `calls` (`task.call(...)`, one queue) as a batch; `callback` runs once when every
        one has ended, whatever their outcomes (see backend/client/workflows.py)."""
        return await enqueue_batch(self, calls, callback, id)

    @overload
    async def chain(self, first: Call[Any], last: Call[R], /) -> JobHandle[R]: ...

    @overload
    async def chain(self, first: Call[Any], second: Call[Any], last: Call[R], /) -> JobHandle[R]: ...

    @overload
    async def chain(self, first: Call[Any], second: Call[Any], third: Call[Any], last: Call[R], /
                    ) -> JobHandle[R]: ...

    @overload
    async def chain(self, c1: Call[Any], c2: Call[Any], c3: Call[Any], c4: Call[Any], c5: Call[Any], /,
                    *more: Call[Any]) -> JobHandle[Any]: ...

    async def chain(self, *calls: Call[Any]) -> JobHandle[Any]:
        """Enqueue `calls` to run one after the other, each once the one before ended done (a failed
        or cancelled one cancels the rest); the handle of the last. A job reads the one before's
        result with `current_job().parent_results`."""
        return (await enqueue_chain(self, calls))[-1]

    def batch_of(self, batch_id: str, queue: str | None = None) -> BatchHandle[Any]:
        """The handle of an existing batch (its id is its callback's job id)."""
        return BatchHandle(self.store, batch_id, queue, [], self.job(batch_id, queue))

    def job(self, job_id: str, queue: str | None = None) -> JobHandle[Any]:
        """The handle of an existing job (its queue speeds up the look-up, if known)."""
        return JobHandle(self.store, job_id, queue, watcher=self.watcher)


# -- the blocking facade: one Client on an event loop in a daemon thread of its own -------------


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bagbot-client", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError("timed out waiting for the job") from None

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class SyncJobHandle(Generic[R]):
    """`JobHandle[R]` with blocking methods."""

    def __init__(self, runner: _LoopThread, handle: JobHandle[R]) -> None:
        self._runner, self._handle = runner, handle
        self.id = handle.id

    def __repr__(self) -> str:
        return f"<SyncJobHandle {self.id}>"

    def info(self) -> Job:
        return self._runner.call(self._handle.info())

    def status(self) -> JobState:
        return self._runner.call(self._handle.status())

    def progress(self) -> Progress:
        return self._runner.call(self._handle.progress())

    def cancel(self) -> JobState:
        return self._runner.call(self._handle.cancel())

    def result(self, timeout: float | None = None) -> R:
        """Block until the job ends; its return value, or JobFailed / JobCancelled / TimeoutError."""
        return self._runner.call(self._handle.result(timeout))


class SyncClient:
    """Blocking `Client`: `with Client.sync_from_env() as jobs: jobs.enqueue(send_email, "a@b.c")`."""

    def __init__(self, client: Client) -> None:
        self._client = client  # made (or refused: ClientConfigError) before a thread is started
        self._runner = _LoopThread()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._runner.call(self._client.close())
        self._runner.stop()

    def enqueue(self, task: Task[P, R, C], /, *args: P.args, **kwargs: P.kwargs) -> SyncJobHandle[R]:
        """Enqueue `task(*args, **kwargs)`; returns at once with the job's handle."""
        handle = self._runner.call(self._client.enqueue(task, *args, **kwargs))
        return SyncJobHandle(self._runner, handle)

    def enqueue_name(
        self, name: str, args: Sequence[JSON] = (), kwargs: Mapping[str, JSON] | None = None, **options: Any
    ) -> SyncJobHandle[Any]:
        """Enqueue by handler name (options as `Client.enqueue_name`)."""
        handle = self._runner.call(self._client.enqueue_name(name, args, kwargs, **options))
        return SyncJobHandle(self._runner, handle)

    def job(self, job_id: str, queue: str | None = None) -> SyncJobHandle[Any]:
        return SyncJobHandle(self._runner, self._client.job(job_id, queue))
