"""`JobHandle[R]`: one job seen from the code that enqueued it — status, result, cancel, progress.

Waiting for a result listens to the job's events (pub/sub on its queue, asked for with
`events=True`, which handles' enqueues set) and re-reads the job on each event; a slow re-read
every `RECHECK_SECONDS` covers an event missed (pub/sub is best effort), and a job enqueued
without events, or a store that cannot subscribe, is re-read at that pace only.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from backend.client.watch import Watcher
from backend.workers.job_store import JobNotFoundError, JobStore
from backend.workers.models import Job, JobError, JobState

R = TypeVar("R")
RECHECK_SECONDS = 2.0  # a re-read in case an event was missed; events normally wake a waiter at once
SETTLE_RECHECK_SECONDS = 0.1  # the pace while a new subscription may not be in place yet (watch.py)
NO_EVENTS_RECHECK_SECONDS = 0.2  # the pace for a job that publishes no events, or a broken subscription


class JobFailed(Exception):
    """The job ended `failed`: `error` is the handler's last error (type, message, traceback)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.error: JobError = job.last_error or JobError("Unknown", "the job failed without an error")
        super().__init__(f"job {job.id} ({job.name}) failed after {job.attempts} attempt(s): "
                         f"{self.error.type}: {self.error.message}")


class JobCancelled(Exception):
    """The job ended `cancelled` (by `cancel()`, the CLI or the API)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.id} ({job.name}) was cancelled")


@dataclass(frozen=True, slots=True)
class Progress:
    """The last progress a running handler reported (`report_progress`), None before any."""

    value: float | None
    message: str | None


class JobHandle(Generic[R]):
    """A job by id; `R` is its handler's return type (Any for jobs enqueued by name)."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        queue: str | None = None,
        job: Job | None = None,
        watcher: Watcher | None = None,
    ) -> None:
        self.store = store
        self.id = job_id
        self.queue = queue
        self._job = job
        self._watcher = watcher  # the client's shared subscriptions; None: one of its own per wait

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} queue={self.queue}>"

    async def info(self) -> Job:
        """The job record as the store has it now. Raises JobNotFoundError (e.g. purged)."""
        job = await self.store.get(self.id, self.queue)
        if job is None:
            raise JobNotFoundError(f"no job {self.id}")
        self._job, self.queue = job, job.queue
        return job

    async def status(self) -> JobState:
        """The job's state now."""
        return (await self.info()).state

    async def progress(self) -> Progress:
        """The last progress its handler reported."""
        job = await self.info()
        return Progress(job.progress, job.progress_message)

    async def cancel(self) -> JobState:
        """Cancel it: a waiting job becomes `cancelled` at once; a running one is asked to stop
        (its worker stops the handler at the next heartbeat), so this returns `running` then."""
        job = await self.store.cancel(self.id, self.queue)
        self._job = job
        return job.state

    async def result(self, timeout: float | None = None) -> R:
        """Wait until the job ends and return the handler's return value. Raises JobFailed,
        JobCancelled, or TimeoutError after `timeout` seconds (the job keeps going)."""
        job = await asyncio.wait_for(self._wait_terminal(), timeout)
        return cast(R, outcome(job))

    async def _wait_terminal(self) -> Job:
        job = await self.info()
        if job.is_terminal:
            return job
        watcher = self._watcher or Watcher(self.store)
        try:
            feed = watcher.feed(job.queue) if job.events else None
            if feed is None:
                return await self._reread_until_terminal()
            with feed.watching(self.id) as changed:
                job = await self.info()  # registered now: a change from here on wakes us
                while not job.is_terminal:
                    if feed.broken is not None:  # the store cannot subscribe: re-read instead
                        return await self._reread_until_terminal()
                    pace = RECHECK_SECONDS if feed.settled else SETTLE_RECHECK_SECONDS
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), pace)
                    changed.clear()
                    job = await self.info()
            return job
        finally:
            if watcher is not self._watcher:
                await watcher.close()

    async def _reread_until_terminal(self) -> Job:
        job = await self.info()
        while not job.is_terminal:
            await asyncio.sleep(NO_EVENTS_RECHECK_SECONDS)
            job = await self.info()
        return job


def outcome(job: Job) -> Any:
    """The result of a finished job, or the error its end means."""
    if job.state is JobState.DONE:
        return cast(Any, job.result)
    if job.state is JobState.CANCELLED:
        raise JobCancelled(job)
    raise JobFailed(job)
