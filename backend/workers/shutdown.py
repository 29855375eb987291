"""Graceful shutdown: let running handlers finish within the grace period, give back the jobs
that did not (released, not lost, their attempt not counted), report what finished, then leave.

Every store call here is bounded: a worker asked to stop during an outage still exits, and what
it could not release or report runs again after its lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from backend.config import Settings
from backend.workers.execution import Execution
from backend.workers.job_store import JobStore
from backend.workers.leases import Leases
from backend.workers.logfmt import fmt
from backend.workers.outages import OUTAGE_ERRORS, ReconnectBackoff
from backend.workers.reporting import Reporter
from backend.workers.worker_state import Run, WorkerState

T = TypeVar("T")
log = logging.getLogger("bagbot.worker")

FINAL_BUDGET_SECONDS = 5.0  # release + last reports + deregister, after the grace period


class Shutdown:
    """Stop requests, and the steps from "stop claiming" to "deregistered"."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        state: WorkerState,
        reporter: Reporter,
        leases: Leases,
        execution: Execution,
    ) -> None:
        self.store = store
        self.settings = settings
        self.state = state
        self.reporter = reporter
        self.leases = leases
        self.execution = execution
        self._requests = 0

    def request_stop(self) -> None:
        """First call: stop claiming, let running jobs finish within the grace period.
        Later calls: stop waiting for them (they are still released, not lost)."""
        state = self.state
        self._requests += 1
        if self._requests == 1:
            log.info(fmt("stop_requested", worker=state.worker_id, running=len(state.runs),
                         grace=self.settings.shutdown_grace_seconds))
            state.stop.set()
        else:
            log.info(fmt("stop_hurried", worker=state.worker_id, running=len(state.runs),
                         action="cancelling running jobs and releasing them"))
            state.hurry.set()

    async def run(
        self,
        heartbeat: asyncio.Task[None],
        reporter: asyncio.Task[None],
        scheduler: asyncio.Task[None] | None,
    ) -> None:
        """Everything after the claim loop ended, in order; `heartbeat`, `reporter` and
        `scheduler` are the tasks running the leases', the reporter's and the scheduler's loops."""
        state, grace = self.state, self.settings.shutdown_grace_seconds
        if scheduler is not None:
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
        log.info(fmt("shutdown_started", worker=state.worker_id, running=len(state.runs), grace=grace))
        await self.wait_for_running(grace)
        leftover = await self.cancel_leftovers()
        deadline = time.monotonic() + FINAL_BUDGET_SECONDS
        if leftover:
            await self.release(leftover, deadline)
        state.closing = True
        self.reporter.wake()
        try:
            await asyncio.wait_for(reporter, timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            log.error(fmt("results_unreported", worker=state.worker_id, jobs=self.reporter.unreported,
                          detail="store unreachable; these jobs run again after their leases expire"))
        # A flag as well as cancel(): redis-py can absorb a cancellation that lands inside a command
        # (the call then returns normally), and the loop would beat on forever.
        self.leases.stopped = True
        heartbeat.cancel()
        await asyncio.wait({heartbeat}, timeout=self.settings.heartbeat_seconds + 1.0)
        await self.retry_until(
            "deregister", lambda: self.store.deregister_worker(state.worker_id),
            max(deadline, time.monotonic() + 1.0),
        )
        self.execution.close()
        state.registered = False
        c = state.counters
        log.info(fmt("worker_stopped", worker=state.worker_id, started=c.jobs_started, done=c.jobs_done,
                     retried=c.jobs_retried, failed=c.jobs_failed, released=c.jobs_released))

    async def wait_for_running(self, grace: float) -> None:
        """Let running handlers finish, until the grace period ends or a second stop request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        runs, hurry_event = self.state.runs, self.state.hurry
        while not hurry_event.is_set():
            tasks = {run.task for run in runs.values() if run.task is not None and not run.task.done()}
            remaining = deadline - loop.time()
            if not tasks or remaining <= 0:
                return
            hurry = asyncio.ensure_future(hurry_event.wait())
            await asyncio.wait({*tasks, hurry}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()

    async def cancel_leftovers(self) -> list[Run]:
        """Cancel the handlers still running (their outcomes are not reported); wait briefly for them."""
        leftover = [run for run in self.state.runs.values() if run.task is not None and not run.task.done()]
        for run in leftover:
            run.cancel_reason = "shutdown"
            assert run.task is not None
            run.task.cancel()
        if leftover:
            await asyncio.wait([run.task for run in leftover if run.task is not None], timeout=1.0)
        return leftover

    async def release(self, leftover: list[Run], deadline: float) -> None:
        """Give the cancelled runs' jobs back: enqueued again, their attempt not counted."""
        claims = [run.claim for run in leftover]
        released = await self.retry_until("release", lambda: self.store.release(claims), deadline)
        self.state.counters.jobs_released += released or 0
        log.info(fmt("jobs_released", worker=self.state.worker_id,
                     jobs=released if released is not None else 0, cancelled=len(claims),
                     detail="back in enqueued; the attempt is not counted"))

    async def retry_until(self, op: str, call: Callable[[], Awaitable[T]], deadline: float) -> T | None:
        """`call()` with outage retries, giving up at `deadline` (monotonic)."""
        backoff = ReconnectBackoff()
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await asyncio.wait_for(call(), timeout=max(0.01, remaining))
            except TimeoutError:
                pass
            except OUTAGE_ERRORS as exc:
                self.state.outage.failed(op, exc)
            except Exception as exc:
                log.exception(fmt(f"{op}_error", worker=self.state.worker_id, error=repr(exc)))
                return None
            delay = backoff.next()
            if time.monotonic() + delay >= deadline:
                log.error(fmt(f"{op}_gave_up", worker=self.state.worker_id,
                              detail="store unreachable at shutdown"))
                return None
            await asyncio.sleep(delay)
