"""Measure one worker process on a real Redis: noop drain rate and enqueue-to-start latency.

    .venv/bin/python scripts/worker_bench.py [--jobs 5000] [--samples 300] [--concurrency 10]

Uses REDIS_URL when set (under a random key prefix, deleted afterwards), else
starts a private redis-server. Latency is started_at - created_at, both taken
from the Redis server's clock, on an idle worker (one job at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.workers.models import JobSpec, JobState  # noqa: E402
from backend.workers.redis_job_store import RedisJobStore  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def start_worker(url: str, prefix: str, concurrency: int, log_level: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, JOB_STORE="redis", REDIS_URL=url, BAGBOT_PREFIX=prefix,
               BAGBOT_CONCURRENCY=str(concurrency), BAGBOT_LOG_LEVEL=log_level)
    return subprocess.Popen([sys.executable, "-m", "backend.workers"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def drain(
    store: RedisJobStore, url: str, prefix: str, jobs: int, concurrency: int, level: str
) -> float:
    await store.enqueue_many([JobSpec("bagbot.noop") for _ in range(jobs)])
    worker = start_worker(url, prefix, concurrency, level)
    try:
        first = None
        while True:
            counts = (await store.counts())["default"]
            if first is None and counts["enqueued"] < jobs:
                first = time.perf_counter()  # the worker has started claiming
            if counts["done"] >= jobs:
                break
            await asyncio.sleep(0.005)
        assert first is not None
        return jobs / (time.perf_counter() - first)
    finally:
        worker.terminate()
        worker.wait()


async def latency(store: RedisJobStore, url: str, prefix: str, samples: int) -> list[float]:
    worker = start_worker(url, prefix, 10, "INFO")
    try:
        while not await store.list_workers():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let it settle into its blocking wait
        out = []
        for _ in range(samples):
            job = await store.enqueue(JobSpec("bagbot.noop", queue="default"))
            while True:
                got = await store.get(job.id)
                if got is not None and got.state is JobState.DONE:
                    break
                await asyncio.sleep(0.002)
            assert got.started_at is not None
            out.append(got.started_at - got.created_at)
            await asyncio.sleep(random.uniform(0.01, 0.05))  # the worker goes idle again
        return out
    finally:
        worker.terminate()
        worker.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = RedisServer().start()
        url = server.url
    prefixes = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        for prefix, level in zip(prefixes[:2], ("INFO", "WARNING"), strict=True):
            store = RedisJobStore.from_url(url, prefix=prefix)
            rate = await drain(store, url, prefix, args.jobs, args.concurrency, level)
            print(f"drain: {args.jobs} noop jobs, 1 worker, concurrency {args.concurrency}, "
                  f"log level {level}: {rate:.0f} jobs/s")
            await store.close()
        store = RedisJobStore.from_url(url, prefix=prefixes[2])
        lat = sorted(await latency(store, url, prefixes[2], args.samples))
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        print(f"enqueue-to-start on an idle worker ({len(lat)} samples): p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
              f"max {lat[-1] * 1000:.2f} ms")
        await store.close()
    finally:
        if server is not None:
            server.cleanup()
        else:
            cleanup = RedisJobStore.from_url(url)
            for prefix in prefixes:
                keys = [k async for k in cleanup.redis.scan_iter(match=f"{prefix}:*")]
                if keys:
                    await cleanup.redis.delete(*keys)
            await cleanup.close()


if __name__ == "__main__":
    asyncio.run(main())
