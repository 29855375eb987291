"""The figures docs/worker.md quotes for the executors: run `PYTHONPATH=. .venv/bin/python
scripts/executor_figures.py` (an embedded worker on the memory store, handlers from
tests/tasks_faults.py).

- start-to-done time of one no-op job on an idle worker, and throughput, per executor;
- how long the worker's event loop (which heartbeats and extends leases) is frozen while a handler
  holds the GIL in a thread, or does pure-Python CPU work in a thread, or holds the GIL in a child.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import tests.tasks_faults  # noqa: F401  - registers the faults.* handlers
from backend.config import Settings
from backend.workers.handlers import default_registry
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import JobSpec
from backend.workers.orchestration import Worker

SETTINGS = Settings(heartbeat_seconds=0.5, lease_seconds=5.0, concurrency=4)
NOOPS = {"async": "bagbot.noop", "thread": "faults.noop_thread", "process": "faults.noop_process"}


async def wait_done(store: MemoryJobStore, job_id: str) -> None:
    while True:
        job = await store.get(job_id)
        if job is not None and job.is_terminal:
            return
        await asyncio.sleep(0.001)


async def latency(store: MemoryJobStore, name: str, runs: int = 15) -> list[float]:
    out = []
    for _ in range(runs):
        began = time.perf_counter()
        job = await store.enqueue(JobSpec(name))
        await wait_done(store, job.id)
        out.append(time.perf_counter() - began)
    return out


async def throughput(store: MemoryJobStore, name: str, count: int) -> float:
    began = time.perf_counter()
    jobs = await store.enqueue_many([JobSpec(name) for _ in range(count)])
    for job in jobs:
        await wait_done(store, job.id)
    return count / (time.perf_counter() - began)


async def loop_freeze(store: MemoryJobStore, name: str, seconds: float) -> float:
    """The longest gap between two 10 ms ticks of the loop while the handler runs."""
    job = await store.enqueue(JobSpec(name, args=[seconds]))
    worst, last = 0.0, time.perf_counter()
    while True:
        await asyncio.sleep(0.01)
        now = time.perf_counter()
        worst, last = max(worst, now - last - 0.01), now
        got = await store.get(job.id)
        if got is not None and got.is_terminal:
            return worst


async def main() -> None:
    store = MemoryJobStore()
    worker = Worker(store, SETTINGS, default_registry, worker_id="figures")
    await worker.start()
    try:
        await latency(store, "bagbot.noop", 3)  # warm up
        for executor, name in NOOPS.items():
            lat = sorted(await latency(store, name))
            rate = await throughput(store, name, 40 if executor == "process" else 400)
            print(f"{executor:8} one job enqueue->done p50={statistics.median(lat) * 1000:.1f} ms "
                  f"max={lat[-1] * 1000:.1f} ms; throughput at concurrency 4: {rate:.0f} jobs/s")
        for name in ("faults.gil_only_thread", "faults.busy_thread", "faults.gil_only_process"):
            worst = await loop_freeze(store, name, 2.0)
            print(f"{name:24} (2 s of work): longest event-loop stall {worst * 1000:.0f} ms")
    finally:
        await worker.stop()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
