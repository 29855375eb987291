"""The records every store and every caller share: the job's states and the dataclasses.

Records only: what is valid, how retries back off and how payloads are encoded live in
`rules.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from backend.workers.rules import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, Backoff, InvalidJobError, validate_spec

JSON = Any  # what orjson can encode: dict, list, str, int, float, bool, None


def epoch_seconds(when: datetime | float) -> float:
    """Epoch seconds of an aware datetime (or a number, unchanged). A naive datetime is refused:
    which zone it meant is a guess, and a wrong guess runs the job hours early or late."""
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidJobError(
                f"run_at {when.isoformat()} has no time zone: pass an aware datetime, "
                "e.g. datetime.now(timezone.utc) + timedelta(hours=1)"
            )
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float):
        raise InvalidJobError(f"run_at must be an aware datetime or epoch seconds, not {type(when).__name__}")
    return float(when)


class JobState(StrEnum):
    SCHEDULED = "scheduled"
    ENQUEUED = "enqueued"
    RUNNING = "running"
    RETRY_SCHEDULED = "retry_scheduled"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
WAITING_STATES = frozenset({JobState.SCHEDULED, JobState.RETRY_SCHEDULED})
CANCELLABLE_STATES = frozenset({JobState.ENQUEUED, JobState.SCHEDULED, JobState.RETRY_SCHEDULED})
# cancel() on a running job only requests it: the worker stops the handler at its next heartbeat
RETRYABLE_STATES = frozenset({JobState.FAILED, JobState.CANCELLED})
ALL_STATES = tuple(JobState)


class RunOutcome(StrEnum):
    """How one run of a handler ended, as counted by `bagbot_job_run_total`."""

    DONE = "done"
    RETRY = "retry"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(slots=True)
class JobError:
    """The last error of a job: exception type, message and a trimmed traceback."""

    type: str
    message: str
    traceback: str = ""

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> JobError | None:
        if not data:
            return None
        return cls(str(data.get("type", "")), str(data.get("message", "")), str(data.get("traceback", "")))

    @classmethod
    def from_exception(cls, exc: BaseException, tb: str = "", limit: int = 4000) -> JobError:
        """Never raises: an exception whose __str__ (or __repr__) raises still gives its type name."""
        return cls(_type_name(exc), readable(exc)[:limit], tb[-limit:])


def _type_name(exc: BaseException) -> str:
    try:
        return str(type(exc).__name__)
    except BaseException:
        return "<unnamed exception>"


def readable(exc: BaseException) -> str:
    """As much of an exception's text as can be read: str(), else repr(), else a note saying so."""
    try:
        return str(exc)
    except BaseException:
        pass
    try:
        return f"<str() failed> {exc!r}"
    except BaseException:
        return f"<{_type_name(exc)}: str() and repr() both raised>"


@dataclass(slots=True)
class JobSpec:
    """What a caller asks for: validated (rules.validate_spec) before it reaches a store."""

    name: str
    args: list[JSON] = field(default_factory=list)
    kwargs: dict[str, JSON] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    id: str | None = None
    delay: float | None = None  # seconds from now, on the store's clock
    run_at: float | None = None  # epoch seconds; ignored when delay is given
    priority: int = 0  # higher runs first
    # None: the handler's policy (published by workers, see docs/reliability.md), else DEFAULT_MAX_ATTEMPTS
    max_attempts: int | None = None
    timeout: float | None = None  # None: the handler's or the worker's default
    backoff: Backoff | None = None  # None: the handler's backoff, else Backoff()
    unique_key: str | None = None
    # at most `limit` jobs with this key run at once across all workers (e.g. a customer id)
    limit_key: str | None = None
    limit: int | None = None
    events: bool = False  # publish this job's state changes (see docs/features.md)
    trace: str | None = None  # the enqueuer's W3C trace context (backend/workers/tracing.py)

    def __post_init__(self) -> None:
        if self.run_at is not None:  # an aware datetime is welcome too (typed as float for readers)
            self.run_at = epoch_seconds(self.run_at)

    def validate(self) -> JobSpec:
        return validate_spec(self)



@dataclass(slots=True)
class Job:
    """One job as a store holds it. Times are epoch seconds on the store's clock."""

    id: str
    name: str
    queue: str = DEFAULT_QUEUE
    args: list[JSON] = field(default_factory=list)
    kwargs: dict[str, JSON] = field(default_factory=dict)
    state: JobState = JobState.ENQUEUED
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    priority: int = 0
    timeout: float | None = None
    backoff: Backoff = field(default_factory=Backoff)
    run_at: float | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    token: str | None = None
    lease_until: float | None = None
    last_error: JobError | None = None
    result: JSON = None
    unique_key: str | None = None
    limit_key: str | None = None
    limit: int | None = None
    events: bool = False
    progress: float | None = None  # last value a handler reported (report_progress)
    progress_message: str | None = None
    cancel_requested: bool = False  # a running job asked to stop; its worker cancels it at a heartbeat
    trace: str | None = None  # the enqueuer's W3C trace context (field `tp`; backend/workers/tracing.py)
    # field -> stored value (shortened) of each field the store could not read (a corrupt record);
    # the field shows its default. A job with any is never run: its claim sets it aside (failed).
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_json(self) -> dict[str, JSON]:
        """The job as the API shows it (the claim token stays private)."""
        return {
            "id": self.id,
            "name": self.name,
            "queue": self.queue,
            "args": self.args,
            "kwargs": self.kwargs,
            "state": "corrupt" if "state" in self.unreadable else self.state.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "timeout": self.timeout,
            "run_at": self.run_at,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker": self.worker,
            "lease_until": self.lease_until,
            "last_error": self.last_error.to_json() if self.last_error else None,
            "result": self.result,
            "unique_key": self.unique_key,
            "limit_key": self.limit_key,
            "limit": self.limit,
            "events": self.events,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "cancel_requested": self.cancel_requested,
            "unreadable": dict(self.unreadable),
        }


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker's hold on a running job; `token` fences every later step."""

    queue: str
    job_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Completion:
    """One finished run to report: `error` None means success."""

    claim: Claim
    duration: float
    result: JSON = None
    error: JobError | None = None
    retryable: bool = True
    retry_delay: float | None = None  # None: the backoff below, else the job's own
    cancelled: bool = False  # the run was stopped on request: running -> cancelled, never retried
    # The handler's retry policy, applied by the store's finish step (the worker decides nothing);
    # a job's own max_attempts / backoff, given at enqueue, win over these (docs/reliability.md)
    max_attempts: int | None = None  # the handler's max attempts; None: the job's (or the default)
    backoff: Backoff | None = None  # the handler's backoff; None: the job's own
    # set: this worker has no handler for the job; the store hands the job back, uncounted, unless no
    # live worker has advertised the handler for this many seconds (then it fails: UnknownHandler)
    unknown_grace: float | None = None


@dataclass(slots=True)
class HeartbeatReply:
    """What a heartbeat learns: claims no longer current, claims whose job was asked to
    stop (cancel requested), and whether the worker's registry entry had vanished."""

    stale: list[Claim]
    vanished: bool = False
    cancel: list[Claim] = field(default_factory=list)


@dataclass(slots=True)
class ScheduleInfo:
    """A periodic job as workers declare it: `expression` is a cron line or "every <n>s"."""

    name: str
    handler: str
    queue: str
    expression: str
    timezone: str = "UTC"
    args: list[JSON] = field(default_factory=list)
    kwargs: dict[str, JSON] = field(default_factory=dict)

    def to_json(self) -> dict[str, JSON]:
        return {"name": self.name, "handler": self.handler, "queue": self.queue,
                "expression": self.expression, "timezone": self.timezone,
                "args": self.args, "kwargs": self.kwargs}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleInfo:
        return cls(str(data["name"]), str(data["handler"]), str(data.get("queue", DEFAULT_QUEUE)),
                   str(data["expression"]), str(data.get("timezone", "UTC")),
                   list(data.get("args") or []), dict(data.get("kwargs") or {}))


@dataclass(slots=True)
class WorkerInfo:
    """A live worker as the registry shows it."""

    id: str
    host: str = ""
    pid: int = 0
    queues: list[str] = field(default_factory=list)
    concurrency: int = 1
    started_at: float = 0.0
    last_heartbeat: float = 0.0
    heartbeat_age: float = 0.0
    running: int = 0
    version: str = ""
    # the handler names it can run; None: not said (a version before it did), so every name is kept
    handlers: list[str] | None = None

    def to_json(self) -> dict[str, JSON]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "queues": self.queues,
            "concurrency": self.concurrency,
            "started_at": self.started_at,
            "last_heartbeat": self.last_heartbeat,
            "heartbeat_age": self.heartbeat_age,
            "running": self.running,
            "version": self.version,
            "handlers": self.handlers or [],
        }


@dataclass(frozen=True, slots=True)
class Tidied:
    """What `JobStore.tidy` dropped: how many handler names' counters, and which queues."""

    names: int = 0
    queues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HandlerPolicy:
    """What a worker advertises per handler on each of its queues (refreshed with its heartbeat):
    that it runs the handler, and the handler's policy for jobs that set none of their own."""

    name: str
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: Backoff | None = None


@dataclass(slots=True)
class JobPage:
    jobs: list[Job]
    cursor: str | None  # pass back to get the next page; None at the end


@dataclass(slots=True)
class QueueMetrics:
    """Counters one queue has accumulated, keyed by handler name."""

    enqueued: dict[str, int] = field(default_factory=dict)
    runs: dict[tuple[str, str], int] = field(default_factory=dict)  # (name, outcome)
    retries: dict[str, int] = field(default_factory=dict)
    # name -> non-cumulative counts per bucket of DURATION_BUCKETS, plus one for +Inf
    duration_buckets: dict[str, list[int]] = field(default_factory=dict)
    duration_sum: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class MetricsSnapshot:
    queues: dict[str, QueueMetrics]
    counts: dict[str, dict[str, int]]  # queue -> state -> jobs
    heartbeat_ages: dict[str, float]  # worker id -> seconds since its last heartbeat
    unreadable: int = 0  # stored values this snapshot skipped because they could not be read
    paused: set[str] = field(default_factory=set)  # queues paused now (bagbot_queue_paused)


@dataclass(slots=True)
class StoreHealth:
    ok: bool
    backend: str
    version: str = ""
    maxmemory_policy: str = ""
    used_memory: int = 0
    detail: str = ""
    # A server that evicts keys under memory pressure would drop jobs: such a store says so here.
    needs_noeviction: bool = False

    @property
    def policy_ok(self) -> bool:
        return not self.needs_noeviction or self.maxmemory_policy == "noeviction"


