"""Queue overview: how many jobs each queue holds in each state."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import StoreDep
from backend.api.schemas import ErrorOut, QueueOut, QueuesOut

router = APIRouter(prefix="/api/queues", tags=["queues"])


@router.get("", responses={503: {"model": ErrorOut}})
async def list_queues(store: StoreDep) -> QueuesOut:
    """Per queue, the count of jobs in each state (zeros included), sorted by name."""
    counts = await store.counts()
    return QueuesOut(
        queues=[QueueOut(name=name, counts=by_state, total=sum(by_state.values()))
                for name, by_state in sorted(counts.items())]
    )
