"""The worker runtime: claim jobs, run handlers, heartbeat, report outcomes, shut down gracefully.

Every outcome is reported with the claim's fencing token, so a worker that
lost its lease (it was paused, cut off, or Redis restarted) cannot overwrite
what another worker did. Nothing is acknowledged before the handler ends:
a crash anywhere means the lease expires and the job runs again (at least
once), never that it is lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from backend.config import Settings
from backend.workers import (
    diagnostics,  # noqa: F401 - registers the built-in bagbot.* handlers
    tracing,
)
from backend.workers.execution import MAX_RESULT_BYTES, Execution, truncated_result
from backend.workers.handlers import HandlerRegistry, default_registry
from backend.workers.job_store import JobStore
from backend.workers.leases import PURGE_EVERY_SECONDS, Leases
from backend.workers.logfmt import fmt
from backend.workers.models import Claim, Job, WorkerInfo
from backend.workers.outages import OUTAGE_ERRORS, OutageLog, ReconnectBackoff
from backend.workers.progress import PROGRESS_INTERVAL, ProgressWriter
from backend.workers.reporting import COALESCE_SECONDS, MAX_REPORT_BATCH, Reporter
from backend.workers.scheduler import Scheduler
from backend.workers.shutdown import FINAL_BUDGET_SECONDS, Shutdown
from backend.workers.worker_state import Run, WorkerState

__all__ = [
    "COALESCE_SECONDS", "FINAL_BUDGET_SECONDS", "MAX_REPORT_BATCH", "MAX_RESULT_BYTES", "PROGRESS_INTERVAL",
    "PURGE_EVERY_SECONDS", "Worker", "default_worker_id", "truncated_result",
]

log = logging.getLogger("bagbot.worker")


def default_worker_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40]
    return f"{host or 'worker'}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("bagbot")
    except Exception:
        return ""


SHORT_WAIT_SECONDS = 0.1  # a due time nearer than this is waited for by a sleep, not a BLPOP

class Worker:
    """One worker: up to `settings.concurrency` jobs at a time from `settings.queues`.

    The claim loop lives here; the rest is done by parts that share one `WorkerState`:
    `Execution` runs a job, `Reporter` reports outcomes, `Leases` heartbeats, `Scheduler`
    fires periodic jobs and `Shutdown` stops gracefully.
    """

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        registry: HandlerRegistry | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry if registry is not None else default_registry
        self.id = worker_id or default_worker_id()
        self.queues = list(settings.queues)
        self.concurrency = settings.concurrency
        self.lease = settings.lease_seconds
        self.info = WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self.queues),
            concurrency=self.concurrency,
            version=_version(),
        )
        self.state = WorkerState(self.id, OutageLog(self.id, store.label))
        self.execution = Execution(self.registry, settings, self.id, ProgressWriter(store, self.id),
                                   slot_freed=self.state.slot_freed.set)
        self.reporter = Reporter(store, self.state)
        self.scheduler = Scheduler(store, settings, self.state, self.registry, self.queues)
        self.leases = Leases(store, settings, self.state, self.info, self.registry, self.reporter,
                             self.scheduler.declare)
        self.shutdown = Shutdown(store, settings, self.state, self.reporter, self.leases, self.execution)
        self._task: asyncio.Task[None] | None = None

    # -- public control --------------------------------------------------------------

    async def run(self) -> None:
        """Register, work until stopped, shut down gracefully, deregister."""
        if not await self.leases.register():
            return
        await self.leases.check_store()
        await self.scheduler.declare()
        scheduler = None
        if self.scheduler.schedules():
            scheduler = asyncio.create_task(self.scheduler.run(), name=f"scheduler:{self.id}")
        heartbeat = asyncio.create_task(self.leases.run(), name=f"heartbeat:{self.id}")
        reporter = asyncio.create_task(self.reporter.run(), name=f"report:{self.id}")
        try:
            await self._claim_loop()
        except asyncio.CancelledError:
            self.state.stop.set()
            self.state.hurry.set()
            await self.shutdown.run(heartbeat, reporter, scheduler)
            raise
        await self.shutdown.run(heartbeat, reporter, scheduler)

    def request_stop(self) -> None:
        """First call: stop claiming, let running jobs finish within the grace period.
        Later calls: stop waiting for them (they are still released, not lost)."""
        self.shutdown.request_stop()

    async def start(self) -> None:
        """Run in a background task (the API process's embedded worker)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"worker:{self.id}")

    async def stop(self) -> None:
        """Graceful stop of a worker started with `start()`."""
        self.request_stop()
        if self._task is not None:
            await self._task

    # -- what tests, logs and the embedded app read --------------------------------------

    @property
    def running(self) -> int:
        return len(self.state.runs)

    @property
    def registered(self) -> bool:
        return self.state.registered

    @property
    def max_result_bytes(self) -> int:
        return self.execution.max_result_bytes

    @max_result_bytes.setter
    def max_result_bytes(self, value: int) -> None:
        self.execution.max_result_bytes = value

    @property
    def jobs_started(self) -> int:
        return self.state.counters.jobs_started

    @property
    def jobs_done(self) -> int:
        return self.state.counters.jobs_done

    @property
    def jobs_failed(self) -> int:
        return self.state.counters.jobs_failed

    @property
    def jobs_retried(self) -> int:
        return self.state.counters.jobs_retried

    @property
    def jobs_released(self) -> int:
        return self.state.counters.jobs_released

    @property
    def jobs_cancelled(self) -> int:
        return self.state.counters.jobs_cancelled

    @property
    def outcomes_discarded(self) -> int:
        return self.state.counters.outcomes_discarded

    @property
    def store_resets(self) -> int:
        return self.state.counters.store_resets

    # -- claiming ----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        state = self.state
        backoff = ReconnectBackoff()
        while not state.stop.is_set():
            free = self._free_slots()
            if free <= 0:
                state.slot_freed.clear()
                await self._until_stopped(state.slot_freed.wait())
                continue
            if state.runs and free < self.concurrency // 2:
                await asyncio.sleep(COALESCE_SECONDS)
                free = self._free_slots()
            try:
                claiming = self.store.claim(self.id, self.queues, free, self.lease)
                jobs = await tracing.store_call("claim", claiming)
                for job in await self.leases.confirm(jobs):
                    self._start(job)
                if len(jobs) < free and not state.stop.is_set():
                    await self._wait_for_work()
            except OUTAGE_ERRORS as exc:
                state.outage.failed("claim", exc)
                await state.sleep_unless_stopped(backoff.next())
                continue
            except Exception as exc:
                state.unexpected("claim_error", exc)
                await state.sleep_unless_stopped(backoff.next())
                continue
            state.outage.recovered()
            state.expected_again("claim_error")
            backoff.reset()

    def _free_slots(self) -> int:
        """Slots not taken by a running job, nor by a sync handler's thread that outlived its run
        (it cannot be stopped): capacity a runaway thread holds is not handed out again."""
        return self.concurrency - len(self.state.runs) - self.execution.runaway_threads

    async def _wait_for_work(self) -> None:
        """Block until a job may be ready: woken by the store on enqueue, or at the next
        scheduled run_at / lease deadline, and at least once per heartbeat interval."""
        interval = self.settings.heartbeat_seconds
        wakeup = await self.store.next_wakeup(self.queues)
        if wakeup is not None and wakeup < SHORT_WAIT_SECONDS:
            # Redis checks blocking timeouts only at its timer ticks (hz 10: every 100 ms), so a
            # BLPOP this short would wake up to 100 ms late; rate-limited slots come every few ms
            await self.state.sleep_unless_stopped(wakeup)
            return
        timeout = interval if wakeup is None else min(interval, max(wakeup, 0.01))
        await self._until_stopped(self.store.wait_for_jobs(self.queues, timeout))

    async def _until_stopped(self, awaitable: Awaitable[Any]) -> None:
        """Await `awaitable`, but give up on it as soon as a stop is requested."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.state.stop.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if not work.cancelled():
            work.result()  # re-raise an outage from the wait itself

    def _start(self, job: Job) -> None:
        """Run a claimed job in its own task; the reporter collects its outcome when it ends."""
        claim = Claim(job.queue, job.id, job.token or "")
        run = Run(job=job, claim=claim, started=time.monotonic())
        # no task name: naming costs a string and a call per job, and the task is found by its Run
        run.task = asyncio.create_task(self.execution.execute(run))
        run.task.add_done_callback(functools.partial(self.reporter.run_done, run))
        self.state.runs[claim] = run
        self.state.counters.jobs_started += 1
        if self.state.first_time("claimed"):
            log.info(
                "✓ Jobs claimed exclusively (no duplicate processing) "
                + fmt("first_claim", worker=self.id, job=job.id, queue=job.queue, fencing="token per claim")
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(fmt("job_started", worker=self.id, job=job.id, queue=job.queue, name=job.name,
                          attempt=job.attempts))
