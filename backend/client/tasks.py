"""Typed tasks: `@task` registers a handler and returns an object that is still the function.

`send_email("a@b.c")` calls the handler directly (unit tests), while
`await send_email.enqueue("a@b.c", subject="hi")` enqueues a job whose arguments mypy checks
against the handler's signature (ParamSpec) and returns a `JobHandle[R]`, R the handler's
return type. Per-job options go through `with_options(...)`, never into the handler's kwargs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from backend.client.options import JobOptions, Parent
from backend.client.producer import default_producer
from backend.workers.handlers import Handler, HandlerRegistry, default_registry
from backend.workers.rules import Backoff

if TYPE_CHECKING:
    from backend.client.handle import JobHandle
    from backend.client.workflows import Call
    from backend.workers.schedules import Schedule

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C")  # what calling the task directly returns: R, or a coroutine of R


class Task(Generic[P, R, C]):
    """A registered handler: call it like the function, or `enqueue` it as a job."""

    __name__: str  # copied from the function, like its __doc__ and __module__
    __qualname__: str

    def __init__(self, fn: Callable[P, C], handler: Handler, options: JobOptions | None = None) -> None:
        self.fn = fn
        self.handler = handler
        self.name = handler.name
        self.options = options or JobOptions()
        functools.update_wrapper(self, fn)  # keeps __doc__, __name__, __module__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> C:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    def with_options(
        self,
        *,
        queue: str | None = None,
        delay: float | None = None,
        run_at: datetime | float | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        id: str | None = None,  # the job's id, as everywhere else in the API
        max_attempts: int | None = None,
        timeout: float | None = None,
        events: bool | None = None,
        depends_on: Sequence[Parent] | None = None,
        run_on_failure: bool | None = None,
        rate_key: str | None = None,
        rate: str | None = None,
    ) -> Task[P, R, C]:
        """The same task with per-job options: `await t.with_options(queue="bulk").enqueue(...)`."""
        options = self.options.merged(
            queue=queue, delay=delay, run_at=run_at, priority=priority, unique_key=unique_key, id=id,
            max_attempts=max_attempts, timeout=timeout, events=events,
            depends_on=None if depends_on is None else tuple(depends_on), run_on_failure=run_on_failure,
            rate_key=rate_key, rate=rate,
        )
        return Task(self.fn, self.handler, options)

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        """This task's job described, not enqueued: for `client.batch(...)` and `client.chain(...)`."""
        from backend.client.workflows import Call

        return Call(self.options.spec(self.name, list(args), dict(kwargs)))

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue a job of this task on the default client (see `backend.client.producer`)."""
        handle: JobHandle[R] = await default_producer().enqueue_spec(
            self.options.spec(self.name, list(args), dict(kwargs))
        )
        return handle


AsyncTask = Task[P, R, Coroutine[Any, Any, R]]
SyncTask = Task[P, R, R]


class _Decorator:
    """What `task(...)` with options returns: applied to a function, it registers it."""

    def __init__(self, registry: HandlerRegistry, name: str | None, policy: dict[str, Any]) -> None:
        self.registry, self.name, self.policy = registry, name, policy

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R, R]: ...

    def __call__(self, fn: Callable[P, Any], /) -> Task[P, Any, Any]:
        if isinstance(fn, Task):
            fn = fn.fn
        self.registry.task(self.name, **self.policy)(fn)
        handler = self.registry.get(self.name or fn.__name__)
        if handler is None:  # pragma: no cover - registry.task just added it
            raise LookupError(f"handler {self.name or fn.__name__!r} did not register")
        return Task(fn, handler)


@overload
def task(name: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R, Coroutine[Any, Any, R]]: ...


@overload
def task(name: Callable[P, R], /) -> Task[P, R, R]: ...


@overload
def task(
    name: str | None = None,
    *,
    max_attempts: int | None = None,
    timeout: float | None = None,
    backoff: Backoff | None = None,
    no_retry: tuple[type[BaseException], ...] = (),
    limit: int | None = None,
    rate: str | None = None,
    schedule: Schedule | None = None,
    registry: HandlerRegistry | None = None,
    **policy: Any,
) -> _Decorator: ...


def task(
    name: str | Callable[..., Any] | None = None,
    *,
    registry: HandlerRegistry | None = None,
    **policy: Any,
) -> Any:
    """Register a handler: `@task("emails.send", max_attempts=5, timeout=30)`, `@task()` or bare
    `@task`. The policy options are the registry's (`backend.workers.handlers.HandlerRegistry.task`),
    passed through unchanged; `registry=` picks another registry than the worker's default."""
    chosen = registry if registry is not None else default_registry
    if callable(name):
        return _Decorator(chosen, None, {})(name)
    return _Decorator(chosen, name, policy)
