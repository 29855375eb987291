"""The workers' way in: claim ready jobs (decoded from the claim script's positional reply) and
confirm that the claims arrived, before any handler starts (see give_back_lost in lua/lib.lua).

A mixin of `RedisJobStore` (kept apart so the store's module stays small)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from backend.workers.models import Claim, Job
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc
from backend.workers.redis.claim_codec import claimed_jobs
from backend.workers.redis.codec import s_to_us
from backend.workers.redis.keys import RedisKeys
from backend.workers.redis.per_queue import FirstFailure, QueueWarnings, group_claims, tried_twice
from backend.workers.rules import new_job_id

HOUSEKEEPING_LIMIT = 100  # due / expired jobs handled per claim call


class Claiming:
    """The JobStore methods `claim` and `confirm` (see job_store.py for what each promises)."""

    keys: RedisKeys
    cluster: bool
    _queue_warnings: QueueWarnings

    async def _call(self, script: sc.Script[Any, Any], keys: Any, args: Any) -> Any:
        raise NotImplementedError

    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[Job]:
        claimed: list[Job] = []
        failure = FirstFailure(self._queue_warnings, "claim")
        for queue in queues:
            wanted = limit - len(claimed)
            if wanted <= 0:
                break
            args = sa.ClaimArgs(worker_id, wanted, s_to_us(lease_seconds), HOUSEKEEPING_LIMIT,
                                random.random(), new_job_id()[:16])
            with failure.step(queue):
                reply = await tried_twice(self.cluster, self._call, sc.CLAIM, self.keys.queue(queue), args)
                claimed.extend(await self._readable(queue, claimed_jobs(reply, queue, worker_id)))
        failure.settle(bool(claimed))  # healthy queues' jobs are returned, failed queues logged: per_queue.py
        return claimed

    async def _readable(self, queue: str, jobs: list[Job]) -> list[Job]:
        """The claimed jobs whose records could be read; the others are set aside (failed), so a
        corrupt record is never run with a changed value and never fails the rest of the batch."""
        for job in jobs:
            if job.unreadable:
                field, value = next(iter(job.unreadable.items()))
                args = sa.SetAsideArgs(job.id, job.token or "", field, value)
                with suppress(Exception):  # not set aside now: its lease expires, it is recovered
                    await self._call(sc.SETASIDE, self.keys.queue(queue), args)
        return [job for job in jobs if not job.unreadable]

    async def confirm(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        stale: list[Claim] = []
        for queue, items in group_claims(claims).items():
            calls: dict[str, list[Claim]] = {}
            for claim in items:
                calls.setdefault(claim.token.rpartition(".")[0], []).append(claim)
            nonces = list(calls)
            args = sa.ConfirmArgs([sa.ClaimCall(nonce) for nonce in nonces])
            left = await tried_twice(self.cluster, self._call, sc.CONFIRM, self.keys.queue(queue), args)
            if left:  # rare: a claim of the call was recovered, or a re-sent confirm: claim by claim
                each = [claim for i in sorted(left) for claim in calls[nonces[i]]]
                stale.extend(await self.extend(each, lease_seconds))
        return stale

    async def extend(self, claims: Sequence[Claim], lease_seconds: float) -> list[Claim]:
        raise NotImplementedError
