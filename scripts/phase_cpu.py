"""Redis CPU per job of each step of a job's life, one script at a time, on a private redis-server.

    .venv/bin/python scripts/phase_cpu.py [--jobs 20000] [--rounds 3]

Enqueues N no-op jobs (enqueue_many, 500 per call), then claims them all (100 per call), confirms
every claim batch, and finishes them all (100 per call), reading Redis's CPU (`INFO cpu`) around
each step; prints µs per job for each step (and of it, by `INFO commandstats`, the time in Lua itself
rather than in the commands the script ran), the median of the rounds and each round. Nothing runs
concurrently, so a step's figure is that script's own cost (a drain interleaves them; see
scripts/profile_drain.py for the commands inside).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from backend.workers.models import Claim, Completion, JobSpec  # noqa: E402
from backend.workers.redis_job_store import RedisJobStore  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


async def cpu_seconds(client: Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def script_split(client: Redis) -> tuple[float, float]:
    """(µs in EVALSHA, µs in the commands scripts ran) so far, by `INFO commandstats` (wall clock)."""
    stats = await client.info("commandstats")
    evalsha = sum(float(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    inside = sum(float(v["usec"]) for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_eval"))
    return evalsha, inside


async def one_round(client: Redis, store: RedisJobStore, jobs: int) -> dict[str, float]:
    await client.flushdb()
    spent: dict[str, float] = {}
    started = await cpu_seconds(client)
    split = await script_split(client)

    async def lap(step: str) -> None:
        nonlocal started, split
        spent[step] = (now - started) / jobs * 1e6
        after = await script_split(client)
        spent[step + " (Lua itself)"] = ((after[0] - split[0]) - (after[1] - split[1])) / jobs
        started, split = await cpu_seconds(client), await script_split(client)

    for _ in range(0, jobs, 500):
        await store.enqueue_many([JobSpec("bench.noop") for _ in range(500)])
    now = await cpu_seconds(client)
    await lap("enqueue")
    batches: list[list[Claim]] = []
    for _ in range(0, jobs, 100):
        claimed = await store.claim("phase", ["default"], 100, 30)
        batches.append([Claim(job.queue, job.id, job.token or "") for job in claimed])
    now = await cpu_seconds(client)
    await lap("claim")
    for batch in batches:
        await store.confirm(batch, 30)
    now = await cpu_seconds(client)
    await lap("confirm")
    for batch in batches:
        await store.finish([Completion(claim, 0.001, result=None) for claim in batch])
    now = await cpu_seconds(client)
    await lap("finish")
    return spent


async def main(jobs: int, rounds: int) -> None:
    server = RedisServer().start()  # always a private one: each round empties it
    try:
        client = Redis.from_url(server.url)
        store = RedisJobStore.from_url(server.url, prefix="phase")
        results = [await one_round(client, store, jobs) for _ in range(rounds)]
        await store.close()
        await client.aclose()
    finally:
        server.cleanup()
    print(f"Redis CPU per job, {jobs:,} jobs, median of {rounds} rounds (each round)")
    for step in results[0]:
        each = [round(result[step], 1) for result in results]
        print(f"{step:22s} {statistics.median(each):6.1f} µs  {each}")
    total = [sum(v for k, v in result.items() if "(" not in k) for result in results]
    print(f"{'total':22s} {statistics.median(total):6.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    asyncio.run(main(options.jobs, options.rounds))
