"""What workers declare to a Redis store, apart from their registry entry: handler concurrency limits,
schedules, and the handlers they run with each one's policy (advertised with every heartbeat).

A mixin of `RedisJobStore` (kept apart so the store's module stays small); these are not job
transitions, but the advertisement is a script all the same, for the server's clock."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from backend.workers.models import HandlerPolicy, ScheduleInfo
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc
from backend.workers.redis.codec import readable_schedules
from backend.workers.redis.keys import RedisKeys
from backend.workers.redis.per_queue import FirstFailure
from backend.workers.rules import dumps


class Declarations:
    """The JobStore methods for worker declarations (see job_store.py for what each promises)."""

    redis: Any
    keys: RedisKeys

    def _mapped_errors(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    async def _note_queue(self, queue: str) -> None:
        raise NotImplementedError

    async def _call(self, script: sc.Script[Any, Any], keys: Any, args: Any) -> Any:
        raise NotImplementedError

    async def set_handler_limits(self, queue: str, limits: dict[str, int]) -> None:
        if not limits:
            return
        await self._note_queue(queue)
        with self._mapped_errors():
            await self.redis.hset(self.keys.queue(queue).hlimits, mapping=dict(limits))

    async def advertise_handlers(self, queues: Sequence[str], handlers: Sequence[HandlerPolicy]) -> None:
        items = [sa.AdvertiseItem(h.name, sa.policy_value(h)) for h in handlers]
        failure = FirstFailure()  # one queue's node down must not stop the others' advertisements
        for queue in queues:
            with failure.step():
                await self._note_queue(queue)
                await self._call(sc.ADVERTISE, self.keys.queue(queue), sa.AdvertiseArgs(items))
        failure.raise_first()

    async def register_schedules(self, schedules: Sequence[ScheduleInfo]) -> None:
        if not schedules:
            return
        with self._mapped_errors():
            mapping = {schedule.name: dumps(schedule.to_json()) for schedule in schedules}
            await self.redis.hset(self.keys.schedules, mapping=mapping)

    async def list_schedules(self) -> list[ScheduleInfo]:
        with self._mapped_errors():
            raw = await self.redis.hgetall(self.keys.schedules)
        return sorted(readable_schedules(raw.values()), key=lambda s: s.name)
