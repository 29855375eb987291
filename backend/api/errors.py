"""One place that turns the store contract's errors into HTTP statuses, so no route maps them by
hand. Stores map their own backend's errors to the contract's (redis/errors.py), so none appear here.

Every error body is `{"detail": ...}` (FastAPI's own shape), and nothing a
store raises on purpose ever reaches the client as a 500 trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from backend.workers.job_store import (
    IllegalTransitionError,
    JobNotFoundError,
    StaleClaimError,
    StoreFullError,
    StoreUnavailableError,
)
from backend.workers.rules import InvalidJobError

log = logging.getLogger("bagbot.api")

Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]

# Starlette picks the handler of the most specific class in an exception's MRO.
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InvalidJobError, 422),
    (JobNotFoundError, 404),
    (IllegalTransitionError, 409),
    (StaleClaimError, 409),
    (StoreFullError, 507),
    (StoreUnavailableError, 503),
)


def status_for(exc: Exception) -> int | None:
    """The HTTP status for a store error, or None when it is not one we map."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return None


def _detail(exc: Exception, status: int) -> str:
    if status == 507:
        return f"the job store is full (Redis out of memory): {exc}"
    if status == 503:
        return f"the job store is unavailable: {exc}"
    return str(exc) or type(exc).__name__


def _handler(status: int) -> Handler:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"detail": _detail(exc, status)}, status_code=status, headers=headers)

    return handle


def install_error_handlers(app: FastAPI) -> None:
    """Register one handler per mapped error class on `app`."""
    for cls, status in _STATUS:
        app.add_exception_handler(cls, _handler(status))
