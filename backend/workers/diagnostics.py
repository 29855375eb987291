"""The built-in diagnostic handlers (DESIGN §7): `bagbot.noop`, `bagbot.echo`, `bagbot.sleep`,
`bagbot.fail`. They register on import; the worker imports this module, so every worker has them.
"""

from __future__ import annotations

import asyncio

from backend.workers.handlers import current_job, task
from backend.workers.models import JSON


@task("bagbot.noop")
async def noop(*args: JSON, **kwargs: JSON) -> None:
    """Does nothing: measures the queue itself."""
    return None


@task("bagbot.echo")
async def echo(*args: JSON, **kwargs: JSON) -> JSON:
    """Returns its args (and kwargs, if any): proves payloads round-trip."""
    if kwargs:
        return {"args": list(args), "kwargs": kwargs}
    return list(args)


@task("bagbot.sleep")
async def sleep(seconds: float = 1.0) -> dict[str, float]:
    """Sleeps: exercises timeouts, shutdown grace and lease extension."""
    await asyncio.sleep(float(seconds))
    return {"slept": float(seconds)}


class DiagnosticFailure(RuntimeError):
    """Raised on purpose by `bagbot.fail`."""


@task("bagbot.fail")
async def fail(times: int = 1) -> dict[str, int]:
    """Raises while the attempt number is <= `times`, then succeeds: exercises retries."""
    attempt = current_job().attempt
    if attempt <= int(times):
        raise DiagnosticFailure(f"bagbot.fail: attempt {attempt} of {int(times)} planned failures")
    return {"attempt": attempt, "failed_before": int(times)}
