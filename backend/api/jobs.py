"""Job endpoints: enqueue, inspect, list, cancel, retry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from backend.api.deps import AuthDep, StoreDep
from backend.api.schemas import EnqueueRequest, ErrorOut, JobListOut, JobOut
from backend.workers import tracing
from backend.workers.job_store import JobNotFoundError
from backend.workers.models import Job, JobState
from backend.workers.rules import InvalidJobError, new_job_id, validate_job_id, validate_name, validate_queue

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 404, 409, 413, 422, 503, 507)
}
QueueParam = Annotated[str | None, Query(description="the job's queue; default: search every queue")]


def _out(job: Job) -> JobOut:
    return JobOut.model_validate(job.to_json())


@router.post(
    "",
    status_code=201,
    dependencies=[AuthDep],
    responses={
        200: {"model": JobOut, "description": "already there: the existing job (same id or unique_key)"},
        **_ERRORS,
    },
)
async def enqueue_job(body: EnqueueRequest, store: StoreDep, response: Response) -> JobOut:
    """Enqueue a job → 201 with the job.

    Safe to repeat: when `id` names a job already in the queue, or `unique_key` is held by
    an unfinished job there, nothing new is made and that job comes back with 200.
    """
    spec = body.to_spec().validate()
    if spec.id is not None and (existing := await store.get(spec.id, spec.queue)) is not None:
        response.status_code = 200  # a repeat: the store would return this job unchanged anyway
        return _out(existing)
    spec.id = spec.id or new_job_id()
    with tracing.enqueue_span(spec):  # the request's trace context, if the app is instrumented
        job = await store.enqueue(spec)
    if job.id != spec.id:
        response.status_code = 200  # unique_key hit
    return _out(job)


@router.get("", responses=_ERRORS)
async def list_jobs(
    store: StoreDep,
    state: JobState | None = None,
    queue: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobListOut:
    """A page of jobs, newest first; pass `cursor` back for the next page."""
    if queue is not None:
        validate_queue(queue)
    if name is not None:
        validate_name(name)
    try:
        page = await store.list_jobs(queue=queue, state=state, name=name, limit=limit, cursor=cursor or None)
    except InvalidJobError:
        raise
    except ValueError:
        raise InvalidJobError(f"invalid cursor {cursor!r}: pass back a cursor this API returned") from None
    return JobListOut(jobs=[_out(job) for job in page.jobs], cursor=page.cursor)


@router.get("/{job_id}", responses=_ERRORS)
async def get_job(job_id: str, store: StoreDep, queue: QueueParam = None) -> JobOut:
    """One job, with its state, attempts, result, last error and times."""
    validate_job_id(job_id)
    if queue is not None:
        validate_queue(queue)
    job = await store.get(job_id, queue)
    if job is None:
        raise JobNotFoundError(f"no job {job_id}")
    return _out(job)


@router.post("/{job_id}/cancel", dependencies=[AuthDep], responses=_ERRORS)
async def cancel_job(job_id: str, store: StoreDep, queue: QueueParam = None) -> JobOut:
    """Cancel a job that has not started (enqueued, scheduled or waiting to retry) at once.
    A running job gets a cancel request (`cancel_requested`, state still running): its worker
    stops the handler within a heartbeat and the job ends `cancelled`. Finished jobs: 409."""
    validate_job_id(job_id)
    if queue is not None:
        validate_queue(queue)
    return _out(await store.cancel(job_id, queue))


@router.post("/{job_id}/retry", dependencies=[AuthDep], responses=_ERRORS)
async def retry_job(job_id: str, store: StoreDep, queue: QueueParam = None) -> JobOut:
    """Put a failed or cancelled job back in its queue, attempts reset; else 409."""
    validate_job_id(job_id)
    if queue is not None:
        validate_queue(queue)
    return _out(await store.retry(job_id, queue))
