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
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backend.config import Settings
from backend.workers.handlers import Handler, HandlerRegistry, JobContext, reset_current_job, set_current_job
from backend.workers.logfmt import fmt
from backend.workers.models import Completion, Job, JobError
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
    """Runs handlers: async ones on the loop, sync ones in a thread pool of `concurrency` threads."""

    def __init__(
        self, registry: HandlerRegistry, settings: Settings, worker_id: str, progress: ProgressWriter
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.worker_id = worker_id
        self.progress = progress
        self.max_result_bytes = MAX_RESULT_BYTES
        self._executor: ThreadPoolExecutor | None = None

    async def execute(self, run: Run) -> Completion:
        """Run the handler under its timeout; turn every way it can end into a Completion."""
        job, claim = run.job, run.claim
        handler = self.registry.get(job.name)
        if handler is None:
            error = JobError(
                "UnknownHandler",
                f"no handler named {job.name!r} is registered in worker {self.worker_id}"
                " (is its module listed in BAGBOT_TASKS?)",
            )
            return Completion(claim, 0.0, error=error, retryable=False)
        timeout = job.timeout or handler.timeout or self.settings.job_timeout_seconds
        report = self.progress.reporter(run)
        ctx = JobContext(job.id, job.name, job.queue, job.attempts, job.max_attempts, report)
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
        return self._checked(run, handler, result, duration)

    def _checked(self, run: Run, handler: Handler, result: Any, duration: float) -> Completion:
        """A result must be JSON, and one too large to store whole is stored as a marker."""
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
                max_workers=self.settings.concurrency, thread_name_prefix=f"bagbot-{self.worker_id[-6:]}"
            )
        return self._executor

    def close(self) -> None:
        """Drop the thread pool without waiting: a sync handler that outlived shutdown is abandoned
        (its job was released and runs again elsewhere)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
