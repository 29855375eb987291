"""The worker runtime: claim jobs, run handlers, heartbeat, report outcomes, shut down gracefully.

Every outcome is reported with the claim's fencing token, so a worker that
lost its lease (it was paused, cut off, or Redis restarted) cannot overwrite
what another worker did. Nothing is acknowledged before the handler ends:
a crash anywhere means the lease expires and the job runs again (at least
once), never that it is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from backend.config import Settings
from backend.workers import diagnostics  # noqa: F401 - registers the built-in bagbot.* handlers
from backend.workers.handlers import (
    Handler,
    HandlerRegistry,
    JobContext,
    default_registry,
    reset_current_job,
    set_current_job,
)
from backend.workers.job_store import JobStore
from backend.workers.logfmt import fmt
from backend.workers.models import Claim, Completion, Job, JobError, JobState, WorkerInfo
from backend.workers.outages import OUTAGE_ERRORS, OutageLog, ReconnectBackoff
from backend.workers.rules import InvalidJobError, check_json
from backend.workers.schedules import Schedule, due_fire, fire_spec, info_of

T = TypeVar("T")
log = logging.getLogger("bagbot.worker")

PURGE_EVERY_SECONDS = 300.0
FINAL_BUDGET_SECONDS = 5.0  # release + last reports + deregister, after the grace period
MAX_REPORT_BATCH = 500
# While jobs are running, wait this long for more slots (or more results) before a claim (or a
# report): one round trip then carries many jobs. An idle worker claims at once, so start latency
# does not pay it.
COALESCE_SECONDS = 0.001
PROGRESS_INTERVAL = 0.5  # at most one progress write per job this often; the latest value wins


# A result larger than this (as JSON) is stored as a marker with a preview instead: one huge result
# must not fill Redis (noeviction: every enqueue would then fail) nor slow every read of the job.
MAX_RESULT_BYTES = 256 * 1024

def truncated_result(encoded: bytes, limit: int) -> dict[str, object]:
    """The marker stored instead of an oversized result: its size and the start of its JSON text
    (half the limit, so the escaped preview still fits within it)."""
    return {
        "truncated": True,
        "size": len(encoded),
        "limit": limit,
        "preview": encoded[: limit // 2].decode("utf-8", errors="ignore"),
    }


def default_worker_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40]
    return f"{host or 'worker'}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("bagbot")
    except Exception:
        return ""


@dataclass(slots=True)
class _Run:
    """One handler execution in progress."""

    job: Job
    claim: Claim
    started: float
    task: asyncio.Task[Completion] | None = None
    # "stale" or "shutdown": its outcome is not reported; "cancel": reported as cancelled
    cancel_reason: str | None = None
    progress: tuple[float, str] | None = None  # latest value not yet written
    progress_at: float = float("-inf")  # monotonic time of the last write
    progress_task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Outcome:
    completion: Completion
    job: Job


class Worker:
    """One worker: up to `settings.concurrency` jobs at a time from `settings.queues`."""

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
        self.max_result_bytes = MAX_RESULT_BYTES
        self.info = WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self.queues),
            concurrency=self.concurrency,
            version=_version(),
        )
        # counters, for tests, logs and the embedded app
        self.jobs_started = 0
        self.jobs_done = 0
        self.jobs_failed = 0
        self.jobs_retried = 0
        self.jobs_released = 0
        self.jobs_cancelled = 0
        self.outcomes_discarded = 0
        self.store_resets = 0  # times Redis was seen to lose its data (see store_reset.py)
        self.registered = False

        self._runs: dict[Claim, _Run] = {}  # claim -> run whose handler is executing
        self._pending: list[_Outcome] = []  # finished, not yet reported
        self._reporting: list[_Outcome] = []  # being reported right now
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._pending_added = asyncio.Event()
        self._closing = False
        self._beats_stopped = False
        self._stop_requests = 0
        self._outage = OutageLog(self.id, store.label)
        self._executor: ThreadPoolExecutor | None = None
        self._reset_watch = store.reset_watch(self.queues, who=self.id)
        self._task: asyncio.Task[None] | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._declared = False  # handler limits and schedules published to the store
        self._last_purge = float("-inf")
        self._progress_logged = (0, 0, 0)
        self._said: set[str] = set()  # one-time ✓ log markers already written
        self._unexpected_seen: dict[str, str] = {}  # event -> last unexpected error, to log it once

    # -- public control --------------------------------------------------------------

    async def run(self) -> None:
        """Register, work until stopped, shut down gracefully, deregister."""
        if not await self._register():
            return
        await self._check_store()
        await self._declare()
        if self._schedules():
            self._scheduler = asyncio.create_task(self._scheduler_loop(), name=f"scheduler:{self.id}")
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat:{self.id}")
        reporter = asyncio.create_task(self._report_loop(), name=f"report:{self.id}")
        try:
            await self._claim_loop()
        except asyncio.CancelledError:
            self._stop.set()
            self._hurry.set()
            await self._shutdown(heartbeat, reporter)
            raise
        await self._shutdown(heartbeat, reporter)

    def request_stop(self) -> None:
        """First call: stop claiming, let running jobs finish within the grace period.
        Later calls: stop waiting for them (they are still released, not lost)."""
        self._stop_requests += 1
        if self._stop_requests == 1:
            log.info(fmt("stop_requested", worker=self.id, running=len(self._runs),
                         grace=self.settings.shutdown_grace_seconds))
            self._stop.set()
        else:
            log.info(fmt("stop_hurried", worker=self.id, running=len(self._runs),
                         action="cancelling running jobs and releasing them"))
            self._hurry.set()

    async def start(self) -> None:
        """Run in a background task (the API process's embedded worker)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"worker:{self.id}")

    async def stop(self) -> None:
        """Graceful stop of a worker started with `start()`."""
        self.request_stop()
        if self._task is not None:
            await self._task

    @property
    def running(self) -> int:
        return len(self._runs)

    def _unexpected(self, event: str, exc: BaseException) -> None:
        """A bug rather than an outage: log it with its traceback, but not again while it repeats."""
        signature = f"{type(exc).__name__}: {exc}"
        if self._unexpected_seen.get(event) != signature:
            self._unexpected_seen[event] = signature
            log.exception(fmt(event, worker=self.id, error=signature, action="retrying with backoff"))

    # -- start-up ----------------------------------------------------------------------

    async def _register(self) -> bool:
        backoff = ReconnectBackoff()
        while not self._stop.is_set():
            try:
                await self.store.register_worker(self.info)
                break
            except OUTAGE_ERRORS as exc:
                self._outage.failed("register", exc)
                await self._sleep_unless_stopped(backoff.next())
        else:
            log.info(fmt("worker_stopped", worker=self.id, reason="stopped before it could register"))
            return False
        self._outage.recovered()
        self.registered = True
        log.info(
            "✓ Worker registration successful "
            + fmt(
                "worker_registered",
                worker=self.id,
                pid=self.info.pid,
                queues=",".join(self.queues),
                concurrency=self.concurrency,
                store=self.store.backend,
                url=self.store.label if self.store.label != self.store.backend else None,
                heartbeat=self.settings.heartbeat_seconds,
                lease=self.lease,
                handlers=len(self.registry),
            )
        )
        return True

    async def _check_store(self) -> None:
        health = await self.store.health()
        if not health.ok:
            log.warning(fmt("store_unhealthy", worker=self.id, detail=health.detail))
        elif not health.policy_ok:
            log.warning(
                fmt(
                    "redis_policy_unsafe",
                    worker=self.id,
                    maxmemory_policy=health.maxmemory_policy,
                    detail="Redis may EVICT jobs when full; set maxmemory-policy noeviction",
                )
            )

    # -- claiming ----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = ReconnectBackoff()
        while not self._stop.is_set():
            free = self.concurrency - len(self._runs)
            if free <= 0:
                self._slot_freed.clear()
                await self._until_stopped(self._slot_freed.wait())
                continue
            if self._runs and free < self.concurrency // 2:
                await asyncio.sleep(COALESCE_SECONDS)
                free = self.concurrency - len(self._runs)
            try:
                jobs = await self.store.claim(self.id, self.queues, free, self.lease)
                for job in jobs:
                    self._start(job)
                if len(jobs) < free and not self._stop.is_set():
                    await self._wait_for_work()
            except OUTAGE_ERRORS as exc:
                self._outage.failed("claim", exc)
                await self._sleep_unless_stopped(backoff.next())
                continue
            except Exception as exc:
                self._unexpected("claim_error", exc)
                await self._sleep_unless_stopped(backoff.next())
                continue
            self._outage.recovered()
            self._unexpected_seen.pop("claim_error", None)
            backoff.reset()

    async def _wait_for_work(self) -> None:
        """Block until a job may be ready: woken by the store on enqueue, or at the next
        scheduled run_at / lease deadline, and at least once per heartbeat interval."""
        interval = self.settings.heartbeat_seconds
        wakeup = await self.store.next_wakeup(self.queues)
        timeout = interval if wakeup is None else min(interval, max(wakeup, 0.01))
        await self._until_stopped(self.store.wait_for_jobs(self.queues, timeout))

    async def _until_stopped(self, awaitable: Awaitable[Any]) -> None:
        """Await `awaitable`, but give up on it as soon as a stop is requested."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if not work.cancelled():
            work.result()  # re-raise an outage from the wait itself

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    # -- running jobs --------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        claim = Claim(job.queue, job.id, job.token or "")
        run = _Run(job=job, claim=claim, started=time.monotonic())
        run.task = asyncio.create_task(self._execute(run), name=f"job:{job.id}")
        run.task.add_done_callback(functools.partial(self._on_run_done, run))
        self._runs[claim] = run
        self.jobs_started += 1
        if "claimed" not in self._said:
            self._said.add("claimed")
            log.info(
                "✓ Jobs claimed exclusively (no duplicate processing) "
                + fmt("first_claim", worker=self.id, job=job.id, queue=job.queue, fencing="token per claim")
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(fmt("job_started", worker=self.id, job=job.id, queue=job.queue, name=job.name,
                          attempt=job.attempts))

    def _on_run_done(self, run: _Run, task: asyncio.Task[Completion]) -> None:
        self._runs.pop(run.claim, None)
        self._slot_freed.set()
        if run.cancel_reason == "cancel":  # stopped on request: running -> cancelled, not retried
            completion = Completion(run.claim, time.monotonic() - run.started, cancelled=True)
            self._pending.append(_Outcome(completion, run.job))
            self._pending_added.set()
            return
        if task.cancelled() or run.cancel_reason is not None:
            return  # stale: someone else owns the job now; shutdown: released separately
        exc = task.exception()
        if exc is not None:  # _execute catches handler errors; this is a bug in the worker itself
            log.error(fmt("job_crashed", worker=self.id, job=run.job.id, error=repr(exc)))
            return  # not reported: the lease expires and the job runs again
        self._pending.append(_Outcome(task.result(), run.job))
        self._pending_added.set()

    async def _execute(self, run: _Run) -> Completion:
        """Run the handler under its timeout; turn every way it can end into a Completion."""
        job, claim = run.job, run.claim
        handler = self.registry.get(job.name)
        if handler is None:
            error = JobError(
                "UnknownHandler",
                f"no handler named {job.name!r} is registered in worker {self.id}"
                " (is its module listed in BAGBOT_TASKS?)",
            )
            return Completion(claim, 0.0, error=error, retryable=False)
        timeout = job.timeout or handler.timeout or self.settings.job_timeout_seconds
        ctx = JobContext(job.id, job.name, job.queue, job.attempts, job.max_attempts, self._reporter(run))
        token = set_current_job(ctx)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout) as scope:
                result = await self._invoke(handler, job)
        except Exception as exc:
            duration = time.perf_counter() - started
            if isinstance(exc, TimeoutError) and scope.expired():
                error = JobError("JobTimeout", f"{job.name} did not finish within its timeout ({timeout:g}s)")
                return self._failure(run, handler, error, retryable=True, duration=duration)
            error = JobError.from_exception(exc, traceback.format_exc())
            return self._failure(run, handler, error, handler.is_retryable(exc), duration)
        finally:
            reset_current_job(token)
        duration = time.perf_counter() - started
        try:
            encoded = check_json("result", result)
        except InvalidJobError as exc:
            error = JobError("NonJsonResult", f"{job.name} returned a value that is not JSON: {exc}")
            return self._failure(run, handler, error, retryable=False, duration=duration)
        if len(encoded) > self.max_result_bytes:
            result = truncated_result(encoded, self.max_result_bytes)
            log.warning(fmt("result_truncated", worker=self.id, job=job.id, name=job.name,
                            size=len(encoded), limit=self.max_result_bytes))
        return Completion(claim, duration, result=result)

    def _failure(
        self, run: _Run, handler: Handler, error: JobError, retryable: bool, duration: float
    ) -> Completion:
        """A failed run, with the handler's policy attached: the store's finish step decides."""
        return Completion(run.claim, duration, error=error, retryable=retryable,
                          max_attempts=handler.max_attempts, backoff=handler.backoff)

    async def _invoke(self, handler: Handler, job: Job) -> Any:
        if handler.is_async:
            return await handler.fn(*job.args, **job.kwargs)
        call = functools.partial(handler.fn, *job.args, **job.kwargs)
        loop = asyncio.get_running_loop()
        # copy_context: current_job() works inside the thread too
        result = await loop.run_in_executor(self._pool(), contextvars.copy_context().run, call)
        if inspect.isawaitable(result):  # a "sync" callable that returned a coroutine
            result = await result
        return result

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=f"bagbot-{self.id[-6:]}"
            )
        return self._executor

    # -- reporting -------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        """Send finished outcomes in batches; during an outage keep them and try again."""
        backoff = ReconnectBackoff()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._pending_added.clear()
                await self._pending_added.wait()
                continue
            if len(self._pending) < MAX_REPORT_BATCH and self._runs and not self._closing:
                await asyncio.sleep(COALESCE_SECONDS)  # let results that finish meanwhile share the call
            batch = self._pending[:MAX_REPORT_BATCH]
            del self._pending[: len(batch)]
            self._reporting = batch
            try:
                states = await self.store.finish([item.completion for item in batch])
            except OUTAGE_ERRORS as exc:
                self._pending[:0] = batch
                self._outage.failed("finish", exc)
                await self._outage.pause(backoff.next())
                continue
            except Exception as exc:
                log.exception(fmt("report_error", worker=self.id, jobs=len(batch), error=repr(exc),
                                  action="outcomes dropped; those jobs re-run after their leases expire"))
                continue
            finally:
                self._reporting = []
            self._outage.recovered()
            backoff.reset()
            for item, state in zip(batch, states, strict=True):
                self._log_outcome(item, state)

    def _log_outcome(self, item: _Outcome, state: JobState | None) -> None:
        if state is JobState.DONE:
            self.jobs_done += 1
            if not log.isEnabledFor(logging.DEBUG):
                return  # successes are summed up in the `progress` line of each heartbeat
        job, c = item.job, item.completion
        fields: dict[str, object] = {
            "worker": self.id, "job": job.id, "queue": job.queue, "name": job.name,
            "attempt": job.attempts, "duration": c.duration,
        }
        if c.error is not None:
            fields["error"] = f"{c.error.type}: {c.error.message}"[:300]
        if state is None:
            self.outcomes_discarded += 1
            log.warning(fmt("job_outcome_discarded", **fields,
                            reason="claim no longer current (lease expired; the job was re-queued)"))
        elif state is JobState.DONE:
            log.debug(fmt("job_done", **fields))
        elif state is JobState.CANCELLED:
            self.jobs_cancelled += 1
            log.info(fmt("job_cancelled", **fields, detail="stopped on a cancel request"))
        elif state is JobState.RETRY_SCHEDULED:
            self.jobs_retried += 1
            if "retry" not in self._said:
                self._said.add("retry")
                marker = fmt("first_retry", worker=self.id, job=job.id)
                log.info(f"✓ Retry scheduling working correctly {marker}")
            log.info(fmt("job_retry", **fields, max_attempts=job.max_attempts))
        else:
            self.jobs_failed += 1
            log.warning(fmt("job_failed", **fields, max_attempts=job.max_attempts))

    # -- heartbeats and housekeeping ----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_seconds
        backoff = ReconnectBackoff(cap=min(5.0, interval))
        delay = interval
        while not self._beats_stopped:
            if self._outage.since is None:
                await asyncio.sleep(delay)
            else:  # backing off: beat again as soon as any loop finds the store back
                await self._outage.pause(delay)
            try:
                await self._beat()
                if not self._closing:
                    await self._housekeeping()
            except OUTAGE_ERRORS as exc:
                self._outage.failed("heartbeat", exc)
                delay = backoff.next()
                continue
            except Exception as exc:
                self._unexpected("heartbeat_error", exc)
                delay = interval
                continue
            self._outage.recovered()
            self._unexpected_seen.pop("heartbeat_error", None)
            backoff.reset()
            delay = interval

    def _claims_held(self) -> list[Claim]:
        held = [run.claim for run in self._runs.values()]
        held += [item.completion.claim for item in self._pending]
        held += [item.completion.claim for item in self._reporting]
        return held

    async def _beat(self) -> None:
        self.info.running = len(self._runs)
        reply = await self.store.heartbeat(self.info, self._claims_held(), self.lease)
        stale, vanished = reply.stale, reply.vanished
        for claim in reply.cancel:
            self._cancel_on_request(claim)
        if vanished:
            detail = fmt("worker_reregistered", worker=self.id)
            log.warning(f"worker entry vanished (Redis lost data?) – re-registered {detail}")
        if self._reset_watch is not None and await self._reset_watch.check():
            self.store_resets += 1  # logged by the watcher; running claims came back stale above
        if "heartbeat" not in self._said:
            self._said.add("heartbeat")
            log.info("✓ Heartbeats being sent " + fmt("first_heartbeat", worker=self.id,
                                                       interval=self.settings.heartbeat_seconds))
        for claim in stale:
            self._drop_stale(claim)
        self._log_progress()

    def _log_progress(self) -> None:
        """One line per heartbeat with what happened since the last one (nothing when idle)."""
        totals = (self.jobs_done, self.jobs_retried, self.jobs_failed)
        if totals != self._progress_logged:
            done, retried, failed = (now - before for now, before in zip(totals, self._progress_logged,
                                                                         strict=True))
            log.info(fmt("progress", worker=self.id, done=done, retried=retried, failed=failed,
                         running=len(self._runs), total_done=self.jobs_done))
            self._progress_logged = totals

    def _drop_stale(self, claim: Claim) -> None:
        """The store says this claim is no longer ours: stop the handler, report nothing."""
        run = self._runs.get(claim)
        if run is not None and run.task is not None and not run.task.done():
            run.cancel_reason = "stale"
            run.task.cancel()
            log.warning(fmt("job_lease_lost", worker=self.id, job=claim.job_id, queue=claim.queue,
                            action="handler cancelled; its outcome will not be reported"))
            return
        for index, item in enumerate(self._pending):
            if item.completion.claim == claim:
                del self._pending[index]
                self.outcomes_discarded += 1
                log.warning(fmt("job_outcome_discarded", worker=self.id, job=claim.job_id, queue=claim.queue,
                                reason="lease expired before the result could be reported"))
                return

    def _cancel_on_request(self, claim: Claim) -> None:
        """Someone asked to cancel this running job: stop its handler and report it cancelled.
        An async handler gets CancelledError; a sync one cannot be interrupted: its thread runs
        on to the end, but its outcome is discarded."""
        run = self._runs.get(claim)
        if run is None or run.task is None or run.task.done() or run.cancel_reason is not None:
            return  # already finished: its own outcome is reported
        run.cancel_reason = "cancel"
        run.task.cancel()
        handler = self.registry.get(run.job.name)
        log.info(fmt("job_cancel_requested", worker=self.id, job=claim.job_id, queue=claim.queue,
                     name=run.job.name,
                     action="handler cancelled" if handler is None or handler.is_async
                     else "sync handler's thread runs on; its outcome is discarded"))

    # -- progress ------------------------------------------------------------------------------

    def _reporter(self, run: _Run) -> Callable[[float, str], None]:
        loop = asyncio.get_running_loop()

        def report(value: float, message: str) -> None:  # any thread: sync handlers run in a pool
            loop.call_soon_threadsafe(self._note_progress, run, value, message)

        return report

    def _note_progress(self, run: _Run, value: float, message: str) -> None:
        run.progress = (value, message)
        if run.progress_task is None or run.progress_task.done():
            run.progress_task = asyncio.create_task(self._write_progress(run), name=f"progress:{run.job.id}")

    async def _write_progress(self, run: _Run) -> None:
        while run.progress is not None:
            wait = run.progress_at + PROGRESS_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            value, message = run.progress
            run.progress = None
            run.progress_at = time.monotonic()
            try:
                await self.store.progress(run.claim, value, message)
            except Exception as exc:  # progress is best effort: never fail the job for it
                log.debug(fmt("progress_unsaved", worker=self.id, job=run.job.id, error=repr(exc)))

    # -- periodic jobs and limits -----------------------------------------------------------------

    def _schedules(self) -> list[tuple[str, Schedule]]:
        return self.registry.schedules()

    async def _declare(self) -> None:
        """Publish handler concurrency limits (read by the claim script) and schedules (listed by
        the API and CLI). Retried by housekeeping while the store is unreachable."""
        if self._declared:
            return
        limits = {h.name: h.limit for h in self.registry.handlers() if h.limit is not None}
        try:
            for queue in self.queues:
                await self.store.set_handler_limits(queue, limits)
            await self.store.register_schedules([info_of(name, sched) for name, sched in self._schedules()])
        except OUTAGE_ERRORS as exc:
            self._outage.failed("declare", exc)
            return
        self._declared = True

    async def _scheduler_loop(self) -> None:
        """Enqueue each fire time as a job with a deterministic id: every worker does it, the
        store's id dedup keeps one. Times come from the store's clock (see schedules.py)."""
        entries = [(info_of(name, sched), sched) for name, sched in self._schedules()]
        catch_up = self.settings.retention_seconds
        last: dict[str, float] = {}
        log.info(fmt("scheduler_started", worker=self.id, schedules=",".join(i.name for i, _ in entries)))
        while not self._stop.is_set():
            wait = 1.0
            try:
                now = await self.store.server_time()
                for info, sched in entries:
                    fire = due_fire(sched, now, catch_up)
                    if fire is not None and last.get(info.name) != fire:
                        job = await self.store.enqueue(fire_spec(info, fire))
                        last[info.name] = fire
                        log.debug(fmt("schedule_fired", worker=self.id, schedule=info.name, job=job.id))
                    upcoming = sched.next_after(now)
                    if upcoming is not None:
                        wait = min(wait, upcoming - now)
            except OUTAGE_ERRORS as exc:
                self._outage.failed("schedule", exc)
            except Exception as exc:
                self._unexpected("scheduler_error", exc)
            await self._sleep_unless_stopped(max(0.01, wait + 0.002))

    async def _housekeeping(self) -> None:
        await self._declare()
        recovered = await self.store.recover(self.queues)
        if recovered:
            log.info(fmt("leases_recovered", worker=self.id, jobs=recovered))
        await self.store.list_workers(stale_after=3 * self.lease)  # drops dead workers' entries
        if time.monotonic() - self._last_purge >= PURGE_EVERY_SECONDS:
            self._last_purge = time.monotonic()
            purged = await self.store.purge(self.settings.retention_seconds, self.queues)
            if purged:
                log.info(fmt("jobs_purged", worker=self.id, jobs=purged))

    # -- shutdown ----------------------------------------------------------------------------

    async def _shutdown(self, heartbeat: asyncio.Task[None], reporter: asyncio.Task[None]) -> None:
        grace = self.settings.shutdown_grace_seconds
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
        log.info(fmt("shutdown_started", worker=self.id, running=len(self._runs), grace=grace))
        await self._wait_for_running(grace)
        leftover = [run for run in self._runs.values() if run.task is not None and not run.task.done()]
        for run in leftover:
            run.cancel_reason = "shutdown"
            assert run.task is not None
            run.task.cancel()
        if leftover:
            await asyncio.wait([run.task for run in leftover if run.task is not None], timeout=1.0)
        deadline = time.monotonic() + FINAL_BUDGET_SECONDS
        if leftover:
            claims = [run.claim for run in leftover]
            released = await self._retry_until("release", lambda: self.store.release(claims), deadline)
            self.jobs_released += released or 0
            log.info(fmt("jobs_released", worker=self.id, jobs=released if released is not None else 0,
                         cancelled=len(claims), detail="back in enqueued; the attempt is not counted"))
        self._closing = True
        self._pending_added.set()
        try:
            await asyncio.wait_for(reporter, timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            unreported = len(self._pending) + len(self._reporting)
            log.error(fmt("results_unreported", worker=self.id, jobs=unreported,
                          detail="store unreachable; these jobs run again after their leases expire"))
        # A flag as well as cancel(): redis-py can absorb a cancellation that lands inside a command
        # (the call then returns normally), and the loop would beat on forever.
        self._beats_stopped = True
        heartbeat.cancel()
        await asyncio.wait({heartbeat}, timeout=self.settings.heartbeat_seconds + 1.0)
        await self._retry_until(
            "deregister", lambda: self.store.deregister_worker(self.id), max(deadline, time.monotonic() + 1.0)
        )
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self.registered = False
        log.info(fmt("worker_stopped", worker=self.id, started=self.jobs_started, done=self.jobs_done,
                     retried=self.jobs_retried, failed=self.jobs_failed, released=self.jobs_released))

    async def _wait_for_running(self, grace: float) -> None:
        """Let running handlers finish, until the grace period ends or a second stop request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while not self._hurry.is_set():
            tasks = {run.task for run in self._runs.values() if run.task is not None and not run.task.done()}
            remaining = deadline - loop.time()
            if not tasks or remaining <= 0:
                return
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait({*tasks, hurry}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()

    async def _retry_until(
        self, op: str, call: Callable[[], Awaitable[T]], deadline: float
    ) -> T | None:
        """`call()` with outage retries, giving up at `deadline` (monotonic)."""
        backoff = ReconnectBackoff()
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await asyncio.wait_for(call(), timeout=max(0.01, remaining))
            except TimeoutError:
                pass
            except OUTAGE_ERRORS as exc:
                self._outage.failed(op, exc)
            except Exception as exc:
                log.exception(fmt(f"{op}_error", worker=self.id, error=repr(exc)))
                return None
            delay = backoff.next()
            if time.monotonic() + delay >= deadline:
                log.error(fmt(f"{op}_gave_up", worker=self.id, detail="store unreachable at shutdown"))
                return None
            await asyncio.sleep(delay)

