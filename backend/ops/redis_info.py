"""What `bagbot bench` reads from Redis itself: INFO commandstats, CPU and memory, around each phase.

It asks the server on purpose (these are the server's own figures), so it talks redis-py
directly, not the job-store contract; on a Redis Cluster it sums over every master.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

# Commands a client sends itself (one per round trip); commands run inside scripts are not among them.
TOP_LEVEL_COMMANDS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro", "blpop", "sadd", "smembers",
                                "ping", "info", "script", "multi", "exec", "hello", "client", "select"})


class RedisInfo:
    """INFO readings taken around each phase, summed over every master of a cluster."""

    def __init__(self, nodes: list[Redis]) -> None:
        self.nodes = nodes

    @classmethod
    async def connect(cls, url: str) -> RedisInfo:
        first = Redis.from_url(url, decode_responses=True)
        if not (await first.info("cluster")).get("cluster_enabled"):
            return cls([first])
        nodes: dict[str, dict[str, Any]] = await first.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER NODES")
        addresses = [address.split("@")[0] for address, node in nodes.items() if "master" in node["flags"]]
        await first.aclose()
        return cls([Redis.from_url(f"redis://{address}/0", decode_responses=True) for address in addresses])

    async def _sum(
        self, section: str, read: Callable[[dict[str, Any]], dict[str, float]]
    ) -> dict[str, float]:
        total: dict[str, float] = {}
        for node in self.nodes:
            for key, value in read(await node.info(section)).items():
                total[key] = total.get(key, 0) + value
        return total

    async def commandstats(self) -> dict[str, int]:
        calls = await self._sum("commandstats", lambda raw: {
            key.removeprefix("cmdstat_"): float(value["calls"]) for key, value in raw.items()})
        return {key: int(value) for key, value in calls.items()}

    async def cpu_seconds(self) -> float:
        cpu = await self._sum(
            "cpu", lambda raw: {"cpu": float(raw["used_cpu_user"]) + float(raw["used_cpu_sys"])})
        return cpu["cpu"]

    async def used_memory(self) -> int:
        return int((await self._sum("memory", lambda raw: {"mem": float(raw["used_memory"])}))["mem"])

    async def purge(self, prefix: str) -> None:
        """Delete the bench's keys on every node (each node scans and deletes its own)."""
        for node in self.nodes:
            async for key in node.scan_iter(match=f"{prefix}:*", count=1000):
                await node.unlink(key)

    async def close(self) -> None:
        for node in self.nodes:
            await node.aclose()


def commands_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Calls of each command between two `commandstats` readings (only those that were made)."""
    return {name: calls - before.get(name, 0) for name, calls in after.items() if calls > before.get(name, 0)}
