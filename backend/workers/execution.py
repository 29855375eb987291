"""Running one job: find its handler, call it under its timeout, check what it returned, and turn
every way that can end into a `Completion`.

The retry policy is not decided here: a failed run's Completion carries the handler's
`max_attempts` and `backoff`, and the store's finish step decides (one policy, in one place).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from backend.config import Settings
from backend.workers import tracing
from backend.workers.deadlines import Deadlines
from backend.workers.handlers import Handler, HandlerRegistry, JobContext, reset_current_job, set_current_job
from backend.workers.logfmt import fmt
from backend.workers.models import Completion, JobError
from backend.workers.process_executor import ChildError, run_in_process
from backend.workers.progress import ProgressWriter
from backend.workers.rules import InvalidJobError, check_json
from backend.workers.worker_state import Run

log = logging.getLogger("bagbot.worker")

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


class Execution:
    """Runs handlers: async ones on the loop, sync ones in a thread pool of `concurrency` threads,
    `executor="process"` ones in a child process each (see process_executor.py).

    A pool thread cannot be stopped. One that outlives its run (cancel request, stale claim,
    shutdown) is counted in `runaway_threads` until it returns, and the claim loop counts it as a
    busy slot: a job is never claimed only to wait in the pool's queue for a thread.
    """

    def __init__(
        self,
        registry: HandlerRegistry,
        settings: Settings,
        worker_id: str,
        progress: ProgressWriter,
        slot_freed: Callable[[], None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.worker_id = worker_id
        self.progress = progress
        self.max_result_bytes = MAX_RESULT_BYTES
        self.runaway_threads = 0  # pool threads still running a handler whose run has ended
        self._slot_freed = slot_freed
        self._executor: ThreadPoolExecutor | None = None
        self.deadlines = Deadlines()  # every run's timeout, on one timer

    def execute(self, run: Run) -> Coroutine[Any, Any, Completion]:
        """Run `run`'s handler (awaited in the task that runs the job); with tracing on, in a span."""
        if tracing.enabled():
            return self._traced(run)
        return self._execute(run)  # no span, no `with`: the usual path pays nothing for tracing

    async def _traced(self, run: Run) -> Completion:
        with tracing.run_span(run.job) as span:
            return tracing.outcome(span, await self._execute(run))

    async def _execute(self, run: Run) -> Completion:
        """Run the handler under its timeout; turn every way it can end into a Completion.

        Whatever the handler raises, BaseException included (SystemExit, KeyboardInterrupt, a
        CancelledError of its own), fails this job only. A CancelledError is passed on only when
        the worker itself cancelled the run (stale claim, cancel request, shutdown).
        """
        job = run.job
        handler = self.registry.get(job.name)
        if handler is None:  # handed back for a worker that has it (a rolling deploy), or failed
            grace = self.settings.unknown_handler_grace_seconds
            error = JobError(
                "UnknownHandler",
                f"no handler named {job.name!r} is registered in worker {self.worker_id}, nor in any live"
                f" worker for {grace:g}s (is its module listed in BAGBOT_TASKS?)",
            )
            return Completion(run.claim, 0.0, error=error, retryable=False, unknown_grace=grace)
        timeout = job.timeout or handler.timeout or self.settings.job_timeout_seconds
        loop = asyncio.get_running_loop()
        token = set_current_job(functools.partial(self._context, run, loop))  # made if asked for
        started = loop.time()
        self.deadlines.arm(run, started + timeout, loop)
        try:
            result = await self._invoke(handler, run, loop)
        except BaseException as exc:
            self.deadlines.disarm(run)
            if run.timed_out and _timeout_ended(run, exc):
                return await self._timed_out(run, handler, timeout, started)
            if isinstance(exc, asyncio.CancelledError) and _cancelled_by_worker(run):
                raise
            duration = loop.time() - started
            if isinstance(exc, ChildError):  # the handler's own error, from its child process
                return self._failure(run, handler, exc.error, exc.retryable, duration)
            error = JobError.from_exception(exc, _traceback_text())
            return self._failure(run, handler, error, handler.is_retryable(exc), duration)
        finally:
            reset_current_job(token)
            if run.thread is not None and not run.thread.done():
                self._hold_slot(run.thread)
        self.deadlines.disarm(run)
        if run.timed_out:  # it expired, but the handler swallowed the cancellation and returned
            _timeout_ended(run, None)
        duration = loop.time() - started
        try:
            return self._checked(run, handler, result, duration)
        except BaseException as exc:  # the result's own code raised (a __repr__ while naming a bad key)
            error = JobError("NonJsonResult", f"{job.name} returned a value that cannot be checked: "
                             f"{JobError.from_exception(exc).message}")
            return self._failure(run, handler, error, retryable=False, duration=duration)

    def _context(self, run: Run, loop: asyncio.AbstractEventLoop) -> JobContext:
        """The run's JobContext, made on its first `current_job()` (from any thread) and kept."""
        ctx = run.context
        if ctx is None:
            job = run.job
            ctx = run.context = JobContext(
                job.id, job.name, job.queue, job.attempts, job.max_attempts,
                self.progress.reporter(run, loop), job.parent_states, job.parent_results,
            )
        return ctx

    async def _timed_out(self, run: Run, handler: Handler, timeout: float, started: float) -> Completion:
        """JobTimeout. A sync handler's thread runs on: the job keeps its claim (and its lease, and
        its slot) until the thread returns, so a retry can never overlap the first run."""
        job = run.job
        if run.thread is not None and not run.thread.done():
            log.warning(fmt("job_timeout_thread_running", worker=self.worker_id, job=job.id, name=job.name,
                            timeout=timeout, action="sync thread cannot be stopped; the job is held"
                            " until it returns, then fails with JobTimeout"))
            waiter = asyncio.wrap_future(run.thread)
            waiter.add_done_callback(_retrieved)  # whatever the thread ends with, the outcome is the timeout
            await asyncio.wait([waiter])  # a cancel request still cancels this wait
        error = JobError("JobTimeout", f"{job.name} did not finish within its timeout ({timeout:g}s)")
        duration = asyncio.get_running_loop().time() - started
        return self._failure(run, handler, error, retryable=True, duration=duration)

    def _hold_slot(self, thread: Future[Any]) -> None:
        """The run ended but its thread did not: that thread keeps a slot until it returns."""
        self.runaway_threads += 1
        loop = asyncio.get_running_loop()
        thread.add_done_callback(lambda _: loop.call_soon_threadsafe(self._thread_returned))

    def _thread_returned(self) -> None:
        self.runaway_threads -= 1
        self._slot_freed()

    def _checked(self, run: Run, handler: Handler, result: Any, duration: float) -> Completion:
        """A result must be JSON, and one too large to store whole is stored as a marker."""
        if result is None and self.max_result_bytes >= 4:  # `null`: nothing to check
            return Completion(run.claim, duration)
        job = run.job
        try:
            encoded = check_json("result", result)
        except InvalidJobError as exc:
            error = JobError("NonJsonResult", f"{job.name} returned a value that is not JSON: {exc}")
            return self._failure(run, handler, error, retryable=False, duration=duration)
        if len(encoded) > self.max_result_bytes:
            result = truncated_result(encoded, self.max_result_bytes)
            log.warning(fmt("result_truncated", worker=self.worker_id, job=job.id, name=job.name,
                            size=len(encoded), limit=self.max_result_bytes))
        return Completion(run.claim, duration, result=result)

    @staticmethod
    def _failure(run: Run, handler: Handler, error: JobError, retryable: bool, duration: float) -> Completion:
        """A failed run, with the handler's policy attached: the store's finish step decides."""
        return Completion(run.claim, duration, error=error, retryable=retryable,
                          max_attempts=handler.max_attempts, backoff=handler.backoff)

    async def _invoke(self, handler: Handler, run: Run, loop: asyncio.AbstractEventLoop) -> Any:
        job = run.job
        if handler.executor == "process":
            return await run_in_process(handler, job, self._context(run, loop))
        if handler.is_async:
            return await handler.fn(*job.args, **job.kwargs)
        call = functools.partial(handler.fn, *job.args, **job.kwargs)
        # copy_context: current_job() works inside the thread too
        run.thread = self._pool().submit(contextvars.copy_context().run, call)
        result = await asyncio.wrap_future(run.thread)
        if inspect.isawaitable(result):  # a "sync" callable that returned a coroutine
            result = await result
        return result

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.concurrency, thread_name_prefix=f"bagbot-{self.worker_id[-6:]}"
            )
        return self._executor

    def close(self) -> None:
        """Drop the thread pool without waiting: a sync handler that outlived shutdown is abandoned
        (its job was released and runs again elsewhere)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _timeout_ended(run: Run, exc: BaseException | None) -> bool:
    """The run's deadline expired (its task was cancelled for it): take that cancellation back,
    and say whether `exc` is how the timeout ended the handler. As asyncio.timeout does: the
    timeout's own CancelledError (no other cancel pending), or a TimeoutError the handler raised
    instead; any other outcome stands (a handler that swallowed the cancellation keeps its result)."""
    task = asyncio.current_task()
    pending = task.uncancel() if task is not None and task.cancelling() > 0 else 0
    if isinstance(exc, asyncio.CancelledError):
        return pending == 0 and run.cancel_reason is None
    return isinstance(exc, TimeoutError)


def _cancelled_by_worker(run: Run) -> bool:
    """The worker cancels a run by cancelling its task (and says why in `cancel_reason`); a
    CancelledError the handler raised by itself comes with no pending cancel request."""
    task = asyncio.current_task()
    return run.cancel_reason is not None or (task is not None and task.cancelling() > 0)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _traceback_text() -> str:
    try:
        return traceback.format_exc()
    except BaseException:
        return ""
