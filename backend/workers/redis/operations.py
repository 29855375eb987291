"""The Redis store's operator steps over many jobs or a whole queue: bulk retry/cancel, purge,
pause and resume.

A mixin of RedisJobStore (its module is at the line limit). Jobs are selected with the read
queries, then moved per queue in batches by retry_many.lua / cancel_many.lua, which apply the
very transition of retry.lua / cancel.lua (retry_job / cancel_job in lib.lua) to each id: a job
whose state changed since it was selected is matched but not moved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from backend.workers.bulk import MAX_BULK, BulkAction, BulkFilter, BulkResult
from backend.workers.models import JobPage, JobState
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc
from backend.workers.redis.codec import s_to_us
from backend.workers.redis.keys import QueueKeys, RedisKeys

MOVE_BATCH = 200  # ids per retry_many / cancel_many call: keeps each script short for other clients
MAX_PAGES = 50  # listing pages read to select one call's jobs (a rare name filter scans many)

A = TypeVar("A", bound=tuple[Any, ...])
R = TypeVar("R")

_MOVES = {BulkAction.RETRY: sc.RETRY_MANY, BulkAction.CANCEL: sc.CANCEL_MANY}


class QueueOperations:
    """Bulk retry/cancel, purge, pause/resume: the JobStore methods of those names."""

    redis: Any
    keys: RedisKeys

    if TYPE_CHECKING:  # provided by RedisJobStore
        async def _call(self, script: sc.Script[A, R], keys: QueueKeys | RedisKeys, args: A) -> R: ...
        def _mapped_errors(self) -> AbstractContextManager[None]: ...
        async def _note_queue(self, queue: str) -> None: ...
        async def _queue_names(self, queues: Sequence[str] | None) -> list[str]: ...
        async def queues(self) -> list[str]: ...
        async def list_jobs(self, queue: str | None = None, state: JobState | None = None,
                            name: str | None = None, limit: int = 50,
                            cursor: str | None = None) -> JobPage: ...

    async def retry_many(self, selection: BulkFilter) -> BulkResult:
        return await self._bulk(BulkAction.RETRY, selection)

    async def cancel_many(self, selection: BulkFilter) -> BulkResult:
        return await self._bulk(BulkAction.CANCEL, selection)

    async def _bulk(self, action: BulkAction, selection: BulkFilter) -> BulkResult:
        states = selection.states(action)  # InvalidJobError before anything is read
        if selection.ids is not None:
            picked, more = await self._pick_ids(selection), False
        else:
            picked, more = await self._pick_listed(action, selection, states)
        moved = 0
        for queue, ids in picked.items():
            for start in range(0, len(ids), MOVE_BATCH):
                args = sa.BulkArgs([sa.JobArgs(job_id) for job_id in ids[start : start + MOVE_BATCH]])
                moved += await self._call(_MOVES[action], self.keys.queue(queue), args)
        return BulkResult(sum(len(ids) for ids in picked.values()), moved, more)

    async def _pick_listed(self, action: BulkAction, selection: BulkFilter, states: Sequence[JobState]
                           ) -> tuple[dict[str, list[str]], bool]:
        """Up to `limit` jobs in `states`, newest first; and whether more match."""
        picked: dict[str, list[str]] = defaultdict(list)
        found = 0
        for state in states:
            cursor: str | None = None
            for _ in range(MAX_PAGES):
                page = await self.list_jobs(selection.queue, state, selection.name,
                                            min(MAX_BULK, selection.limit + 1 - found), cursor)
                for job in page.jobs:
                    if action is BulkAction.CANCEL and job.cancel_requested:
                        continue  # already asked to stop: selecting it again would never drain
                    if found == selection.limit:
                        return picked, True
                    picked[job.queue].append(job.id)
                    found += 1
                cursor = page.cursor
                if cursor is None:
                    break
            else:
                return picked, True  # not scanned to the end: say there may be more
        return picked, False

    async def _pick_ids(self, selection: BulkFilter) -> dict[str, list[str]]:
        """The listed ids that exist (in `queue`, or in any queue) and match state and name."""
        queues = [selection.queue] if selection.queue is not None else await self.queues()
        ids = list(dict.fromkeys(selection.ids or ()))
        wanted = [(queue, job_id) for job_id in ids for queue in queues]
        if not wanted:
            return {}
        with self._mapped_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue, job_id in wanted:
                    pipe.hmget(self.keys.queue(queue).job(job_id), "state", "name")
                replies = await pipe.execute()
        picked: dict[str, list[str]] = defaultdict(list)
        for (queue, job_id), (state, name) in zip(wanted, replies, strict=True):
            if state is None:
                continue
            if selection.state is not None and state != selection.state.value:
                continue
            if selection.name is not None and name != selection.name:
                continue
            picked[queue].append(job_id)
        return picked

    async def purge(self, older_than: float, queues: Sequence[str] | None = None, limit: int = 10_000,
                    state: JobState | None = None) -> int:
        total = 0
        for queue in await self._queue_names(queues):
            if total >= limit:
                break
            args = sa.PurgeArgs(s_to_us(older_than), limit - total, state.value if state is not None else "")
            total += await self._call(sc.PURGE, self.keys.queue(queue), args)
        return total

    async def pause_queue(self, queue: str) -> None:
        await self._note_queue(queue)  # listed (as paused) even before its first job
        await self._call(sc.PAUSE, self.keys.queue(queue), sa.PauseArgs(1))

    async def resume_queue(self, queue: str) -> None:
        await self._call(sc.PAUSE, self.keys.queue(queue), sa.PauseArgs(0))

    async def paused_queues(self) -> set[str]:
        queues = await self.queues()
        if not queues:
            return set()
        with self._mapped_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.exists(self.keys.queue(queue).paused)
                replies = await pipe.execute()
        return {queue for queue, exists in zip(queues, replies, strict=True) if int(exists)}
