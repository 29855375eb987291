"""One place that turns the store contract's errors into HTTP statuses, so no route maps them by
hand. Stores map their own backend's errors to the contract's (redis/errors.py), so none appear here.

Every error body is `{"detail": ...}` (FastAPI's own shape), and nothing a
store raises on purpose ever reaches the client as a 500 trace. Error bodies are always printable
JSON: a rejected value that JSON cannot carry (NaN, Infinity, a lone surrogate) is quoted as its
repr, so the 422 itself can never fail to serialise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security.utils import get_authorization_scheme_param

from backend.api.deps import check_token
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


def printable(text: str) -> str:
    """`text` as UTF-8 can carry it: lone surrogates become backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_json(value: Any) -> Any:
    """`value` with every part JSON can carry kept, the rest (non-finite floats, unencodable text,
    other objects) quoted as printable text."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {printable(str(key)): safe_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [safe_json(item) for item in value]
    return printable(repr(value))


def _detail(exc: Exception, status: int) -> str:
    if status == 507:
        return printable(f"the job store is full (Redis out of memory): {exc}")
    if status == 503:
        return printable(f"the job store is unavailable: {exc}")
    return printable(str(exc) or type(exc).__name__)


def _handler(status: int) -> Handler:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"detail": _detail(exc, status)}, status_code=status, headers=headers)

    return handle


_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 for a body or parameter that fails validation, in printable JSON. A mutating call is
    checked for its token first (FastAPI parses the body before it runs the token dependency), so
    an unauthenticated caller gets 401 and learns nothing about what the body should be."""
    if request.method in _MUTATING:
        scheme, given = get_authorization_scheme_param(request.headers.get("authorization"))
        try:
            check_token(request, given if scheme.lower() == "bearer" else "")
        except HTTPException as denied:
            return JSONResponse({"detail": denied.detail}, status_code=denied.status_code,
                                headers=denied.headers)
    errors = exc.errors() if isinstance(exc, RequestValidationError) else [str(exc)]
    return JSONResponse({"detail": safe_json(list(errors))}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Register one handler per mapped error class on `app`, and the printable 422."""
    for cls, status in _STATUS:
        app.add_exception_handler(cls, _handler(status))
    app.add_exception_handler(RequestValidationError, _invalid_request)
