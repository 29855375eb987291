"""Does a rate limit hold across worker processes? 4 real workers drain a backlog under 100/s.

    .venv/bin/python scripts/rate_bench.py [--rate 100/s] [--jobs 1000] [--workers 4]
                                           [--modes queue,key,handler]

For each mode a fresh key prefix: `queue` sets the queue's rate (`set_queue_rate`), `key` enqueues
every job with rate_key/rate, `handler` declares the rate for bagbot.noop in the queue's hrates
hash (what a worker does for `@task(rate=...)`). The workers start first and register; then the
whole backlog is enqueued at once. From the job records (times on the Redis clock) it prints the
achieved rate over the run, the most starts (and slots) in any one-second window, how late
starts were after their slot, and how the jobs spread over the workers. Uses REDIS_URL when set
(under a random key prefix, deleted afterwards), else starts a private redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.workers.models import Job, JobSpec  # noqa: E402
from backend.workers.rates import parse_rate  # noqa: E402
from backend.workers.redis_job_store import RedisJobStore  # noqa: E402
from tests.redis_server import given_or_private_redis  # noqa: E402


def start_worker(url: str, prefix: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, JOB_STORE="redis", REDIS_URL=url, BAGBOT_PREFIX=prefix,
               BAGBOT_CONCURRENCY=str(concurrency), BAGBOT_LOG_LEVEL="WARNING")
    return subprocess.Popen([sys.executable, "-m", "backend.workers"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_for(check: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def run_mode(
    url: str, mode: str, rate: str, jobs: int, workers: int, concurrency: int
) -> dict[str, object]:
    prefix = f"ratebench-{uuid.uuid4().hex[:8]}"
    store = RedisJobStore.from_url(url, prefix=prefix)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if mode == "queue":
            await store.set_queue_rate("default", rate)
        elif mode == "handler":
            await store.set_handler_rates("default", {"bagbot.noop": rate})
        procs = [start_worker(url, prefix, concurrency) for _ in range(workers)]

        async def registered() -> bool:
            return len(await store.list_workers()) == workers

        await wait_for(registered, "the workers to register", 60)
        key = {"rate_key": "bench", "rate": rate} if mode == "key" else {}
        specs = [JobSpec("bagbot.noop", **key) for _ in range(jobs)]  # type: ignore[arg-type]
        enqueued = await store.enqueue_many(specs)

        async def drained() -> bool:
            return (await store.counts())["default"]["done"] >= jobs

        limit = parse_rate(rate)
        await wait_for(drained, "the backlog to drain", jobs / limit.per_second * 3 + 60)
        done = [job for job in [await store.get(j.id) for j in enqueued] if job is not None]
        return figures(done, limit.per_second)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        await store.redis.delete(*[k async for k in store.redis.scan_iter(match=f"{prefix}:*")] or ["-"])
        await store.close()


def slot_of(job: Job) -> float:
    run_at, started = job.run_at or 0.0, job.started_at or 0.0
    return run_at if run_at > job.created_at + 0.002 else started


def figures(done: list[Job], per_second: float) -> dict[str, object]:
    starts = sorted(job.started_at or 0.0 for job in done)
    span = starts[-1] - starts[0]
    window = max(bisect.bisect_left(starts, s + 1.0) - i for i, s in enumerate(starts))
    # the slot each job took: its start when claimed at once, else the run_at it was deferred to
    slots = sorted(slot_of(job) for job in done)
    slot_window = max(bisect.bisect_left(slots, s + 1.0) - i for i, s in enumerate(slots))
    late = sorted((job.started_at or 0.0) - (job.run_at or 0.0) for job in done
                  if (job.run_at or 0.0) > job.created_at + 0.002)  # deferred jobs: start - slot
    per_worker = Counter(job.worker or "?" for job in done)
    return {
        "jobs": len(done),
        "attempts>1": sum(1 for job in done if job.attempts != 1),
        "achieved_per_s": (len(starts) - 1) / span,
        "error_pct": ((len(starts) - 1) / span / per_second - 1) * 100,
        "max_starts_in_any_1s": window,
        "max_slots_in_any_1s": slot_window,
        "late_ms_p50": statistics.median(late) * 1000 if late else 0.0,
        "late_ms_p99": late[int(len(late) * 0.99) - 1] * 1000 if late else 0.0,
        "late_ms_max": late[-1] * 1000 if late else 0.0,
        "jobs_per_worker": sorted(per_worker.values(), reverse=True),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default="100/s")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--modes", default="queue,key,handler")
    opts = parser.parse_args()
    with given_or_private_redis() as url:
        print(f"limit {opts.rate}, {opts.jobs} bagbot.noop jobs as one backlog, {opts.workers} worker "
              f"processes x {opts.concurrency}")
        for mode in opts.modes.split(","):
            result = await run_mode(url, mode, opts.rate, opts.jobs, opts.workers, opts.concurrency)
            print(f"{mode:8s} " + "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in result.items()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
