"""Request dependencies: the store and settings the app was built with, and the token check.

The store lives on `app.state`, never in a module global, so tests can build
several apps side by side, each with its own store.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backend.config import Settings
from backend.workers.job_store import JobStore

_bearer = HTTPBearer(auto_error=False, description="BAGBOT_API_TOKEN, when the backend has one")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> JobStore:
    store: JobStore | None = request.app.state.store
    if store is None:
        # Only before the lifespan has run (or after it ended): say so instead of a 500.
        raise HTTPException(503, "the job store is not started yet")
    return store


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Mutating calls need `Authorization: Bearer <BAGBOT_API_TOKEN>` when a token is set.

    compare_digest keeps the comparison time independent of how much of the token matched.
    """
    check_token(request, credentials.credentials if credentials is not None else "")


def check_token(request: Request, given: str) -> None:
    """401 unless the app has no token or `given` is it (also run before body validation)."""
    expected: str | None = get_settings(request).api_token
    if expected is None:
        return
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        detail = "missing bearer token" if not given else "wrong bearer token"
        raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


StoreDep = Annotated[JobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AuthDep = Depends(require_token)
