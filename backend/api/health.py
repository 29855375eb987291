"""Liveness and readiness probes.

/api/health says only that the process serves (a platform restarts it when this
fails, so it must not depend on Redis: a Redis outage should not restart every
web process). /api/ready says whether the store answers.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backend.api.schemas import HealthOut, ReadyOut
from backend.workers.job_store import JobStore

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health")
async def health() -> HealthOut:
    """Liveness: 200 while the process serves requests (HEAD too, for uptime monitors)."""
    return HealthOut(status="ok")


router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)


@router.get("/ready", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 when the store answers, 503 when it does not. Reports Redis's maxmemory-policy."""
    store: JobStore | None = request.app.state.store
    if store is None:
        out = ReadyOut(status="starting", store="", version="", maxmemory_policy="", policy_ok=False,
                       detail="the job store is not started yet")
        return JSONResponse(out.model_dump(), status_code=503)
    health = await store.health()
    out = ReadyOut(
        status="ok" if health.ok else "unavailable",
        store=health.backend,
        version=health.version,
        maxmemory_policy=health.maxmemory_policy,
        policy_ok=health.policy_ok,
        detail=health.detail,
    )
    return JSONResponse(out.model_dump(), status_code=200 if health.ok else 503)
