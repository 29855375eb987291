"""`bagbot bench`'s due-time figure: how late an idle worker starts a job that becomes due while it
waits, a delayed job (`delay=`) and a retry (its backoff), as p50/p99 in milliseconds.

Lateness is `started_at - run_at` of the job's own record, both on the Redis server's clock, so it
holds whatever the clocks of this machine and the worker say. Jobs are spread in time (one due every
`SPACING` seconds) so the worker is idle, blocked on its wake-up list, whenever one falls due.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff

SAMPLES = 40  # per kind
SPACING = 0.1  # seconds between due times: each job finds the worker idle
RETRY_AFTER = 0.2  # seconds: the retries' backoff (no jitter)


@dataclass(slots=True)
class DueLateness:
    delayed_ms: list[float]
    retry_ms: list[float]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


async def measure_due_lateness(store: RedisJobStore, redis_url: str, prefix: str, queue: str) -> DueLateness:
    """Start one idle worker on `queue`, schedule SAMPLES delayed jobs and SAMPLES jobs that fail once,
    and read back how late each due time was met."""
    env = dict(os.environ, JOB_STORE="redis", REDIS_URL=redis_url, BAGBOT_PREFIX=prefix, BAGBOT_QUEUES=queue,
               BAGBOT_CONCURRENCY="4", BAGBOT_LOG_LEVEL="WARNING")
    worker = subprocess.Popen([sys.executable, "-m", "backend.workers"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not await store.list_workers() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let it reach its blocking wait
        quick = Backoff(base=RETRY_AFTER, cap=RETRY_AFTER, jitter=0)
        specs = [JobSpec("bagbot.noop", queue=queue, delay=0.5 + i * SPACING) for i in range(SAMPLES)]
        specs += [JobSpec("bagbot.fail", queue=queue, kwargs={"times": 1}, backoff=quick,
                          delay=0.55 + (SAMPLES + i) * SPACING) for i in range(SAMPLES)]
        jobs = await store.enqueue_many(specs)
        wait_until = time.monotonic() + 0.5 + 2 * SAMPLES * SPACING + 30
        while time.monotonic() < wait_until:
            if (await store.counts()).get(queue, {}).get(JobState.DONE.value, 0) >= len(jobs):
                break
            await asyncio.sleep(0.1)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    result = DueLateness([], [])
    for index, job in enumerate(jobs):
        got = await store.get(job.id, queue)
        if got is None or got.state is not JobState.DONE or got.started_at is None or got.run_at is None:
            continue
        # a retried job's run_at is its retry's due time, and started_at that run's start
        late_ms = (got.started_at - got.run_at) * 1000
        (result.delayed_ms if index < SAMPLES else result.retry_ms).append(late_ms)
    result.delayed_ms.sort()
    result.retry_ms.sort()
    return result
