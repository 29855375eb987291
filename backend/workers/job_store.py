"""The job-store contract every backend implements: its methods, its errors, nothing else.

The worker, the API and the CLI import only this module: the memory and the
Redis store are interchangeable behind it and pass one conformance suite.
What differs between backends (an embedded worker, a reset watch, the memory
policy a server needs) is asked of the store here, never decided by its name;
`stores.py` is the only module that names backends.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Protocol

from backend.workers.bulk import BulkFilter, BulkResult
from backend.workers.history import MinuteStats
from backend.workers.models import (
    Claim,
    Completion,
    HandlerPolicy,
    HeartbeatReply,
    Job,
    JobError,
    JobPage,
    JobSpec,
    JobState,
    MetricsSnapshot,
    ScheduleInfo,
    StoreHealth,
    Tidied,
    WorkerInfo,
)


class JobStoreError(Exception):
    """Base of every error a store raises on purpose."""


class JobNotFoundError(JobStoreError, LookupError):
    """No job with that id (or it has expired after its retention)."""


class IllegalTransitionError(JobStoreError):
    """The job is not in a state from which the asked transition is legal."""

    def __init__(self, job_id: str, state: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id}: it is {state}")
        self.job_id, self.state, self.action = job_id, state, action


class UniqueKeyHeldError(IllegalTransitionError):
    """A manual retry would make a second live job with one unique_key: another job holds it."""

    def __init__(self, job_id: str, holder: str, action: str) -> None:
        JobStoreError.__init__(
            self, f"cannot {action} job {job_id}: its unique_key is held by live job {holder}")
        self.job_id, self.state, self.action, self.holder = job_id, "", action, holder


class StaleClaimError(JobStoreError):
    """The claim token is no longer current: the lease expired and the job moved on."""


class StoreUnavailableError(JobStoreError):
    """The store cannot be reached (Redis down, network cut)."""


class StoreFullError(JobStoreError):
    """Redis refused a write because it is out of memory (maxmemory with noeviction)."""


class ResetWatch(Protocol):
    """Notices that a store lost its data behind our back (a Redis without persistence restarted)."""

    resets: int

    async def check(self) -> bool:
        """True when the data set changed since the last check."""
        ...

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """`check()` every `interval` seconds until `stop` is set."""
        ...


class JobStore(ABC):
    """Durable job storage. Every method that changes a job is one atomic step.

    Clock: every time a store records or compares is its own (the Redis
    server's `TIME`), never the caller's.
    """

    backend: str = "abstract"  # a name for health replies and logs; never branch on it
    # Jobs in this store are visible to this process only, so the process that holds it
    # must run the worker too (the API embeds one).
    needs_embedded_worker: bool = False

    @property
    def label(self) -> str:
        """Where the jobs live, for logs (a Redis URL without its password, or the backend name)."""
        return self.backend

    def reset_watch(self, queues: Sequence[str] = (), who: str = "") -> ResetWatch | None:
        """A watch that notices the store losing its data, or None when it cannot happen unseen."""
        return None

    # -- producers -----------------------------------------------------------

    @abstractmethod
    async def enqueue(self, spec: JobSpec) -> Job:
        """Store a new job (`enqueued`, or `scheduled` when due later).

        With an `id` or `unique_key` that names a live job, returns that job
        unchanged instead of making a second one: safe to repeat.
        Raises InvalidJobError, StoreFullError, StoreUnavailableError.
        """

    @abstractmethod
    async def enqueue_many(self, specs: Sequence[JobSpec]) -> list[Job]:
        """`enqueue` for many specs, batched; results in the same order."""

    # -- reading -------------------------------------------------------------

    @abstractmethod
    async def get(self, job_id: str, queue: str | None = None) -> Job | None:
        """The job, or None. Without `queue`, every known queue is searched."""

    @abstractmethod
    async def list_jobs(
        self,
        queue: str | None = None,
        state: JobState | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of jobs, newest first (by the time they entered their state when
        `state` is given, else by creation), and the cursor of the next page."""

    @abstractmethod
    async def counts(self) -> dict[str, dict[str, int]]:
        """queue -> state -> number of jobs, every state present (zeros included)."""

    @abstractmethod
    async def queues(self) -> list[str]:
        """Every queue that has ever had a job, sorted."""

    # -- workers' side ---------------------------------------------------------

    @abstractmethod
    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[Job]:
        """Claim up to `limit` ready jobs (priority first, then FIFO): each becomes
        `running`, attempts += 1, with a fresh `token` and a lease until now+lease,
        unconfirmed until an `extend` with its token (see `recover`).

        Before claiming, due scheduled jobs are promoted and expired leases
        recovered, so a claim needs no separate housekeeping call.
        One queue failing costs the others nothing: what they gave is returned, and
        the error is raised only when no queue gave any job (else it is logged).
        """

    @abstractmethod
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a job may be ready on one of `queues`, or `timeout` passes.

        Wakes at once on enqueue (no polling); returns early, never late, so
        the caller simply claims again.
        """

    @abstractmethod
    async def next_wakeup(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest scheduled job or lease deadline, or None."""

    @abstractmethod
    async def finish(self, completions: Sequence[Completion]) -> list[JobState | None]:
        """Report finished runs, batched. Success → `done`; error → `retry_scheduled`
        (now + retry_delay, or the job's backoff) while attempts remain and it is
        retryable, else `failed`. Each result is the new state, or None when the
        claim was stale (the job was re-claimed or cancelled: nothing changed).
        Safe to repeat: a report sent again with the claim that last finished the job
        (its first reply was lost) changes nothing and gets that state again."""

    async def complete(self, claim: Claim, result: object = None, duration: float = 0.0) -> JobState:
        """`running` → `done`. Raises StaleClaimError when the token is not current."""
        (state,) = await self.finish([Completion(claim, duration, result=result)])
        if state is None:
            raise StaleClaimError(f"claim on job {claim.job_id} is no longer current")
        return state

    async def fail(
        self,
        claim: Claim,
        error: JobError,
        *,
        duration: float = 0.0,
        retryable: bool = True,
        retry_delay: float | None = None,
    ) -> JobState:
        """Report a failed run (see `finish`). Raises StaleClaimError."""
        item = Completion(claim, duration, error=error, retryable=retryable, retry_delay=retry_delay)
        (state,) = await self.finish([item])
        if state is None:
            raise StaleClaimError(f"claim on job {claim.job_id} is no longer current")
        return state

    @abstractmethod
    async def progress(self, claim: Claim, value: float, message: str = "") -> bool:
        """Record a running job's progress (fenced by the claim token). False when stale."""

    @abstractmethod
    async def server_time(self) -> float:
        """The store's clock, epoch seconds (Redis TIME; memory time.time())."""

    @abstractmethod
    async def set_handler_limits(self, queue: str, limits: dict[str, int]) -> None:
        """Declare per-handler concurrency limits on `queue` (name -> at most N running)."""

    @abstractmethod
    async def advertise_handlers(self, queues: Sequence[str], handlers: Sequence[HandlerPolicy]) -> None:
        """Say, on the store's clock, that a live worker runs `handlers` on `queues`, with each one's
        policy for jobs that set none of their own (a job's max_attempts / backoff given at enqueue wins).
        Workers call it with every heartbeat: a job whose handler its worker lacks is handed back
        (`Completion.unknown_grace`) until no live worker has advertised that handler for the grace time."""

    @abstractmethod
    async def set_handler_rates(self, queue: str, rates: dict[str, str]) -> None:
        """Declare per-handler rate limits on `queue` (name -> rate, e.g. "100/m"; rates.py)."""

    @abstractmethod
    async def set_queue_rate(self, queue: str, rate: str | None) -> str | None:
        """Limit how fast jobs of `queue` start (every worker, at its next claim); None clears it.
        Returns the canonical rate stored (InvalidRateError for a bad one)."""

    @abstractmethod
    async def queue_rates(self) -> dict[str, str]:
        """The known queues that have a rate, and their rates."""

    @abstractmethod
    async def register_schedules(self, schedules: Sequence[ScheduleInfo]) -> None:
        """Publish the periodic jobs a worker declares, so the API and CLI can list them."""

    @abstractmethod
    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every declared schedule, sorted by name."""

    @abstractmethod
    def queue_job_events(self, queues: Sequence[str]) -> AsyncGenerator[tuple[str, str, str], None]:
        """Yield (queue, job id, what) for jobs enqueued with `events=True` on `queues`, as they
        change: `what` is the new state or "progress" or "cancel_requested". Opt-in per job,
        best effort (pub/sub: missed while not subscribed), so readers re-read the job. One
        subscription (one connection) however many queues: the API fans it out to every stream."""

    async def job_events(self, queues: Sequence[str]) -> AsyncIterator[tuple[str, str]]:
        """`queue_job_events` without the queue: (job id, what)."""
        async with contextlib.aclosing(self.queue_job_events(queues)) as events:
            async for _queue, job_id, what in events:
                yield job_id, what

    @abstractmethod
    async def extend(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        """Push the leases of `claims` to now + lease, and confirm them: the worker has
        them, so their expiry is now a charged run. Returns the claims that are no
        longer current (their handlers should stop)."""

    @abstractmethod
    async def confirm(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        """Say these claims reached their worker (sent before any of their handlers starts): their
        expiry is then a charged run. Cheaper than `extend`, which confirms too (a store may fall back
        on it, with `lease_seconds`), and fenced the same way. Returns the claims that are no longer
        current (their handlers must not start)."""

    @abstractmethod
    async def release(self, claims: Sequence[Claim]) -> int:
        """Give running jobs back (worker shutdown): `enqueued` again, the attempt
        not counted. Stale claims are skipped. Returns how many were released."""

    @abstractmethod
    async def recover(self, queues: Sequence[str] | None = None, limit: int = 1000) -> int:
        """Treat running jobs whose lease expired as failed runs (error
        `LeaseExpired`): retry with backoff or `failed`. A claim never confirmed
        (its worker never got it) is given back instead: `enqueued`, the attempt not
        counted, at most `rules.LOST_CLAIM_CAP` times per job. Returns how many."""

    @abstractmethod
    async def promote(self, queues: Sequence[str] | None = None, limit: int = 1000) -> int:
        """Move due `scheduled`/`retry_scheduled` jobs to `enqueued`. Returns how many."""

    # -- operators -------------------------------------------------------------

    @abstractmethod
    async def cancel(self, job_id: str, queue: str | None = None) -> Job:
        """`enqueued`/`scheduled`/`retry_scheduled` → `cancelled`. On a `running` job it only
        sets `cancel_requested` (the job stays running; its worker learns it at the next
        heartbeat, stops the handler and reports `finish(Completion(cancelled=True))`).
        Raises JobNotFoundError or IllegalTransitionError (terminal states)."""

    @abstractmethod
    async def retry(self, job_id: str, queue: str | None = None) -> Job:
        """`failed`/`cancelled` → `enqueued` with attempts reset to 0.
        Raises JobNotFoundError or IllegalTransitionError."""

    @abstractmethod
    async def purge(self, older_than: float, queues: Sequence[str] | None = None, limit: int = 10_000,
                    state: JobState | None = None) -> int:
        """Delete terminal jobs (only those in `state`, one of them, when given) that finished more
        than `older_than` seconds ago, at most `limit` in all. Returns how many."""

    @abstractmethod
    async def retry_many(self, selection: BulkFilter) -> BulkResult:
        """`retry` each job `selection` matches (at most its limit), each by the same atomic step as
        `retry`: a matched job whose state does not allow it is left as it is (matched, not moved).
        Raises InvalidJobError for a filter that makes no sense (see bulk.py)."""

    @abstractmethod
    async def cancel_many(self, selection: BulkFilter) -> BulkResult:
        """`cancel` each job `selection` matches, as `retry_many` does for `retry`. A running job
        (selected by id or by state=running) gets a cancel request, as with `cancel`."""

    @abstractmethod
    async def pause_queue(self, queue: str) -> None:
        """Stop every worker claiming from `queue` at its next claim (running jobs finish, enqueues
        are accepted, due jobs are still promoted and expired leases recovered)."""

    @abstractmethod
    async def resume_queue(self, queue: str) -> None:
        """Undo `pause_queue`; a worker waiting on the queue is woken at once."""

    @abstractmethod
    async def paused_queues(self) -> set[str]:
        """The known queues that are paused now."""

    @abstractmethod
    async def tidy(self, stale_after: float | None = None) -> Tidied:
        """Bound what names and queues nobody uses any more cost: a handler name that no live worker
        registers and that has no job left loses its counters (its metric series stop), and a queue
        with no job left and no live worker (heartbeat within `stale_after`) leaves `queues()`.
        Workers run it with the purge. Never drops a name with a job or a registered handler."""

    # -- worker registry -------------------------------------------------------

    @abstractmethod
    async def register_worker(self, info: WorkerInfo) -> None:
        """Add a worker to the registry (its heartbeat starts now)."""

    @abstractmethod
    async def heartbeat(
        self, info: WorkerInfo, claims: Sequence[Claim], lease_seconds: float
    ) -> HeartbeatReply:
        """Record a heartbeat (upserting `info`, with `running` = len(claims)) and
        extend the leases of `claims`. Returns the claims that are no longer current
        (their handlers should stop), the current claims whose job has a cancel
        request, and whether the worker's entry had vanished (Redis lost its data,
        or it was reaped as stale): the entry is re-created either way."""

    @abstractmethod
    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker from the registry."""

    @abstractmethod
    async def list_workers(self, stale_after: float | None = None) -> list[WorkerInfo]:
        """Registered workers with their heartbeat age; entries older than
        `stale_after` seconds are dropped from the registry and not returned."""

    # -- observability -----------------------------------------------------------

    @abstractmethod
    async def metrics(self) -> MetricsSnapshot:
        """Counters, histogram buckets, job counts and heartbeat ages, in a
        number of round trips independent of the number of jobs."""

    @abstractmethod
    async def history(self, queue: str, minutes: int) -> list[MinuteStats]:
        """The queue's last `minutes` minutes (at most rules.HISTORY_MINUTES are kept), oldest first,
        one entry per minute of the store's clock: runs, failed runs and duration buckets."""

    @abstractmethod
    async def health(self) -> StoreHealth:
        """Ping, server version and maxmemory-policy. Never raises."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold connections
        """Release connections."""
