"""The Redis store's operator steps over many jobs or a whole queue: bulk retry/cancel, purge,
pause and resume.

A mixin of RedisJobStore (its module is at the line limit). Jobs are selected from the state
indexes (ids only; two fields of a job when a filter needs them), then moved per queue in
batches by retry_many.lua / cancel_many.lua, which apply the very transition of retry.lua /
cancel.lua (retry_job / cancel_job in lib.lua) to each id: a job whose state changed since it
was selected is matched but not moved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from backend.workers.bulk import BulkAction, BulkFilter, BulkResult
from backend.workers.models import JobState
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc
from backend.workers.redis.codec import s_to_us
from backend.workers.redis.keys import QueueKeys, RedisKeys
from backend.workers.redis.reads import index_key

MOVE_BATCH = 200  # ids per retry_many / cancel_many call: keeps each script short for other clients
PAGE = 1000  # index entries read per round trip while selecting
MAX_PAGES = 50  # pages read per index to select one call's jobs (a rare name filter scans many)

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
        """Up to `limit` jobs in `states`, newest first queue by queue; and whether more match.

        Ids come from the state indexes; job fields are read (name, cancel request: two fields,
        never the payload) only when the filter needs them, so a call costs the same however
        large the jobs' arguments are."""
        picked: dict[str, dict[str, None]] = defaultdict(dict)  # queue -> ids in order, each once
        found = 0
        queues = [selection.queue] if selection.queue is not None else await self.queues()
        for state in states:
            skip_asked = action is BulkAction.CANCEL and state is JobState.RUNNING
            for queue in queues:
                qkeys = self.keys.queue(queue)
                async for ids in self._index_pages(qkeys, state):
                    if ids is None:  # the scan bound: there may be more
                        return _lists(picked), True
                    for job_id in await self._matching(qkeys, ids, selection.name, skip_asked):
                        if job_id in picked[queue]:
                            continue  # listed twice while it changed state: once is enough
                        if found == selection.limit:
                            return _lists(picked), True
                        picked[queue][job_id] = None
                        found += 1
        return _lists(picked), False

    async def _index_pages(self, qkeys: QueueKeys, state: JobState) -> AsyncIterator[list[str] | None]:
        """The ids in `state`'s index (parked jobs too for enqueued), newest first, a page at a
        time; None after MAX_PAGES pages of one index (a bound on one call's work)."""
        sources = [index_key(qkeys, state)] + ([qkeys.parked] if state is JobState.ENQUEUED else [])
        for source in sources:
            for page in range(MAX_PAGES + 1):
                if page == MAX_PAGES:
                    yield None
                    return
                with self._mapped_errors():
                    raw = await self.redis.zrevrange(source, page * PAGE, (page + 1) * PAGE - 1)
                yield [str(member) for member in raw]
                if len(raw) < PAGE:
                    break

    async def _matching(self, qkeys: QueueKeys, ids: list[str], name: str | None, skip_asked: bool
                        ) -> list[str]:
        """The ids whose job has handler `name` (when given) and, with `skip_asked`, no cancel request
        yet (one already asked to stop would be selected again by every call and never drain)."""
        if not ids or (name is None and not skip_asked):
            return ids
        with self._mapped_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(qkeys.job(job_id), "name", "cancel_req")
                replies = await pipe.execute()
        return [job_id for job_id, (job_name, asked) in zip(ids, replies, strict=True)
                if (name is None or job_name == name) and not (skip_asked and asked == "1")]

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


def _lists(picked: dict[str, dict[str, None]]) -> dict[str, list[str]]:
    return {queue: list(ids) for queue, ids in picked.items() if ids}
