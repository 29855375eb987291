"""Progress writes for running jobs: `report_progress()` may be called in a tight loop, so the
latest value is written at most once per PROGRESS_INTERVAL per job, never blocking the handler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from backend.workers.job_store import JobStore
from backend.workers.logfmt import fmt
from backend.workers.worker_state import Run

log = logging.getLogger("bagbot.worker")

PROGRESS_INTERVAL = 0.5  # at most one progress write per job this often; the latest value wins


class ProgressWriter:
    """Writes the progress handlers report, rate-limited per run, best effort."""

    def __init__(self, store: JobStore, worker_id: str) -> None:
        self.store = store
        self.worker_id = worker_id

    def reporter(
        self, run: Run, loop: asyncio.AbstractEventLoop | None = None
    ) -> Callable[[float, str], None]:
        """The callable a handler's JobContext carries; safe from any thread (it hands the value to
        `note` on `loop`, by default the running one)."""
        loop = loop or asyncio.get_running_loop()

        def report(value: float, message: str) -> None:  # any thread: sync handlers run in a pool
            loop.call_soon_threadsafe(self.note, run, value, message)

        return report

    def note(self, run: Run, value: float, message: str) -> None:
        run.progress = (value, message)
        if run.progress_task is None or run.progress_task.done():
            run.progress_task = asyncio.create_task(self._write(run), name=f"progress:{run.job.id}")

    async def _write(self, run: Run) -> None:
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
                log.debug(fmt("progress_unsaved", worker=self.worker_id, job=run.job.id, error=repr(exc)))
