"""What the parts of one worker share: its running handlers, its stop signals, its counters.

The parts (execution, reporting, leases, scheduler, shutdown) never reach into the `Worker`:
each gets this object, so what they share is written down in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from backend.workers.handlers import JobContext
from backend.workers.logfmt import fmt
from backend.workers.models import Claim, Completion, Job
from backend.workers.outages import OutageLog

log = logging.getLogger("bagbot.worker")


@dataclass(slots=True)
class Run:
    """One handler execution in progress."""

    job: Job
    claim: Claim
    started: float
    task: asyncio.Task[Completion] | None = None
    thread: Future[Any] | None = None  # a sync handler's pool thread: it may outlive the task
    # "stale" or "shutdown": its outcome is not reported; "cancel": reported as cancelled
    cancel_reason: str | None = None
    progress: tuple[float, str] | None = None  # latest value not yet written
    progress_at: float = float("-inf")  # monotonic time of the last write
    progress_task: asyncio.Task[None] | None = None
    deadline: float | None = None  # loop time its timeout expires at, while armed (deadlines.py)
    timed_out: bool = False  # its deadline expired: its task was cancelled for the timeout
    context: JobContext | None = None  # what current_job() returns, made on first use


@dataclass(slots=True)
class Outcome:
    """A finished run waiting to be reported (the job is kept for the outcome's log line)."""

    completion: Completion
    job: Job


@dataclass(slots=True)
class Counters:
    """For tests, logs and the embedded app; each part counts what it does."""

    jobs_started: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_retried: int = 0
    jobs_released: int = 0
    jobs_cancelled: int = 0
    outcomes_discarded: int = 0
    store_resets: int = 0  # times Redis was seen to lose its data (see the store's reset watch)


@dataclass(slots=True, eq=False)
class WorkerState:
    """The state shared between the parts of one worker."""

    worker_id: str
    outage: OutageLog
    runs: dict[Claim, Run] = field(default_factory=dict)  # claim -> run whose handler is executing
    counters: Counters = field(default_factory=Counters)
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # stop claiming, start shutting down
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # stop waiting for running handlers
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False  # shutdown reached its final reports: no housekeeping, no coalescing
    registered: bool = False
    said: set[str] = field(default_factory=set)  # one-time ✓ log markers already written
    unexpected_seen: dict[str, str] = field(default_factory=dict)  # event -> last unexpected error

    def first_time(self, marker: str) -> bool:
        """True once per marker: the ✓ lines say a feature works, they need not repeat."""
        if marker in self.said:
            return False
        self.said.add(marker)
        return True

    def unexpected(self, event: str, exc: BaseException) -> None:
        """A bug rather than an outage: log it with its traceback, but not again while it repeats."""
        signature = f"{type(exc).__name__}: {exc}"
        if self.unexpected_seen.get(event) != signature:
            self.unexpected_seen[event] = signature
            log.exception(fmt(event, worker=self.worker_id, error=signature, action="retrying with backoff"))

    def expected_again(self, event: str) -> None:
        """The loop behind `event` worked again: a later error of the same kind is news."""
        self.unexpected_seen.pop(event, None)

    async def sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
