"""Pydantic models of the HTTP edge: what the API accepts and returns.

The store speaks dataclasses (models.py); pydantic lives only here, where it
validates untrusted input and documents the OpenAPI schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.workers.models import JobSpec
from backend.workers.rates import canonical_rate
from backend.workers.rules import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, MAX_PARENTS, MAX_PRIORITY

_YEAR = 366 * 24 * 3600.0
# The store's own rules (models.py), stated in the schema so clients see them; pydantic's regex
# engine reads `$` as the very end, so a trailing newline is refused here too.
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"


class EnqueueRequest(BaseModel):
    """A job to enqueue. `delay` (seconds) or `run_at` (ISO time) schedules it for later."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="the handler, e.g. bagbot.echo")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field(DEFAULT_QUEUE, pattern=QUEUE_PATTERN)
    delay: float | None = Field(None, ge=0, le=_YEAR, description="seconds from now")
    run_at: datetime | None = Field(
        None, description="ISO 8601 time with its zone (2026-12-01T09:00:00Z, or +01:00); no zone is a 422"
    )
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="higher runs first")
    max_attempts: int | None = Field(
        None, ge=1, le=1000,
        description=f"runs before the job fails; default: its handler's, else {DEFAULT_MAX_ATTEMPTS}")
    timeout: float | None = Field(None, gt=0, le=_YEAR, description="seconds; default: the handler's")
    unique_key: str | None = Field(
        None, min_length=1, max_length=200, description="at most one unfinished job per key and queue"
    )
    id: str | None = Field(None, pattern=ID_PATTERN, description="your own id: repeats are no-ops")
    limit_key: str | None = Field(
        None, min_length=1, max_length=200, description="with `limit`: at most `limit` such jobs run at once"
    )
    limit: int | None = Field(None, ge=1, le=100_000, description="see limit_key")
    events: bool = Field(False, description="publish this job's state changes (Redis pub/sub)")
    depends_on: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(
        default_factory=list, max_length=MAX_PARENTS,
        description="ids of jobs of its queue that must end done first (it is `deferred` till then)")
    run_on_failure: bool = Field(False, description="with depends_on: run once they have ended, however")
    rate_key: str | None = Field(
        None, min_length=1, max_length=200, description="with `rate`: at most `rate` such jobs start"
    )
    rate: str | None = Field(None, max_length=40, description='e.g. "100/m" (N/<unit>, unit s, m, h, d)')

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return None if value is None else canonical_rate(value)  # InvalidRateError is a ValueError: 422

    @model_validator(mode="after")
    def _one_schedule(self) -> Self:
        if self.delay is not None and self.run_at is not None:
            raise ValueError("give delay or run_at, not both")
        if self.run_at is not None and self.run_at.utcoffset() is None:
            # a guess at the zone would run the job hours early or late
            raise ValueError("run_at needs a time zone, e.g. 2026-12-01T09:00:00Z or 2026-12-01T10:00+01:00")
        if (self.limit_key is None) != (self.limit is None):
            raise ValueError("give limit_key and limit together")
        if (self.rate_key is None) != (self.rate is None):
            raise ValueError("give rate_key and rate together")
        for label, value in (("unique_key", self.unique_key), ("id", self.id), ("limit_key", self.limit_key),
                             ("rate_key", self.rate_key)):
            # Control characters and lone surrogates cannot be stored as text: 422 here, not a 500 later.
            if value is not None and not value.isprintable():
                raise ValueError(f"{label} must be printable text")
        return self

    def to_spec(self) -> JobSpec:
        run_at = self.run_at.timestamp() if self.run_at is not None else None
        return JobSpec(
            name=self.name,
            args=self.args,
            kwargs=self.kwargs,
            queue=self.queue,
            id=self.id,
            delay=self.delay,
            run_at=run_at,
            priority=self.priority,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
            unique_key=self.unique_key,
            limit_key=self.limit_key,
            limit=self.limit,
            events=self.events,
            depends_on=list(self.depends_on),
            run_on_failure=self.run_on_failure,
            rate_key=self.rate_key,
            rate=self.rate,
        )


class JobErrorOut(BaseModel):
    type: str
    message: str
    traceback: str = ""


class AttemptErrorOut(JobErrorOut):
    attempt: int = Field(description="the attempt that raised (1-based; a manual retry starts again at 1)")
    at: float = Field(description="when it was recorded, epoch seconds on the store's clock")


class JobOut(BaseModel):
    """A job as the API shows it. Times are epoch seconds on the store's clock."""

    id: str
    name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    priority: int
    timeout: float | None
    run_at: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker: str | None
    lease_until: float | None
    last_error: JobErrorOut | None
    errors: list[AttemptErrorOut] = Field(
        default_factory=list,
        description="the errors of the last failed attempts, oldest first (rules.ERROR_HISTORY kept);"
        " a job that ended done after failures keeps them here")
    result: Any = None
    unique_key: str | None
    limit_key: str | None = None
    limit: int | None = None
    events: bool = False
    progress: float | None = Field(None, description="the last value the handler reported")
    progress_message: str | None = None
    cancel_requested: bool = Field(False, description="running, asked to stop: its worker cancels it")
    unreadable: dict[str, str] = Field(
        default_factory=dict,
        description="fields of a corrupt record that could not be read (field -> stored value); they show"
        " their default, and `state` is `corrupt` when the state itself could not be read")
    depends_on: list[str] = Field(default_factory=list, description="the jobs it waits for (`deferred`)")
    run_on_failure: bool = False
    parent_states: dict[str, str] = Field(default_factory=dict, description="ended parent -> its end state")
    rate_key: str | None = None
    rate: str | None = None


class JobListOut(BaseModel):
    jobs: list[JobOut]
    cursor: str | None = Field(description="pass back as ?cursor= for the next page; null at the end")


class QueueOut(BaseModel):
    name: str
    counts: dict[str, int] = Field(description="state -> number of jobs, every state present")
    total: int
    paused: bool = Field(False, description="no worker claims from it until it is resumed")
    rate: str | None = Field(None, description='its rate limit ("100/s"); PUT /api/queues/{queue}/rate')


class PauseOut(BaseModel):
    queue: str
    paused: bool


class RateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate: str = Field(max_length=40, description='N/<unit> or N/<k><unit>, unit s, m, h or d: "100/s"')

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        return canonical_rate(value)


class RateOut(BaseModel):
    queue: str
    rate: str | None = Field(description="null: no rate limit")


class QueuesOut(BaseModel):
    queues: list[QueueOut]


class RunningJobOut(BaseModel):
    queue: str
    id: str


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    last_heartbeat: float
    heartbeat_age: float
    running: int
    version: str
    handlers: list[str] = Field(default_factory=list, description="the handler names this worker runs")
    running_jobs: list[RunningJobOut] = Field(
        default_factory=list, description="its running jobs as of its last heartbeat (the first 100)")


class WorkersOut(BaseModel):
    workers: list[WorkerOut]


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    store: str
    version: str
    maxmemory_policy: str
    policy_ok: bool
    detail: str = ""


class ScheduleOut(BaseModel):
    name: str
    handler: str
    queue: str
    expression: str
    timezone: str
    next_fire: float | None = Field(description="epoch seconds on the store's clock; null: never")


class SchedulesOut(BaseModel):
    schedules: list[ScheduleOut]


class ErrorOut(BaseModel):
    detail: Any


class BatchRequest(BaseModel):
    """A batch: `jobs` (one queue), and a `callback` that runs once when every one has ended."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[EnqueueRequest] = Field(min_length=1, max_length=MAX_PARENTS)
    callback: EnqueueRequest | None = Field(None, description="default: a bagbot.noop marks the end")
    id: str | None = Field(None, pattern=ID_PATTERN, max_length=40,
                           description="the batch id (= its callback's job id): repeats are no-ops")


class BatchOut(BaseModel):
    """A batch: its id (its callback's job id), its jobs and how they stand."""

    id: str
    queue: str
    jobs: list[str]
    total: int
    done: int
    failed: int
    cancelled: int
    pending: int
    finished: bool = Field(description="every job has ended: the callback is enqueued, running or ended")
    callback_state: str
    results: dict[str, Any] = Field(default_factory=dict, description="job id -> result, for jobs done")
