"""Batch endpoints: enqueue a batch (jobs and a callback), read how it stands.

A batch is its jobs plus an anchor job whose id is the batch id: the callback (or a bagbot.noop),
enqueued with depends_on every job of the batch and run_on_failure (backend/client/workflows.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from backend.api.deps import AuthDep, StoreDep
from backend.api.schemas import BatchOut, BatchRequest, ErrorOut
from backend.client.workflows import batch_specs, batch_status
from backend.workers.job_store import JobNotFoundError
from backend.workers.models import Job
from backend.workers.rules import validate_job_id, validate_queue

router = APIRouter(prefix="/api/batches", tags=["batches"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 404, 413, 422, 503, 507)
}


def _out(anchor: Job) -> BatchOut:
    status = batch_status(anchor)
    return BatchOut.model_validate({"id": anchor.id, "queue": anchor.queue, "jobs": anchor.depends_on,
                                    **status.to_json(), "results": anchor.parent_results})


@router.post("", status_code=201, dependencies=[AuthDep], responses=_ERRORS)
async def enqueue_batch(body: BatchRequest, store: StoreDep) -> BatchOut:
    """Enqueue the jobs (all on one queue) and the callback, which runs once every job has ended
    (its handler reads the counts with `current_job().parent_counts`). Safe to repeat with the
    same `id`: the jobs are `<id>-<n>` unless given their own ids."""
    callback = body.callback.to_spec() if body.callback is not None else None
    specs = batch_specs([job.to_spec() for job in body.jobs], callback, body.id)
    jobs = await store.enqueue_many(specs)
    return _out(jobs[-1])


@router.get("/{batch_id}", responses=_ERRORS)
async def get_batch(batch_id: str, store: StoreDep,
                    queue: Annotated[str | None, Query(description="the batch's queue")] = None) -> BatchOut:
    """How the batch stands: counts of its jobs by outcome, its callback's state, the results."""
    validate_job_id(batch_id)
    if queue is not None:
        validate_queue(queue)
    anchor = await store.get(batch_id, queue)
    if anchor is None or not anchor.depends_on:
        raise JobNotFoundError(f"no batch {batch_id}")
    return _out(anchor)
