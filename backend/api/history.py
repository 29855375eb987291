"""Per-minute history of a queue (runs, failed runs, run-duration quantiles) for the dashboard's charts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field

from backend.api.deps import StoreDep
from backend.api.schemas import QUEUE_PATTERN, ErrorOut
from backend.workers.rules import HISTORY_MINUTES

router = APIRouter(prefix="/api/queues", tags=["queues"])


class MinuteOut(BaseModel):
    at: float = Field(description="the minute's start, epoch seconds on the store's clock")
    processed: int = Field(description="runs that ended that minute (done, retried, failed, lease expired)")
    failed: int = Field(description="of those, the runs that raised or whose lease expired")
    mean: float | None = Field(description="mean run duration, seconds; null when nothing ran")
    p50: float | None
    p95: float | None
    p99: float | None = Field(description="estimated from the histogram buckets (as Prometheus does)")


class HistoryOut(BaseModel):
    queue: str
    minutes: list[MinuteOut] = Field(description="oldest first, one per minute, zeros included")


@router.get("/{queue}/history", responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut},
                                           503: {"model": ErrorOut}})
async def queue_history(
    store: StoreDep,
    queue: Annotated[str, Path(pattern=QUEUE_PATTERN)],
    minutes: Annotated[int, Query(ge=1, le=HISTORY_MINUTES, description="how far back")] = 60,
) -> HistoryOut:
    """The queue's last `minutes` minutes, kept by the store in the same step as the metric counters
    (at most rules.HISTORY_MINUTES). 404 for a queue that has never had a job."""
    if queue not in await store.queues():
        raise HTTPException(status_code=404, detail=f"no queue {queue}")
    history = await store.history(queue, minutes)
    return HistoryOut(queue=queue, minutes=[MinuteOut.model_validate(m.to_json()) for m in history])
