"""Per-job options (`task.with_options(...)`), kept apart from the handler's own kwargs.

`run_at` takes an aware `datetime` or epoch seconds; a naive datetime is refused, since the
worker's clock and the caller's zone may differ and a silent guess runs the job hours off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from backend.workers.models import JobSpec, epoch_seconds
from backend.workers.rules import DEFAULT_QUEUE, InvalidJobError


class HasId(Protocol):
    """A job handle or record: what `depends_on` takes besides an id."""

    @property
    def id(self) -> str: ...

    @property
    def queue(self) -> str | None: ...


Parent = HasId | str


def parent_ids(depends_on: Sequence[Parent], queue: str) -> list[str]:
    """Ids of `depends_on` (handles, jobs or ids); a handle of another queue is refused now (a job
    depends only on jobs of its own queue: each step stays in one Redis Cluster slot)."""
    ids: list[str] = []
    for parent in depends_on:
        if isinstance(parent, str):
            ids.append(parent)
            continue
        if parent.queue is not None and parent.queue != queue:
            raise InvalidJobError(f"depends_on: job {parent.id} is on queue {parent.queue}, not {queue}: "
                                  "a job depends only on jobs of its own queue")
        ids.append(parent.id)
    return ids


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Options of one job. `None` means the default (the spec's, or the handler's policy)."""

    queue: str | None = None
    delay: float | None = None
    run_at: datetime | float | None = None
    priority: int | None = None
    unique_key: str | None = None
    id: str | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    # publish this job's state changes so a handle can wait on them without polling: one
    # PUBLISH per state change of this job; jobs enqueued with events=False cost nothing extra
    events: bool | None = None
    # run after these jobs (handles, jobs or ids of the same queue) have ended done; with
    # run_on_failure, after they have ended whatever their outcome (docs/features.md)
    depends_on: tuple[Parent, ...] | None = None
    run_on_failure: bool | None = None
    # at most `rate` ("100/s") starts of jobs with this key across all workers (docs/features.md)
    rate_key: str | None = None
    rate: str | None = None

    def merged(self, **changes: Any) -> JobOptions:
        """These options with `changes` applied (a `None` change keeps the current value)."""
        given = {key: value for key, value in changes.items() if value is not None}
        return replace(self, **given)

    def spec(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> JobSpec:
        """The validated JobSpec for handler `name` called with `args`/`kwargs`."""
        spec = JobSpec(
            name=name,
            args=args,
            kwargs=kwargs,
            queue=self.queue or DEFAULT_QUEUE,
            id=self.id,
            delay=self.delay,
            run_at=None if self.run_at is None else epoch_seconds(self.run_at),
            priority=self.priority or 0,
            timeout=self.timeout,
            unique_key=self.unique_key,
            events=True if self.events is None else self.events,
            rate_key=self.rate_key,
            rate=self.rate,
        )
        if self.depends_on:
            spec.depends_on = parent_ids(self.depends_on, spec.queue)
            spec.run_on_failure = bool(self.run_on_failure)
        if self.max_attempts is not None:
            spec.max_attempts = self.max_attempts
        return spec.validate()
