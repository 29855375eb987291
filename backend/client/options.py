"""Per-job options (`task.with_options(...)`), kept apart from the handler's own kwargs.

`run_at` takes an aware `datetime` or epoch seconds; a naive datetime is refused, since the
worker's clock and the caller's zone may differ and a silent guess runs the job hours off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from backend.workers.models import JobSpec, epoch_seconds
from backend.workers.rules import DEFAULT_QUEUE


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
        if self.max_attempts is not None:
            spec.max_attempts = self.max_attempts
        return spec.validate()
