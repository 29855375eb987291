"""Queues: how many jobs each holds in each state, whether it is paused; pause and resume."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from backend.api.deps import AuthDep, StoreDep
from backend.api.schemas import QUEUE_PATTERN, ErrorOut, PauseOut, QueueOut, QueuesOut

router = APIRouter(prefix="/api/queues", tags=["queues"])

QueuePath = Annotated[str, Path(pattern=QUEUE_PATTERN, description="the queue's name")]
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 422, 503)}


@router.get("", responses={503: {"model": ErrorOut}})
async def list_queues(store: StoreDep) -> QueuesOut:
    """Per queue, the count of jobs in each state (zeros included) and whether it is paused,
    sorted by name."""
    counts = await store.counts()
    paused = await store.paused_queues()
    return QueuesOut(
        queues=[QueueOut(name=name, counts=by_state, total=sum(by_state.values()), paused=name in paused)
                for name, by_state in sorted(counts.items())]
    )


@router.post("/{queue}/pause", dependencies=[AuthDep], responses=_ERRORS)
async def pause_queue(queue: QueuePath, store: StoreDep) -> PauseOut:
    """Pause a queue: no worker claims from it until it is resumed. Running jobs finish; new jobs
    are still accepted and wait. The state is in Redis, so every worker sees it at its next claim."""
    await store.pause_queue(queue)
    return PauseOut(queue=queue, paused=True)


@router.post("/{queue}/resume", dependencies=[AuthDep], responses=_ERRORS)
async def resume_queue(queue: QueuePath, store: StoreDep) -> PauseOut:
    """Resume a paused queue: a waiting worker is woken at once."""
    await store.resume_queue(queue)
    return PauseOut(queue=queue, paused=False)
