"""CPU per job of one worker draining no-op jobs: steadier than jobs/s on a shared machine.

    .venv/bin/python scripts/drain_cpu.py [--jobs 20000] [--concurrency 100] [--runs 3]

One worker process (`python -m backend.workers`, run from the current directory, so `cd` into
another checkout to measure that one) drains a backlog of `bagbot.noop` jobs; the script reads
the worker's CPU time (/proc, Linux) and the Redis server's (`INFO cpu`) and prints both per job,
with the wall-clock drain rate for reference. Uses REDIS_URL when set (under a random key prefix,
deleted afterwards), else starts a private redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.getcwd())

from backend.workers.models import JobSpec
from backend.workers.redis_job_store import RedisJobStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.redis_server import given_or_private_redis


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def redis_cpu(store: RedisJobStore) -> float:
    info = await store.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def one_run(url: str, jobs: int, concurrency: int) -> tuple[float, float, float]:
    prefix = f"draincpu-{uuid.uuid4().hex[:8]}"
    store = RedisJobStore.from_url(url, prefix=prefix)
    try:
        await store.enqueue_many([JobSpec("bagbot.noop") for _ in range(jobs)])
        env = dict(os.environ, JOB_STORE="redis", REDIS_URL=url, BAGBOT_PREFIX=prefix,
                   BAGBOT_CONCURRENCY=str(concurrency), BAGBOT_LOG_LEVEL="WARNING")
        before = await redis_cpu(store)
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "backend.workers"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while (await store.counts())["default"]["done"] < jobs:
                await asyncio.sleep(0.02)
            wall = time.perf_counter() - started
            worker = cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            proc.wait()
        server = await redis_cpu(store) - before
        return worker / jobs * 1e6, server / jobs * 1e6, jobs / wall
    finally:
        keys = [key async for key in store.redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await store.redis.delete(*keys)
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    with given_or_private_redis() as url:
        for _ in range(opts.runs):
            worker, redis, rate = await one_run(url, opts.jobs, opts.concurrency)
            print(f"worker CPU {worker:.0f} µs/job  Redis CPU {redis:.0f} µs/job  drain {rate:,.0f} jobs/s",
                  flush=True)


if __name__ == "__main__":
    asyncio.run(main())
