"""Optional OpenTelemetry tracing (`pip install .[otel]`): the only module that imports opentelemetry.

When the package is missing, or no tracer provider is configured (neither `set_provider` here nor
the global `trace.set_tracer_provider`), every hook returns at once: a None check, no object made
per job. The enqueuer's context travels with the job as one field (`Job.trace`: the W3C
`traceparent`, then `\\n` and the `tracestate` if any); the run span *links* to it (see
docs/tracing.md for why a link and not a parent).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from backend.workers.models import Completion, Job, JobSpec
from backend.workers.rules import new_job_id

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed: every hook is a no-op
    trace = None  # type: ignore[assignment]

T = TypeVar("T")
MAX_TRACE_CHARS = 600  # traceparent (55) + a tracestate (at most 512 by the W3C spec)
_NOOP: AbstractContextManager[Any] = nullcontext()  # one shared instance: the disabled path makes nothing
_provider: Any = None  # set_provider's, else the global one once configured
_tracer: Any = None
_propagator: Any = TraceContextTextMapPropagator() if trace is not None else None
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ  # the API then loads one on first use


def set_provider(provider: Any) -> None:
    """Use `provider` (a TracerProvider) instead of the global one; None: back to the global one."""
    global _provider, _tracer
    _provider, _tracer = provider, None


def _active() -> Any:
    """The tracer, or None when tracing is off (package missing or no provider configured).

    Until a provider is set this is two None checks: `trace._TRACER_PROVIDER` is what
    `trace.set_tracer_provider` sets (the public getter also reads the environment on each call)."""
    global _tracer
    if _tracer is not None:
        return _tracer
    if trace is None or (_provider is None and trace._TRACER_PROVIDER is None and not _PROVIDER_FROM_ENV):
        return None
    provider = _provider or trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None  # nothing configured: the API's default records nothing anyway
    _tracer = provider.get_tracer("bagbot")
    return _tracer


def enabled() -> bool:
    """Whether spans are recorded: callers skip a no-op `with` on their per-job paths."""
    return _active() is not None


def enqueue_span(spec: JobSpec) -> AbstractContextManager[Any]:
    """PRODUCER span around one enqueue; its context is stored in `spec.trace` for the run to link to."""
    tracer = _active()
    return _NOOP if tracer is None else _enqueue_span(tracer, spec)


@contextmanager
def _enqueue_span(tracer: Any, spec: JobSpec) -> Iterator[Any]:
    spec.id = spec.id or new_job_id()  # the store would pick one the same way; the span names it
    attributes = {**_job_attributes(spec.id, spec.name, spec.queue), "messaging.operation.type": "send"}
    with tracer.start_as_current_span(
        f"bagbot.enqueue {spec.name}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    ) as span:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        if "traceparent" in carrier:
            value = carrier["traceparent"] + (
                f"\n{carrier['tracestate']}" if carrier.get("tracestate") else ""
            )
            spec.trace = value if len(value) <= MAX_TRACE_CHARS else carrier["traceparent"]
        yield span


def run_span(job: Job) -> AbstractContextManager[Any]:
    """CONSUMER span around one run of a handler, current while it runs (its own spans nest in it)."""
    tracer = _active()
    return _NOOP if tracer is None else _run_span(tracer, job)


@contextmanager
def _run_span(tracer: Any, job: Job) -> Iterator[Any]:
    attributes = {
        **_job_attributes(job.id, job.name, job.queue),
        "bagbot.job.attempt": job.attempts,
        "bagbot.job.max_attempts": job.max_attempts,
        "messaging.operation.type": "process",
    }
    with tracer.start_as_current_span(
        f"bagbot.run {job.name}",
        context=otel_context.Context(),
        kind=trace.SpanKind.CONSUMER,
        links=_links(job.trace),
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except asyncio.CancelledError:  # the worker stopped the run (cancel request, stale claim, shutdown)
            span.set_status(trace.StatusCode.ERROR, "run stopped by the worker")
            raise


def outcome(span: Any, completion: Completion) -> Completion:
    """Mark the run span ERROR with the job's error (an `exception` event, as record_exception does)."""
    if span is not None and completion.error is not None:
        error = completion.error
        span.add_event(
            "exception",
            {
                "exception.type": error.type,
                "exception.message": error.message,
                "exception.stacktrace": error.traceback,
            },
        )
        span.set_attribute("bagbot.job.retryable", completion.retryable)
        span.set_status(trace.StatusCode.ERROR, f"{error.type}: {error.message}"[:300])
    return completion


def store_call(operation: str, call: Awaitable[T]) -> Awaitable[T]:
    """A span around one batched store call (claim, finish): one per call, not per job."""
    tracer = _active()
    return call if tracer is None else _store_call(tracer, operation, call)


async def _store_call(tracer: Any, operation: str, call: Awaitable[T]) -> T:
    with tracer.start_as_current_span(
        f"bagbot.{operation}",
        context=otel_context.Context(),
        kind=trace.SpanKind.CLIENT,
        attributes={"messaging.system": "bagbot", "messaging.operation.name": operation},
    ) as span:
        result = await call
        if isinstance(result, list):
            span.set_attribute("messaging.batch.message_count", len(result))
        return result


def _job_attributes(job_id: str, name: str, queue: str) -> dict[str, Any]:
    return {
        "bagbot.job.id": job_id,
        "bagbot.job.name": name,
        "bagbot.job.queue": queue,
        "messaging.system": "bagbot",
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
    }


def _links(stored: str | None) -> list[Any]:
    """A link to the enqueuer's span context, if the job carries a valid one (garbage: no link)."""
    if not stored:
        return []
    traceparent, _, tracestate = stored.partition("\n")
    carrier = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
    context = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
    return [trace.Link(context)] if context.is_valid else []
