"""The public API of bagbot jobs for application code: import everything from here.

    from backend.jobs import task, Client, JobHandle, JobFailed

Define handlers with `@task`, enqueue with `await my_task.enqueue(...)` (typed against the
handler's signature), wait with `await handle.result()`. The modules behind these names may
move; this one keeps them. See docs/client.md.
"""

from __future__ import annotations

from backend.client.client import Client, SyncClient, SyncJobHandle
from backend.client.handle import JobCancelled, JobFailed, JobHandle, Progress
from backend.client.options import JobOptions
from backend.client.producer import ClientConfigError, set_default_client
from backend.client.tasks import AsyncTask, SyncTask, Task, task
from backend.client.workflows import BatchHandle, BatchStatus, Call
from backend.workers.handlers import JobContext, current_job, report_progress, schedule
from backend.workers.job_store import (
    IllegalTransitionError,
    JobNotFoundError,
    JobStoreError,
    StoreFullError,
    StoreUnavailableError,
)
from backend.workers.models import Job, JobError, JobState
from backend.workers.rules import Backoff, InvalidJobError
from backend.workers.schedules import Cron, Every

__all__ = [
    "AsyncTask",
    "Backoff",
    "BatchHandle",
    "BatchStatus",
    "Call",
    "Client",
    "ClientConfigError",
    "Cron",
    "Every",
    "IllegalTransitionError",
    "InvalidJobError",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobHandle",
    "JobNotFoundError",
    "JobOptions",
    "JobState",
    "JobStoreError",
    "Progress",
    "StoreFullError",
    "StoreUnavailableError",
    "SyncClient",
    "SyncJobHandle",
    "SyncTask",
    "Task",
    "current_job",
    "report_progress",
    "schedule",
    "set_default_client",
    "task",
]
