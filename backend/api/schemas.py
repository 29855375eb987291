"""Pydantic models of the HTTP edge: what the API accepts and returns.

The store speaks dataclasses (models.py); pydantic lives only here, where it
validates untrusted input and documents the OpenAPI schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.workers.models import JobSpec
from backend.workers.rules import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, MAX_PRIORITY

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

    @model_validator(mode="after")
    def _one_schedule(self) -> Self:
        if self.delay is not None and self.run_at is not None:
            raise ValueError("give delay or run_at, not both")
        if self.run_at is not None and self.run_at.utcoffset() is None:
            # a guess at the zone would run the job hours early or late
            raise ValueError("run_at needs a time zone, e.g. 2026-12-01T09:00:00Z or 2026-12-01T10:00+01:00")
        if (self.limit_key is None) != (self.limit is None):
            raise ValueError("give limit_key and limit together")
        for label, value in (("unique_key", self.unique_key), ("id", self.id), ("limit_key", self.limit_key)):
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
        )


class JobErrorOut(BaseModel):
    type: str
    message: str
    traceback: str = ""


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


class JobListOut(BaseModel):
    jobs: list[JobOut]
    cursor: str | None = Field(description="pass back as ?cursor= for the next page; null at the end")


class QueueOut(BaseModel):
    name: str
    counts: dict[str, int] = Field(description="state -> number of jobs, every state present")
    total: int
    paused: bool = Field(False, description="no worker claims from it until it is resumed")


class PauseOut(BaseModel):
    queue: str
    paused: bool


class QueuesOut(BaseModel):
    queues: list[QueueOut]


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
