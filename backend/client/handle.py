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
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from backend.workers.job_store import JobNotFoundError, JobStore
from backend.workers.models import Job, JobError, JobState

if TYPE_CHECKING:
    from backend.workers.event_feed import EventFeed

R = TypeVar("R")
RECHECK_SECONDS = 2.0  # a re-read in case an event was missed; events normally wake a waiter at once
NO_EVENTS_RECHECK_SECONDS = 0.2  # the pace for a job that publishes no events


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
        self, store: JobStore, job_id: str, queue: str | None = None, job: Job | None = None
    ) -> None:
        self.store = store
        self.id = job_id
        self.queue = queue
        self._job = job

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
        job = self._job if self._job is not None and self._job.is_terminal else None
        if job is not None:
            return job
        job = await self.info()
        feed = _subscribe(self.store, job) if job.events and not job.is_terminal else None
        try:
            if feed is not None:
                job = await self.info()  # subscribed now: a change from here on wakes us
            while not job.is_terminal:
                feed = await _wait_change(feed, self.id, job.events)
                job = await self.info()
            return job
        finally:
            if feed is not None:
                await feed.close()


def outcome(job: Job) -> Any:
    """The result of a finished job, or the error its end means."""
    if job.state is JobState.DONE:
        return cast(Any, job.result)
    if job.state is JobState.CANCELLED:
        raise JobCancelled(job)
    raise JobFailed(job)


def _subscribe(store: JobStore, job: Job) -> EventFeed:
    from backend.workers.event_feed import EventFeed

    return EventFeed(store, [job.queue])


async def _wait_change(feed: EventFeed | None, job_id: str, events: bool) -> EventFeed | None:
    """Return when the job may have changed: an event for it, or the re-read interval. Returns
    the feed to go on with (None once the subscription broke: the job is then re-read slowly)."""
    if feed is None:
        await asyncio.sleep(NO_EVENTS_RECHECK_SECONDS if not events else RECHECK_SECONDS / 4)
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECHECK_SECONDS
    try:
        while (remaining := deadline - loop.time()) > 0:
            event = await feed.get(remaining)
            if event is None or event[0] == job_id:
                return feed
    except Exception:  # the store cannot subscribe (e.g. a restricted server): re-read instead
        with contextlib.suppress(Exception):
            await feed.close()
        return None
    return feed
