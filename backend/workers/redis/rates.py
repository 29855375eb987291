"""Rate-limit settings in Redis: handler rates (declared by workers) and queue rates (operators).

The claim script reads both (`hrates` hash, `qrate` string) once per call and enforces them
(see `backend/workers/rates.py` and `take_rate_slot` in lib.lua); setting them is a plain write
of one checked value, so no script is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from backend.workers.rates import canonical_rate

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    from backend.workers.redis.keys import RedisKeys


class QueueRates:
    """The JobStore methods set_handler_rates, set_queue_rate and queue_rates."""

    if TYPE_CHECKING:
        redis: aioredis.Redis | RedisCluster
        keys: RedisKeys

        def _mapped_errors(self) -> AbstractContextManager[None]: ...
        async def _note_queue(self, queue: str) -> None: ...
        async def queues(self) -> list[str]: ...

    async def set_handler_rates(self, queue: str, rates: dict[str, str]) -> None:
        if not rates:
            return
        checked = {name: canonical_rate(rate) for name, rate in rates.items()}
        await self._note_queue(queue)
        with self._mapped_errors():
            await self.redis.hset(self.keys.queue(queue).hrates, mapping=dict(checked))  # type: ignore[arg-type]

    async def set_queue_rate(self, queue: str, rate: str | None) -> str | None:
        key = self.keys.queue(queue).qrate
        if rate is None:
            with self._mapped_errors():
                await self.redis.delete(key)
            return None
        checked = canonical_rate(rate)
        await self._note_queue(queue)  # listed (with its rate) even before its first job
        with self._mapped_errors():
            await self.redis.set(key, checked)
        return checked

    async def queue_rates(self) -> dict[str, str]:
        queues: Sequence[str] = await self.queues()
        if not queues:
            return {}
        with self._mapped_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.get(self.keys.queue(queue).qrate)
                replies = await pipe.execute()
        return {queue: str(rate) for queue, rate in zip(queues, replies, strict=True) if rate}
