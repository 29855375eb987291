"""Reporting outcomes: finished runs are sent to the store in batches, fenced by their claims.

Nothing is acknowledged before the handler ends, and an outcome the store could not take (an
outage) is kept and sent again: until then its claim is still held, so heartbeats keep its lease.
"""

from __future__ import annotations

import asyncio
import logging
import time

from backend.workers import tracing
from backend.workers.job_store import JobStore
from backend.workers.logfmt import fmt
from backend.workers.models import Claim, Completion, Job, JobError, JobState
from backend.workers.outages import OUTAGE_ERRORS, ReconnectBackoff
from backend.workers.worker_state import Outcome, Run, WorkerState

log = logging.getLogger("bagbot.worker")

MAX_REPORT_BATCH = 500
# While jobs are running, wait this long for more slots (or more results) before a claim (or a
# report): one round trip then carries many jobs. An idle worker claims at once, so start latency
# does not pay it.
COALESCE_SECONDS = 0.001
# Loop turns the reporter lets pass before it sends a batch (no timer: the worker is not idle). The
# slots these outcomes freed wake the claim loop a few turns later (its wait is an asyncio.wait), and
# its claim, which the worker waits for, then reaches Redis before the finish, which nothing waits
# for: Redis runs the claim while the worker packs the finish. No-op drain: ~15% more jobs/s.
CLAIM_FIRST_TURNS = 3


class Reporter:
    """Owns the outcomes not yet reported (`pending`) and those being reported (`reporting`)."""

    def __init__(self, store: JobStore, state: WorkerState) -> None:
        self.store = store
        self.state = state
        self.pending: list[Outcome] = []  # finished, not yet reported
        self.reporting: list[Outcome] = []  # being reported right now
        self._added = asyncio.Event()

    def add(self, completion: Completion, job: Job) -> None:
        self.pending.append(Outcome(completion, job))
        self._added.set()

    def run_done(self, run: Run, task: asyncio.Task[Completion]) -> None:
        """A handler's task ended: free its slot and keep its outcome, unless it must not be reported."""
        self.state.runs.pop(run.claim, None)
        self.state.slot_freed.set()
        if run.cancel_reason == "cancel":  # stopped on request: running -> cancelled, not retried
            self.add(Completion(run.claim, time.monotonic() - run.started, cancelled=True), run.job)
            return
        if task.cancelled() or run.cancel_reason is not None:
            return  # stale: someone else owns the job now; shutdown: released separately
        exc = task.exception()
        if exc is not None:  # execution catches handler errors; this is a bug in the worker itself
            error = JobError.from_exception(exc)
            log.error(fmt("job_crashed", worker=self.state.worker_id, job=run.job.id,
                          error=f"{error.type}: {error.message}"[:300]))
            # reported at once (retryable), rather than left to expire as LeaseExpired
            completion = Completion(run.claim, time.monotonic() - run.started, error=error, retryable=True)
            self.add(completion, run.job)
            return
        self.add(task.result(), run.job)

    def claims(self) -> list[Claim]:
        """Claims of outcomes not reported yet: their leases must be kept alive until they are."""
        return [item.completion.claim for item in (*self.pending, *self.reporting)]

    @property
    def unreported(self) -> int:
        return len(self.pending) + len(self.reporting)

    def discard(self, claim: Claim) -> bool:
        """Drop a pending outcome whose claim went stale (its lease expired before the report)."""
        for index, item in enumerate(self.pending):
            if item.completion.claim == claim:
                del self.pending[index]
                self.state.counters.outcomes_discarded += 1
                log.warning(fmt("job_outcome_discarded", worker=self.state.worker_id, job=claim.job_id,
                                queue=claim.queue,
                                reason="lease expired before the result could be reported"))
                return True
        return False

    def wake(self) -> None:
        """Make the loop look again (shutdown: `state.closing` was set, report what is left and end)."""
        self._added.set()

    async def run(self) -> None:
        """Send finished outcomes in batches; during an outage keep them and try again."""
        state = self.state
        backoff = ReconnectBackoff()
        while True:
            if not self.pending:
                if state.closing:
                    return
                self._added.clear()
                await self._added.wait()
                continue
            if len(self.pending) < MAX_REPORT_BATCH and not state.closing:
                if state.runs:
                    await asyncio.sleep(COALESCE_SECONDS)  # let results that finish meanwhile share the call
                for _ in range(CLAIM_FIRST_TURNS):
                    await asyncio.sleep(0)
            batch = self.pending[:MAX_REPORT_BATCH]
            del self.pending[: len(batch)]
            self.reporting = batch
            try:
                completions = [item.completion for item in batch]
                states = await tracing.store_call("finish", self.store.finish(completions))
            except OUTAGE_ERRORS as exc:
                self.reporting = []  # back in pending before the pause: heartbeats hold each claim once
                self.pending[:0] = batch
                state.outage.failed("finish", exc)
                await state.outage.pause(backoff.next())
                continue
            except Exception as exc:
                log.exception(fmt("report_error", worker=state.worker_id, jobs=len(batch), error=repr(exc),
                                  action="outcomes dropped; those jobs re-run after their leases expire"))
                continue
            finally:
                self.reporting = []
            state.outage.recovered()
            backoff.reset()
            self._outcomes(batch, states)

    def _outcomes(self, batch: list[Outcome], states: list[JobState | None]) -> None:
        """Count a reported batch, and log what is worth a line (successes only at DEBUG: they are
        summed up in the `progress` line of each heartbeat)."""
        quiet = not log.isEnabledFor(logging.DEBUG)
        done = 0
        for item, new_state in zip(batch, states, strict=True):
            if new_state is JobState.DONE and quiet:
                done += 1
            else:
                self._log_outcome(item, new_state)
        self.state.counters.jobs_done += done

    def _log_outcome(self, item: Outcome, state: JobState | None) -> None:
        counters = self.state.counters
        if state is JobState.DONE:
            counters.jobs_done += 1
        job, c = item.job, item.completion
        fields: dict[str, object] = {
            "worker": self.state.worker_id, "job": job.id, "queue": job.queue, "name": job.name,
            "attempt": job.attempts, "duration": c.duration,
        }
        if c.error is not None:
            fields["error"] = f"{c.error.type}: {c.error.message}"[:300]
        if state is None:
            counters.outcomes_discarded += 1
            log.warning(fmt("job_outcome_discarded", **fields,
                            reason="claim no longer current (lease expired; the job was re-queued)"))
        elif state is JobState.DONE:
            log.debug(fmt("job_done", **fields))
        elif state is JobState.CANCELLED:
            counters.jobs_cancelled += 1
            log.info(fmt("job_cancelled", **fields, detail="stopped on a cancel request"))
        elif state is JobState.SCHEDULED:  # no handler here: handed back for a worker that has it
            log.info(fmt("job_handed_back", **fields, detail="no such handler in this worker; the attempt"
                         " is not counted and the job waits for a worker that has it"))
        elif state is JobState.RETRY_SCHEDULED:
            counters.jobs_retried += 1
            if self.state.first_time("retry"):
                marker = fmt("first_retry", worker=self.state.worker_id, job=job.id)
                log.info(f"✓ Retry scheduling working correctly {marker}")
            log.info(fmt("job_retry", **fields, max_attempts=job.max_attempts))
        else:
            counters.jobs_failed += 1
            log.warning(fmt("job_failed", **fields, max_attempts=job.max_attempts))
