"""Bulk job endpoints: retry or cancel every job a filter selects, purge finished jobs.

Token-protected like every mutation and bounded per call (see backend/workers/bulk.py): a reply
says how many jobs matched, how many moved, and whether more match (call again).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from backend.api.deps import AuthDep, StoreDep
from backend.api.schemas import ID_PATTERN, NAME_PATTERN, QUEUE_PATTERN, ErrorOut
from backend.workers.bulk import MAX_BULK, MAX_PURGE, BulkFilter, purge_state
from backend.workers.models import JobState

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 413, 422, 503, 507)}
_YEARS = 100 * 366 * 24 * 3600.0


class BulkRequest(BaseModel):
    """Which jobs: every given field must match. `ids` names jobs directly (each found one counts as
    matched, and moves if its state allows); without ids, the newest `limit` jobs in `state` (or,
    when no state is given: failed and cancelled for retry; enqueued, scheduled and retry_scheduled
    for cancel)."""

    model_config = ConfigDict(extra="forbid")

    state: JobState | None = Field(None, description="retry: failed|cancelled; cancel: enqueued|scheduled|"
                                   "retry_scheduled|running (running jobs get a cancel request)")
    queue: str | None = Field(None, pattern=QUEUE_PATTERN)
    name: str | None = Field(None, pattern=NAME_PATTERN, description="the handler")
    ids: list[Annotated[str, Field(pattern=ID_PATTERN)]] | None = Field(None, max_length=MAX_BULK)
    limit: int = Field(MAX_BULK, ge=1, le=MAX_BULK, strict=True, description="at most this many jobs")

    def selection(self) -> BulkFilter:
        ids = tuple(self.ids) if self.ids is not None else None
        return BulkFilter(state=self.state, queue=self.queue, name=self.name, ids=ids, limit=self.limit)


class BulkOut(BaseModel):
    matched: int = Field(description="jobs the filter selected this call (at most `limit`)")
    moved: int = Field(description="of those, how many were retried / cancelled (or asked to stop)")
    more: bool = Field(description="more jobs match than this call took: call again")


class PurgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(None, pattern=QUEUE_PATTERN)
    state: JobState | None = Field(None, description="done, failed or cancelled; default: all three")
    older_than: float = Field(0.0, ge=0, le=_YEARS, strict=True, description="seconds since the job finished")


class PurgeOut(BaseModel):
    purged: int = Field(description=f"jobs deleted, at most {MAX_PURGE} per call (that many: call again)")


# No body is the empty filter (pydantic fills in every default).
BulkBody = Annotated[BulkRequest, Body(default_factory=BulkRequest)]
PurgeBody = Annotated[PurgeRequest, Body(default_factory=PurgeRequest)]


@router.post("/retry", dependencies=[AuthDep], responses=_ERRORS)
async def retry_jobs(store: StoreDep, body: BulkBody) -> BulkOut:
    """Retry every failed/cancelled job the filter selects (each as `POST /api/jobs/{id}/retry`)."""
    result = await store.retry_many(body.selection())
    return BulkOut(matched=result.matched, moved=result.moved, more=result.more)


@router.post("/cancel", dependencies=[AuthDep], responses=_ERRORS)
async def cancel_jobs(store: StoreDep, body: BulkBody) -> BulkOut:
    """Cancel every job the filter selects (each as `POST /api/jobs/{id}/cancel`)."""
    result = await store.cancel_many(body.selection())
    return BulkOut(matched=result.matched, moved=result.moved, more=result.more)


@router.post("/purge", dependencies=[AuthDep], responses=_ERRORS)
async def purge_jobs(store: StoreDep, body: PurgeBody) -> PurgeOut:
    """Delete finished jobs (done, failed, cancelled) that finished `older_than` seconds ago or more."""
    state = purge_state(body.state)
    queues = [body.queue] if body.queue is not None else None
    return PurgeOut(purged=await store.purge(body.older_than, queues, MAX_PURGE, state))
