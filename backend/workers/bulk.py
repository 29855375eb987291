"""Bulk retry/cancel and purge: which jobs a filter selects, and which filters make sense.

One place for the rules, so the store, the API and the CLI refuse the same filters with the same
words. A bulk call is bounded (at most MAX_BULK jobs moved per call); each job is moved by the
same atomic step as a single retry/cancel, so a job whose state changed in between is matched
but not moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from backend.workers.models import CANCELLABLE_STATES, RETRYABLE_STATES, TERMINAL_STATES, JobState
from backend.workers.rules import InvalidJobError, validate_job_id, validate_name, validate_queue

MAX_BULK = 1000  # jobs matched (and moved) per bulk call: one call stays short for Redis and HTTP
MAX_PURGE = 10_000  # jobs deleted per purge call


class BulkAction(StrEnum):
    RETRY = "retry"
    CANCEL = "cancel"


# The states a filter may name per action. Without a state, cancel takes the jobs that have not
# started: stopping running ones is asked for explicitly (state=running: each gets a cancel request).
ALLOWED_STATES: dict[BulkAction, tuple[JobState, ...]] = {
    BulkAction.RETRY: tuple(s for s in JobState if s in RETRYABLE_STATES),
    BulkAction.CANCEL: (*(s for s in JobState if s in CANCELLABLE_STATES), JobState.RUNNING),
}
DEFAULT_STATES: dict[BulkAction, tuple[JobState, ...]] = {
    BulkAction.RETRY: ALLOWED_STATES[BulkAction.RETRY],
    BulkAction.CANCEL: tuple(s for s in JobState if s in CANCELLABLE_STATES),
}


@dataclass(frozen=True, slots=True)
class BulkFilter:
    """Which jobs a bulk retry/cancel takes: every given field must match (None: any).

    `ids` (at most MAX_BULK) names jobs directly: each one found counts as matched whatever its
    state, and is moved only if its state allows it. Without ids, the jobs are those in `state`
    (or the action's default states), newest first, at most `limit` of them.
    """

    state: JobState | None = None
    queue: str | None = None
    name: str | None = None
    ids: tuple[str, ...] | None = None
    limit: int = MAX_BULK

    def states(self, action: BulkAction) -> tuple[JobState, ...]:
        """The states to select from; InvalidJobError for a filter that makes no sense."""
        if self.queue is not None:
            validate_queue(self.queue)
        if self.name is not None:
            validate_name(self.name)
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_BULK:
            raise InvalidJobError(f"limit must be 1..{MAX_BULK}, not {self.limit!r}")
        if self.ids is not None:
            if len(self.ids) > MAX_BULK:
                raise InvalidJobError(f"at most {MAX_BULK} ids per call, not {len(self.ids)}")
            for job_id in self.ids:
                validate_job_id(job_id)
        allowed = ALLOWED_STATES[action]
        if self.state is None:
            return DEFAULT_STATES[action]
        if self.state not in allowed:
            names = ", ".join(s.value for s in allowed)
            raise InvalidJobError(f"cannot {action.value} jobs that are {self.state.value}: "
                                  f"{action.value} takes {names}")
        return (self.state,)


@dataclass(frozen=True, slots=True)
class BulkResult:
    matched: int  # jobs the filter selected (at most its limit)
    moved: int  # of those, how many the transition moved
    more: bool  # more jobs match than this call took: call again

    def to_json(self) -> dict[str, int | bool]:
        return {"matched": self.matched, "moved": self.moved, "more": self.more}


def purge_state(state: JobState | str | None) -> JobState | None:
    """A purge takes finished jobs only: `state` must be done, failed or cancelled (or None: all)."""
    if state is None:
        return None
    try:
        parsed = JobState(state)
    except ValueError:
        parsed = None
    if parsed not in TERMINAL_STATES:
        shown = state.value if isinstance(state, JobState) else state
        raise InvalidJobError(f"purge takes finished jobs only: state must be done, failed or cancelled,"
                              f" not {shown!r}")
    return parsed
