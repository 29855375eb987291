"""Batches and chains: groups of jobs built on dependencies (docs/features.md).

A `Call[R]` is one job described but not enqueued (`task.call(*args, **kwargs)`, typed like
`task.enqueue`). A batch is its jobs plus one more, its *anchor*, whose id is the batch id: the
callback job if one is given (else a `bagbot.noop`), enqueued with `depends_on` every job of the
batch and `run_on_failure`. The store enqueues the anchor in the very step that finishes the
batch's last job, so the callback runs once however many workers finish jobs at once and however
often they are retried (a retried job is not finished until its last attempt); it reads how the
jobs ended with `current_job().parent_counts` / `parent_results`. The anchor's record is the
batch's record: `BatchHandle` reads status and results from it in one read. A chain is each job
depending on the one before. Both stay within one queue (every step is one Redis Cluster slot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from backend.client.handle import JobHandle
from backend.workers.job_store import JobNotFoundError, JobStore
from backend.workers.models import JSON, Job, JobSpec, JobState
from backend.workers.rules import InvalidJobError, new_job_id

if TYPE_CHECKING:
    from backend.client.producer import Producer

R = TypeVar("R")
BATCH_NOOP = "bagbot.noop"  # the anchor of a batch without a callback
POLL_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """One job described, not yet enqueued; `R` is its handler's return type."""

    spec: JobSpec

    @classmethod
    def of(cls, name: str, args: Sequence[JSON] = (), kwargs: dict[str, JSON] | None = None,
           **options: Any) -> Call[Any]:
        """An untyped call by handler name (options: JobSpec's fields, e.g. queue=)."""
        return Call(JobSpec(name, list(args), dict(kwargs or {}), **options).validate())


def _one_queue(calls: Sequence[Call[Any]], what: str) -> str:
    queues = {call.spec.queue for call in calls}
    if len(queues) != 1:
        raise InvalidJobError(f"the jobs of a {what} must all be on one queue, not {sorted(queues)}")
    return queues.pop()


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """How the jobs of a batch stand: `finished` once every one has ended (the callback is then
    enqueued, or already running or done: `callback_state`)."""

    total: int
    done: int
    failed: int
    cancelled: int
    callback_state: JobState

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - self.cancelled

    @property
    def finished(self) -> bool:
        return self.pending == 0

    def to_json(self) -> dict[str, JSON]:
        return {"total": self.total, "done": self.done, "failed": self.failed, "cancelled": self.cancelled,
                "pending": self.pending, "finished": self.finished,
                "callback_state": self.callback_state.value}


def batch_status(anchor: Job) -> BatchStatus:
    counts = {"done": 0, "failed": 0, "cancelled": 0}
    for state in anchor.parent_states.values():
        counts[state] = counts.get(state, 0) + 1
    return BatchStatus(len(anchor.depends_on), counts["done"], counts["failed"], counts["cancelled"],
                       anchor.state)


class BatchHandle(Generic[R]):
    """A batch by id (its anchor job's id); `R` is the return type of its jobs."""

    def __init__(self, store: JobStore, batch_id: str, queue: str | None, job_ids: Sequence[str],
                 callback: JobHandle[Any]) -> None:
        self.store, self.id, self.queue = store, batch_id, queue
        self.job_ids = list(job_ids)
        self.callback = callback  # the anchor: the callback job, or the batch's bagbot.noop

    def __repr__(self) -> str:
        return f"<BatchHandle {self.id} queue={self.queue} jobs={len(self.job_ids)}>"

    async def jobs(self) -> list[JobHandle[R]]:
        """Handles of the batch's jobs, in the order given."""
        if not self.job_ids:
            self.job_ids = (await self._anchor()).depends_on
        return [JobHandle(self.store, job_id, self.queue) for job_id in self.job_ids]

    async def _anchor(self) -> Job:
        job = await self.store.get(self.id, self.queue)
        if job is None or not job.depends_on:
            raise JobNotFoundError(f"no batch {self.id}")
        self.queue = job.queue
        return job

    async def status(self) -> BatchStatus:
        return batch_status(await self._anchor())

    async def results(self) -> dict[str, R]:
        """job id -> result, for the jobs of the batch that ended done so far."""
        return cast(dict[str, R], (await self._anchor()).parent_results)

    async def wait(self, timeout: float | None = None) -> BatchStatus:
        """Wait until every job of the batch has ended; TimeoutError after `timeout` seconds."""
        async def finished() -> BatchStatus:
            while not (status := await self.status()).finished:
                await asyncio.sleep(POLL_SECONDS)
            return status
        return await asyncio.wait_for(finished(), timeout)


async def enqueue_batch(producer: Producer, calls: Sequence[Call[R]], callback: Call[Any] | None = None,
                        batch_id: str | None = None) -> BatchHandle[R]:
    """Enqueue `calls` as one batch (ids `<batch id>-<n>` unless a call has its own); safe to repeat
    with the same `batch_id`."""
    specs = batch_specs([call.spec for call in calls], callback.spec if callback else None, batch_id)
    await producer.check_worker()
    jobs = await producer.store.enqueue_many(specs)
    bid, queue = jobs[-1].id, jobs[-1].queue
    handle: JobHandle[Any] = JobHandle(producer.store, bid, queue, jobs[-1], producer.watcher)
    return BatchHandle(producer.store, bid, queue, [spec.id or "" for spec in specs[:-1]], handle)


def batch_specs(jobs: Sequence[JobSpec], callback: JobSpec | None = None, batch_id: str | None = None
                ) -> list[JobSpec]:
    """A batch as the specs to enqueue in one call: its jobs (ids `<batch id>-<n>` unless they have
    their own), then its anchor (id = the batch id) depending on all of them, run_on_failure."""
    if not jobs:
        raise InvalidJobError("a batch needs at least one job")
    queues = {spec.queue for spec in [*jobs, *([callback] if callback else [])]}
    if len(queues) != 1:
        raise InvalidJobError(f"the jobs of a batch must all be on one queue, not {sorted(queues)}")
    queue = queues.pop()
    bid = batch_id or new_job_id()[:20]
    specs = [replace(spec, id=spec.id or f"{bid}-{n}") for n, spec in enumerate(jobs)]
    anchor = callback if callback is not None else JobSpec(BATCH_NOOP, queue=queue)
    ids = [spec.id or "" for spec in specs]
    return [*specs, replace(anchor, id=bid, depends_on=ids, run_on_failure=True).validate()]


async def enqueue_chain(producer: Producer, calls: Sequence[Call[Any]]) -> list[JobHandle[Any]]:
    """Enqueue `calls` so that each runs after the one before ended done (one enqueue call)."""
    if not calls:
        raise InvalidJobError("a chain needs at least one job")
    queue = _one_queue(calls, "chain")
    specs: list[JobSpec] = []
    for call in calls:
        spec = replace(call.spec, id=call.spec.id or new_job_id())
        if specs:
            spec = replace(spec, depends_on=[*spec.depends_on, specs[-1].id or ""]).validate()
        specs.append(spec)
    await producer.check_worker()
    jobs = await producer.store.enqueue_many(specs)
    return [JobHandle(producer.store, job.id, queue, job, producer.watcher) for job in jobs]
