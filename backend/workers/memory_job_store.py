"""The job store in one process: the same meaning as the Redis store, for development and tests.

Every public method does its whole state change without awaiting, so on one
event loop each change is atomic, as a Lua script is in Redis. Ready, waiting
and running jobs sit in heaps with lazy deletion: an entry is trusted only if
it still matches the job (state, run_at, token), so no removal is ever needed.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from backend.workers.job_store import IllegalTransitionError, JobNotFoundError, JobStore
from backend.workers.models import (
    ALL_STATES,
    CANCELLABLE_STATES,
    DURATION_BUCKETS,
    RETRYABLE_STATES,
    TERMINAL_STATES,
    WAITING_STATES,
    Claim,
    Completion,
    HeartbeatReply,
    InvalidJobError,
    Job,
    JobError,
    JobPage,
    JobSpec,
    JobState,
    MetricsSnapshot,
    QueueMetrics,
    RunOutcome,
    ScheduleInfo,
    StoreHealth,
    WorkerInfo,
    new_job_id,
)

K = TypeVar("K")


@dataclass
class _Queue:
    """Everything one queue holds; the heaps may contain stale entries (see module doc)."""

    jobs: dict[str, Job] = field(default_factory=dict)
    ready: list[tuple[int, int, str]] = field(default_factory=list)  # (-priority, seq, id)
    ready_seq: dict[str, int] = field(default_factory=dict)  # id -> its place in the ready order
    waiting: list[tuple[float, str]] = field(default_factory=list)  # (run_at, id)
    running: list[tuple[float, str, str]] = field(default_factory=list)  # (lease_until, token, id)
    unique: dict[str, str] = field(default_factory=dict)  # unique_key -> id of the live holder
    counts: Counter[JobState] = field(default_factory=Counter)
    created: dict[str, int] = field(default_factory=dict)  # id -> creation order
    entered: dict[str, int] = field(default_factory=dict)  # id -> order of entering its state
    # id -> (token, state) of the last report applied: a repeated report gets its answer again
    reported: dict[str, tuple[str, JobState]] = field(default_factory=dict)
    metrics: QueueMetrics = field(default_factory=QueueMetrics)
    # concurrency limits: handler name -> N; key -> running ids; key -> parked heap; parked id -> (key, N)
    hlimits: dict[str, int] = field(default_factory=dict)
    limit_run: dict[str, set[str]] = field(default_factory=dict)
    limit_wait: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    parked: dict[str, tuple[str, int]] = field(default_factory=dict)
    lkey: dict[str, str] = field(default_factory=dict)  # running id -> the limit key it holds


class MemoryJobStore(JobStore):
    """Jobs in a dict per queue; nothing survives the process."""

    backend = "memory"

    def __init__(self, retention_seconds: float = 7 * 24 * 3600) -> None:
        self.retention_seconds = retention_seconds
        self._queues: dict[str, _Queue] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._expiry: list[tuple[float, str, str]] = []  # (finished_at + retention, queue, id)
        self._seq = 0  # one monotonic counter orders enqueues, creations and state entries
        # Waiting workers per queue, and queues with a wake-up not yet taken: like the Redis
        # store's wake-up list, a wake-up is kept until a waiter or a claim takes it, so a
        # worker between its claim and its wait loses none.
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._pending_wake: set[str] = set()
        self._schedules: dict[str, ScheduleInfo] = {}
        self._listeners: dict[str, set[asyncio.Queue[tuple[str, str]]]] = {}

    # -- helpers (none of them awaits) ------------------------------------------

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _queue(self, name: str) -> _Queue:
        if name not in self._queues:
            self._queues[name] = _Queue()
        return self._queues[name]

    def _find(self, job_id: str, queue: str | None) -> tuple[_Queue, Job]:
        names = [queue] if queue is not None else sorted(self._queues)
        for name in names:
            q = self._queues.get(name)
            if q is not None and job_id in q.jobs:
                return q, q.jobs[job_id]
        raise JobNotFoundError(f"no job {job_id}" + (f" in queue {queue}" if queue else ""))

    def _emit(self, job: Job, what: str) -> None:
        if job.events:
            for listener in self._listeners.get(job.queue, ()):
                listener.put_nowait((job.id, what))

    def _set_state(self, q: _Queue, job: Job, state: JobState, now: float) -> None:
        q.counts[job.state] -= 1
        q.counts[state] += 1
        if job.state is JobState.RUNNING and job.id in q.lkey:
            self._free_slot(q, job.id, q.lkey.pop(job.id))
        if job.state is JobState.ENQUEUED and job.id in q.parked and state is not JobState.ENQUEUED:
            del q.parked[job.id]
        job.state = state
        self._emit(job, state.value)
        q.entered[job.id] = self._next()
        if state in TERMINAL_STATES:
            job.finished_at = now
            job.token = job.lease_until = None
            if job.unique_key is not None and q.unique.get(job.unique_key) == job.id:
                del q.unique[job.unique_key]
            heapq.heappush(self._expiry, (now + self.retention_seconds, job.queue, job.id))

    def _make_ready(self, q: _Queue, job: Job, now: float, keep_place: bool = False) -> None:
        """ENQUEUED at the back of its priority, or at its old place after a release."""
        if not keep_place or job.id not in q.ready_seq:
            q.ready_seq[job.id] = self._next()
        self._set_state(q, job, JobState.ENQUEUED, now)
        heapq.heappush(q.ready, (-job.priority, q.ready_seq[job.id], job.id))
        self._wake(job.queue)

    def _free_slot(self, q: _Queue, job_id: str, key: str) -> None:
        """A running job left its limit key's slot: the oldest job parked on the key goes back
        to ready at its original place (the claim re-checks the limit)."""
        q.limit_run.get(key, set()).discard(job_id)
        waiting = q.limit_wait.get(key, [])
        while waiting:
            prio, seq, parked_id = heapq.heappop(waiting)
            job = q.jobs.get(parked_id)
            holder = q.parked.get(parked_id, ("", 0))[0]
            if job is not None and job.state is JobState.ENQUEUED and holder == key:
                del q.parked[parked_id]
                heapq.heappush(q.ready, (prio, seq, parked_id))
                self._wake(job.queue)
                return

    def _limit_of(self, q: _Queue, job: Job) -> tuple[str, int] | None:
        if job.limit_key is not None and job.limit is not None:
            return job.limit_key, job.limit
        if job.name in q.hlimits:
            return "h:" + job.name, q.hlimits[job.name]
        return None

    def _unpark(self, q: _Queue) -> int:
        """Self-healing pass (as lua/unpark.lua): parked jobs whose key has a free slot go back."""
        moved = 0
        for job_id, (key, limit) in list(q.parked.items())[:100]:
            job = q.jobs.get(job_id)
            if job is None or job.state is not JobState.ENQUEUED:
                del q.parked[job_id]
                continue
            if key.startswith("h:"):
                limit = q.hlimits.get(job.name, 1_000_000_000)
            if len(q.limit_run.get(key, ())) < limit:
                del q.parked[job_id]
                heapq.heappush(q.ready, (-job.priority, q.ready_seq[job_id], job_id))
                self._wake(job.queue)
                moved += 1
        return moved

    def _schedule(self, q: _Queue, job: Job, state: JobState, run_at: float, now: float) -> None:
        job.run_at = run_at
        job.token = job.lease_until = None
        self._set_state(q, job, state, now)
        heapq.heappush(q.waiting, (run_at, job.id))
        self._wake(job.queue)  # a sleeping worker recomputes its next wake-up

    def _wake(self, queue: str) -> None:
        self._pending_wake.add(queue)
        for event in self._waiters.get(queue, ()):
            event.set()

    def _repeated_report(self, claim: Claim) -> JobState | None:
        """The state a report with this claim produced, if it was the last one applied to the job."""
        q = self._queues.get(claim.queue)
        token, state = q.reported.get(claim.job_id, ("", None)) if q else ("", None)
        return state if token == claim.token else None

    def _current(self, claim: Claim) -> tuple[_Queue, Job] | None:
        q = self._queues.get(claim.queue)
        job = q.jobs.get(claim.job_id) if q else None
        if q is None or job is None or job.state is not JobState.RUNNING or job.token != claim.token:
            return None
        return q, job

    def _selected(self, queues: Sequence[str] | None) -> list[tuple[str, _Queue]]:
        names = self._queues if queues is None else queues
        return [(name, self._queues[name]) for name in names if name in self._queues]

    def _expire(self, now: float) -> None:
        """Drop terminal jobs whose retention has passed, as Redis key expiry would."""
        while self._expiry and self._expiry[0][0] <= now:
            _, queue, job_id = heapq.heappop(self._expiry)
            q = self._queues[queue]
            job = q.jobs.get(job_id)
            finished = job.finished_at if job is not None and job.is_terminal else None
            if job is not None and finished is not None and finished + self.retention_seconds <= now:
                self._delete(q, job)

    @staticmethod
    def _delete(q: _Queue, job: Job) -> None:
        q.counts[job.state] -= 1
        for index in (q.jobs, q.ready_seq, q.created, q.entered, q.reported):
            index.pop(job.id, None)

    def _run_error(self, q: _Queue, job: Job, error: JobError, retryable: bool, delay: float | None,
                   now: float) -> JobState:
        job.last_error = error
        if retryable and job.attempts < job.max_attempts:
            wait = delay if delay is not None else job.backoff.delay(job.attempts)
            job.cancel_requested = False
            self._schedule(q, job, JobState.RETRY_SCHEDULED, now + wait, now)
            _bump(q.metrics.retries, job.name)
            return JobState.RETRY_SCHEDULED
        self._set_state(q, job, JobState.FAILED, now)
        return JobState.FAILED

    # -- producers -----------------------------------------------------------

    async def enqueue(self, spec: JobSpec) -> Job:
        return self._enqueue(spec, time.time())

    async def enqueue_many(self, specs: Sequence[JobSpec]) -> list[Job]:
        now = time.time()
        return [self._enqueue(spec, now) for spec in specs]

    def _enqueue(self, spec: JobSpec, now: float) -> Job:
        spec.validate()
        self._expire(now)
        q = self._queue(spec.queue)
        job_id = spec.id or new_job_id()
        if job_id in q.jobs:
            return copy.deepcopy(q.jobs[job_id])
        if spec.unique_key is not None and spec.unique_key in q.unique:
            return copy.deepcopy(q.jobs[q.unique[spec.unique_key]])
        run_at = now + spec.delay if spec.delay is not None else spec.run_at
        run_at = now if run_at is None else run_at
        job = Job(
            id=job_id, name=spec.name, queue=spec.queue, args=copy.deepcopy(spec.args),
            kwargs=copy.deepcopy(spec.kwargs), state=JobState.SCHEDULED, max_attempts=spec.max_attempts,
            priority=spec.priority, timeout=spec.timeout, backoff=spec.backoff, created_at=now,
            unique_key=spec.unique_key, limit_key=spec.limit_key, limit=spec.limit, events=spec.events,
        )
        q.jobs[job_id] = job
        q.counts[JobState.SCHEDULED] += 1  # _set_state / _schedule move it from here
        q.created[job_id] = self._next()
        if spec.unique_key is not None:
            q.unique[spec.unique_key] = job_id
        if run_at > now:
            self._schedule(q, job, JobState.SCHEDULED, run_at, now)
        else:
            job.run_at = run_at
            self._make_ready(q, job, now)
        _bump(q.metrics.enqueued, spec.name)
        return copy.deepcopy(job)

    # -- reading -------------------------------------------------------------

    async def get(self, job_id: str, queue: str | None = None) -> Job | None:
        self._expire(time.time())
        try:
            return copy.deepcopy(self._find(job_id, queue)[1])
        except JobNotFoundError:
            return None

    async def list_jobs(
        self,
        queue: str | None = None,
        state: JobState | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        self._expire(time.time())
        limit = max(1, min(limit, 1000))  # as the Redis store clamps it
        try:
            after = int(cursor) if cursor else None
        except ValueError:
            raise InvalidJobError(f"invalid cursor {cursor!r}") from None
        found: list[tuple[int, Job]] = []
        for _, q in self._selected(None if queue is None else [queue]):
            order = q.created if state is None else q.entered
            for job in q.jobs.values():
                if (state is None or job.state == state) and (name is None or job.name == name):
                    key = order[job.id]
                    if after is None or key < after:
                        found.append((key, job))
        found.sort(key=lambda item: item[0], reverse=True)
        page = found[:limit]
        next_cursor = str(page[-1][0]) if page and len(found) > len(page) else None
        return JobPage([copy.deepcopy(job) for _, job in page], next_cursor)

    async def counts(self) -> dict[str, dict[str, int]]:
        self._expire(time.time())
        return {name: {s.value: q.counts[s] for s in ALL_STATES} for name, q in sorted(self._queues.items())}

    async def queues(self) -> list[str]:
        return sorted(self._queues)

    # -- workers' side ---------------------------------------------------------

    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[Job]:
        now = time.time()
        self._expire(now)
        self._promote(queues, now, None)
        self._recover(queues, now, None)
        claimed: list[Job] = []
        for _, q in self._selected(queues):
            while q.ready and len(claimed) < limit:
                _, seq, job_id = heapq.heappop(q.ready)
                job = q.jobs.get(job_id)
                if job is None or job.state is not JobState.ENQUEUED or q.ready_seq.get(job_id) != seq:
                    continue  # stale entry
                if job_id in q.parked:
                    continue  # stale entry of a job parked since
                limited = self._limit_of(q, job)
                if limited is not None:
                    key, most = limited
                    holders = q.limit_run.setdefault(key, set())
                    if len(holders) >= most:
                        q.parked[job_id] = (key, most)
                        heapq.heappush(q.limit_wait.setdefault(key, []), (-job.priority, seq, job_id))
                        continue
                    holders.add(job_id)
                    q.lkey[job_id] = key
                job.attempts += 1
                job.started_at, job.finished_at, job.worker = now, None, worker_id
                job.token, job.lease_until = uuid.uuid4().hex, now + lease_seconds
                self._set_state(q, job, JobState.RUNNING, now)
                heapq.heappush(q.running, (job.lease_until, job.token, job.id))
                claimed.append(copy.deepcopy(job))
        for name, q in self._selected(queues):  # as in Redis: chain wake-ups while work remains
            if q.counts[JobState.ENQUEUED]:
                self._wake(name)
            else:
                self._pending_wake.discard(name)
        return claimed

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        woken = self._pending_wake.intersection(queues)
        if woken or timeout <= 0:
            self._pending_wake -= woken
            return
        event = asyncio.Event()
        for name in queues:
            self._waiters.setdefault(name, set()).add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            for name in queues:
                self._waiters[name].discard(event)

    async def next_wakeup(self, queues: Sequence[str]) -> float | None:
        now = time.time()
        times: list[float] = []
        for _, q in self._selected(queues):
            for job in q.jobs.values():
                if job.state in WAITING_STATES and job.run_at is not None:
                    times.append(job.run_at)
                elif job.state is JobState.RUNNING and job.lease_until is not None:
                    times.append(job.lease_until)
        return max(0.0, min(times) - now) if times else None

    async def finish(self, completions: Sequence[Completion]) -> list[JobState | None]:
        now = time.time()
        results: list[JobState | None] = []
        for item in completions:
            current = self._current(item.claim)
            if current is None:  # stale, or a repeat of a report that was applied
                results.append(self._repeated_report(item.claim))
                continue
            q, job = current
            if item.cancelled:  # not a run outcome: no counter, no duration
                self._set_state(q, job, JobState.CANCELLED, now)
                results.append(JobState.CANCELLED)
                q.reported[job.id] = (item.claim.token, JobState.CANCELLED)
                continue
            if item.error is None:
                job.result = copy.deepcopy(item.result)
                self._set_state(q, job, JobState.DONE, now)
                new_state = JobState.DONE
            else:
                new_state = self._run_error(q, job, item.error, item.retryable, item.retry_delay, now)
            _bump(q.metrics.runs, (job.name, _OUTCOMES[new_state].value))
            _observe(q.metrics, job.name, item.duration)
            results.append(new_state)
            q.reported[job.id] = (item.claim.token, new_state)
        return results

    async def extend(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        return self._extend(claims, lease_seconds, time.time())

    def _extend(self, claims: Sequence[Claim], lease_seconds: float, now: float) -> list[Claim]:
        return self._extend_full(claims, lease_seconds, now)[0]

    def _extend_full(
        self, claims: Sequence[Claim], lease_seconds: float, now: float
    ) -> tuple[list[Claim], list[Claim]]:
        stale: list[Claim] = []
        cancel: list[Claim] = []
        for claim in claims:
            current = self._current(claim)
            if current is None:
                stale.append(claim)
                continue
            q, job = current
            job.lease_until = now + lease_seconds
            heapq.heappush(q.running, (job.lease_until, claim.token, job.id))
            if job.cancel_requested:
                cancel.append(claim)
        return stale, cancel

    async def progress(self, claim: Claim, value: float, message: str = "") -> bool:
        current = self._current(claim)
        if current is None:
            return False
        job = current[1]
        job.progress, job.progress_message = float(value), message[:500]
        self._emit(job, "progress")
        return True

    async def server_time(self) -> float:
        return time.time()

    async def set_handler_limits(self, queue: str, limits: dict[str, int]) -> None:
        if limits:
            self._queue(queue).hlimits.update(limits)

    async def register_schedules(self, schedules: Sequence[ScheduleInfo]) -> None:
        for schedule in schedules:
            self._schedules[schedule.name] = copy.deepcopy(schedule)

    async def list_schedules(self) -> list[ScheduleInfo]:
        return [copy.deepcopy(self._schedules[name]) for name in sorted(self._schedules)]

    async def job_events(self, queues: Sequence[str]) -> AsyncIterator[tuple[str, str]]:
        listener: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for name in queues:
            self._listeners.setdefault(name, set()).add(listener)
        try:
            while True:
                yield await listener.get()
        finally:
            for name in queues:
                self._listeners[name].discard(listener)

    async def release(self, claims: Sequence[Claim]) -> int:
        now = time.time()
        released = 0
        for claim in claims:
            current = self._current(claim)
            if current is None:
                continue
            q, job = current
            released += 1
            if job.cancel_requested:  # asked to stop: not given back
                self._set_state(q, job, JobState.CANCELLED, now)
                continue
            job.attempts -= 1
            job.token = job.lease_until = job.worker = job.started_at = None
            self._make_ready(q, job, now, keep_place=True)
        return released

    async def recover(self, queues: Sequence[str] | None = None, limit: int = 1000) -> int:
        recovered = self._recover(queues, time.time(), limit)
        for _, q in self._selected(queues):
            self._unpark(q)
        return recovered

    def _recover(self, queues: Sequence[str] | None, now: float, limit: int | None) -> int:
        done = 0
        for _, q in self._selected(queues):
            while q.running and q.running[0][0] <= now and (limit is None or done < limit):
                lease_until, token, job_id = heapq.heappop(q.running)
                job = q.jobs.get(job_id)
                if job is None or job.state is not JobState.RUNNING or job.token != token:
                    continue
                if job.lease_until != lease_until:
                    continue  # extended since; a later entry stands for it
                error = JobError("LeaseExpired", f"lease expired: worker {job.worker} stopped heartbeating")
                self._run_error(q, job, error, True, None, now)
                _bump(q.metrics.runs, (job.name, RunOutcome.EXPIRED.value))
                done += 1
        return done

    async def promote(self, queues: Sequence[str] | None = None, limit: int = 1000) -> int:
        return self._promote(queues, time.time(), limit)

    def _promote(self, queues: Sequence[str] | None, now: float, limit: int | None) -> int:
        done = 0
        for _, q in self._selected(queues):
            while q.waiting and q.waiting[0][0] <= now and (limit is None or done < limit):
                run_at, job_id = heapq.heappop(q.waiting)
                job = q.jobs.get(job_id)
                if job is not None and job.state in WAITING_STATES and job.run_at == run_at:
                    self._make_ready(q, job, now)
                    done += 1
        return done

    # -- operators -------------------------------------------------------------

    async def cancel(self, job_id: str, queue: str | None = None) -> Job:
        now = time.time()
        self._expire(now)
        q, job = self._find(job_id, queue)
        if job.state is JobState.RUNNING:  # only a request: the worker stops it at a heartbeat
            if not job.cancel_requested:
                job.cancel_requested = True
                self._emit(job, "cancel_requested")
            return copy.deepcopy(job)
        if job.state not in CANCELLABLE_STATES:
            raise IllegalTransitionError(job_id, job.state.value, "cancel")
        self._set_state(q, job, JobState.CANCELLED, now)
        return copy.deepcopy(job)

    async def retry(self, job_id: str, queue: str | None = None) -> Job:
        now = time.time()
        self._expire(now)
        q, job = self._find(job_id, queue)
        if job.state not in RETRYABLE_STATES:
            raise IllegalTransitionError(job_id, job.state.value, "retry")
        job.attempts, job.finished_at, job.run_at = 0, None, now
        job.cancel_requested = False
        if job.unique_key is not None and job.unique_key not in q.unique:
            q.unique[job.unique_key] = job.id
        self._make_ready(q, job, now)
        return copy.deepcopy(job)

    async def purge(self, older_than: float, queues: Sequence[str] | None = None, limit: int = 10_000) -> int:
        cutoff = time.time() - older_than
        purged = 0
        for _, q in self._selected(queues):
            old = [job for job in q.jobs.values() if job.is_terminal and (job.finished_at or 0) <= cutoff]
            for job in old[: limit - purged]:
                self._delete(q, job)
                purged += 1
        return purged

    # -- worker registry -------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        now = time.time()
        entry = copy.deepcopy(info)
        entry.started_at = entry.started_at or now
        entry.last_heartbeat = now
        self._workers[info.id] = entry

    async def heartbeat(
        self, info: WorkerInfo, claims: Sequence[Claim], lease_seconds: float
    ) -> HeartbeatReply:
        now = time.time()
        old = self._workers.get(info.id)
        entry = copy.deepcopy(info)
        entry.started_at = entry.started_at or (old.started_at if old else now)
        entry.running, entry.last_heartbeat = len(claims), now
        self._workers[info.id] = entry
        stale, cancel = self._extend_full(claims, lease_seconds, now)
        return HeartbeatReply(stale, old is None, cancel)

    async def deregister_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def list_workers(self, stale_after: float | None = None) -> list[WorkerInfo]:
        now = time.time()
        alive: list[WorkerInfo] = []
        for worker_id in sorted(self._workers):
            entry = self._workers[worker_id]
            age = max(0.0, now - entry.last_heartbeat)
            if stale_after is not None and age > stale_after:
                del self._workers[worker_id]
                continue
            shown = copy.deepcopy(entry)
            shown.heartbeat_age = age
            alive.append(shown)
        return alive

    # -- observability -----------------------------------------------------------

    async def metrics(self) -> MetricsSnapshot:
        now = time.time()
        return MetricsSnapshot(
            queues={name: copy.deepcopy(q.metrics) for name, q in sorted(self._queues.items())},
            counts=await self.counts(),
            heartbeat_ages={wid: max(0.0, now - w.last_heartbeat) for wid, w in self._workers.items()},
        )

    async def health(self) -> StoreHealth:
        return StoreHealth(ok=True, backend="memory")


_OUTCOMES = {
    JobState.DONE: RunOutcome.DONE,
    JobState.RETRY_SCHEDULED: RunOutcome.RETRY,
    JobState.FAILED: RunOutcome.FAILED,
}


def _bump(counter: dict[K, int], key: K) -> None:
    counter[key] = counter.get(key, 0) + 1


def _observe(metrics: QueueMetrics, name: str, duration: float) -> None:
    """Count `duration` in the first bucket whose bound holds it, else in the +Inf slot."""
    buckets = metrics.duration_buckets.setdefault(name, [0] * (len(DURATION_BUCKETS) + 1))
    slot = next((i for i, bound in enumerate(DURATION_BUCKETS) if duration <= bound), len(DURATION_BUCKETS))
    buckets[slot] += 1
    metrics.duration_sum[name] = metrics.duration_sum.get(name, 0.0) + duration
