"""Live workers, as their heartbeats show them."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import SettingsDep, StoreDep
from backend.api.schemas import ErrorOut, WorkersOut
from backend.config import Settings

router = APIRouter(prefix="/api/workers", tags=["workers"])


def stale_after(settings: Settings) -> float:
    """A worker that missed this long of heartbeats is gone (it would have lost its leases too)."""
    return max(settings.lease_seconds, 3 * settings.heartbeat_seconds)


@router.get("", responses={503: {"model": ErrorOut}})
async def list_workers(store: StoreDep, settings: SettingsDep) -> WorkersOut:
    """Live workers: id, host, pid, queues, concurrency, running jobs, start, last heartbeat and its age."""
    workers = await store.list_workers(stale_after=stale_after(settings))
    return WorkersOut.model_validate({"workers": [w.to_json() for w in workers]})
