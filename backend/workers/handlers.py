"""Handler registry: the names jobs refer to, and how each handler wants to be run.

A handler is a plain function, async or sync, called with the job's args and
kwargs. Per-handler policy (attempts, timeout, backoff, errors not worth
retrying) lives here so the worker can apply it without knowing the handler.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from backend.workers.rates import canonical_rate
from backend.workers.rules import Backoff, validate_name

if TYPE_CHECKING:
    from backend.workers.schedules import Schedule

F = TypeVar("F", bound=Callable[..., Any])
# "thread": async handlers on the loop, sync ones in the worker's thread pool; "process": in a child
# process per job, killed on timeout (CPU-bound work, or code that holds the GIL): docs/worker.md
Executor = Literal["thread", "process"]
EXECUTORS: tuple[Executor, ...] = ("thread", "process")


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a running handler may want to know about its own job."""

    job_id: str
    name: str
    queue: str
    attempt: int
    max_attempts: int
    # set by the worker: records progress (rate-limited there); callable from any thread
    reporter: Callable[[float, str], None] | None = None
    # jobs it depends on (depends_on, a chain, or a batch's jobs when it is the batch's callback):
    # parent id -> its end state, and parent id -> result for those that ended done
    parent_states: dict[str, str] = field(default_factory=dict)
    parent_results: dict[str, Any] = field(default_factory=dict)

    @property
    def parent_counts(self) -> dict[str, int]:
        """How many parents ended done, failed and cancelled (a batch callback's summary)."""
        counts = {"done": 0, "failed": 0, "cancelled": 0}
        for state in self.parent_states.values():
            counts[state] = counts.get(state, 0) + 1
        return counts


# A JobContext, or what makes one on first use: most handlers never ask, so the worker binds a
# maker (one partial) rather than building a JobContext and a progress reporter for every job.
CurrentJob = JobContext | Callable[[], JobContext]
_current: ContextVar[CurrentJob | None] = ContextVar("bagbot_current_job", default=None)


def current_job() -> JobContext:
    """The job the calling handler is running (also inside sync handlers' threads).

    Raises LookupError outside a handler, where there is no job to describe.
    """
    ctx = _current.get()
    if ctx is None:
        raise LookupError("current_job() called outside a running job")
    return ctx if isinstance(ctx, JobContext) else ctx()


def report_progress(value: float, message: str = "") -> None:
    """Report how far the running job got (e.g. 0.0-1.0 or items done) with a short message.

    Cheap to call often: the worker writes at most one value per job every 0.5 s (the latest
    wins). Works in async and sync handlers; outside a job it raises LookupError.
    """
    ctx = current_job()
    if ctx.reporter is not None:
        ctx.reporter(float(value), str(message)[:500])


def set_current_job(ctx: CurrentJob | None) -> Token[CurrentJob | None]:
    """Bind `ctx` (or a callable that makes it, called by each `current_job()`: it should cache)
    for the current task; returns a token for `reset_current_job`."""
    return _current.set(ctx)


def reset_current_job(token: Token[CurrentJob | None]) -> None:
    _current.reset(token)


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered callable plus the policy the worker applies to its jobs."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    max_attempts: int | None = None
    timeout: float | None = None
    backoff: Backoff | None = None
    no_retry: tuple[type[BaseException], ...] = ()
    limit: int | None = None  # at most this many jobs of this handler run at once (all workers)
    rate: str | None = None  # at most this many starts per period ("100/m"; rates.py), all workers
    schedule: Schedule | None = None  # enqueue periodically (see schedules.py)
    executor: Executor = "thread"

    def is_retryable(self, exc: BaseException) -> bool:
        return not (self.no_retry and isinstance(exc, self.no_retry))


class HandlerRegistry:
    """Name -> Handler. Registering the same function again replaces it (module reloads);
    a different function under a taken name is an error, since jobs would silently change meaning."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._schedules: dict[str, tuple[str, Schedule]] = {}  # schedule name -> (handler, schedule)

    @overload
    def task(self, name: F, /) -> F: ...

    @overload
    def task(
        self,
        name: str | None = None,
        *,
        max_attempts: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        no_retry: tuple[type[BaseException], ...] = (),
        limit: int | None = None,
        schedule: Schedule | None = None,
        executor: Executor = "thread",
        rate: str | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        name: str | F | None = None,
        *,
        max_attempts: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        no_retry: tuple[type[BaseException], ...] = (),
        limit: int | None = None,
        schedule: Schedule | None = None,
        executor: Executor = "thread",
        rate: str | None = None,
    ) -> F | Callable[[F], F]:
        """Decorator: `@registry.task("emails.send", timeout=30)`, `@registry.task()` or bare
        `@registry.task` (the function's own name is used). `limit=N`: at most N of its jobs
        run at once across all workers; `schedule=Cron(...)|Every(...)`: enqueue periodically;
        `executor="process"`: run each job in a child process, killed on timeout; `rate="100/m"`:
        at most 100 of its jobs start per minute across all workers (docs/features.md)."""
        if callable(name):
            return self.task()(name)
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive")
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        if rate is not None:
            rate = canonical_rate(rate)  # InvalidRateError (a ValueError) names what is wrong
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}")

        def register(fn: F) -> F:
            handler_name = validate_name(name or fn.__name__)
            handler = Handler(
                name=handler_name,
                fn=fn,
                is_async=inspect.iscoroutinefunction(fn),
                max_attempts=max_attempts,
                timeout=timeout,
                backoff=backoff,
                no_retry=tuple(no_retry),
                limit=limit,
                rate=rate,
                schedule=schedule,
                executor=executor,
            )
            self.add(handler)
            if schedule is not None:
                self.schedule(handler_name, schedule)
            return fn

        return register

    def add(self, handler: Handler) -> None:
        old = self._handlers.get(handler.name)
        if old is not None and not _same_function(old.fn, handler.fn):
            raise ValueError(f"handler name {handler.name!r} is already registered to {old.fn!r}")
        self._handlers[handler.name] = handler

    def schedule(self, handler: str, schedule: Schedule) -> None:
        """Run `handler` periodically (the decorator's `schedule=` does this; call it directly to
        schedule a handler from configuration, or one handler several times with other args under
        other schedule names). The same name again replaces the schedule."""
        validate_name(handler)
        self._schedules[schedule.name or handler] = (handler, schedule)

    def schedules(self) -> list[tuple[str, Schedule]]:
        """(handler name, schedule) for every declared schedule, by schedule name."""
        return [self._schedules[name] for name in sorted(self._schedules)]

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def handlers(self) -> list[Handler]:
        return [self._handlers[name] for name in sorted(self._handlers)]

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    return a is b or (
        getattr(a, "__module__", None) == getattr(b, "__module__", None)
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
    )


default_registry = HandlerRegistry()
task = default_registry.task
schedule = default_registry.schedule
