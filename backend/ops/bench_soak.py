"""`bagbot bench --soak SECONDS`: drain at full speed for a while and watch Redis memory stay flat.

Finished jobs are deleted as fast as workers finish them (finish.lua purges up to 2n + 2 jobs past
the retention for every n it finishes), so with a short retention Redis holds about
rate × retention finished jobs whatever the run's length. This run shows it: worker processes
drain no-op jobs under `BAGBOT_RETENTION_SECONDS=--retention` while a producer keeps the ready
backlog between two marks; every sample reads Redis's `used_memory`, the jobs finished so far and
the finished jobs still stored. Flat means the second half's memory is no higher than the first's.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from backend.ops.bench_run import QUEUE
from backend.ops.redis_info import RedisInfo
from backend.workers.models import JobSpec
from backend.workers.redis_job_store import RedisJobStore

BACKLOG_LOW, BACKLOG_HIGH = 5_000, 20_000  # ready jobs kept queued, so workers never wait


@dataclass(slots=True)
class SoakOptions:
    seconds: float
    retention: float
    workers: int = 1
    concurrency: int = 100
    redis_url: str = "redis://127.0.0.1:6379/0"
    every: float = 10.0  # seconds between samples


@dataclass(slots=True)
class Sample:
    t: float  # seconds since the start
    used_memory: int  # bytes, summed over a cluster's masters
    finished: int  # jobs finished (done) so far
    stored_done: int  # done jobs still stored (not yet purged)
    ready: int  # queued jobs waiting for a worker


@dataclass(slots=True)
class SoakResult:
    seconds: float
    retention: float
    workers: int
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.samples[-1].finished if self.samples else 0

    def halves(self) -> tuple[list[int], list[int]]:
        """used_memory of the first and the second half of the samples."""
        mem = [s.used_memory for s in self.samples]
        mid = len(mem) // 2
        return mem[:mid], mem[mid:]

    def summary(self) -> dict[str, Any]:
        first, second = self.halves()

        def stats(values: list[int]) -> dict[str, int]:
            if not values:
                return {"median": 0, "min": 0, "max": 0}
            return {"median": int(statistics.median(values)), "min": min(values), "max": max(values)}

        elapsed = self.samples[-1].t if self.samples else 0.0
        return {"jobs_finished": self.finished, "jobs_per_s": self.finished / elapsed if elapsed else 0.0,
                "used_memory_first_half": stats(first), "used_memory_second_half": stats(second),
                "max_stored_done": max((s.stored_done for s in self.samples), default=0)}

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "retention": self.retention, "workers": self.workers,
                "concurrency": self.concurrency, "samples": [asdict(s) for s in self.samples],
                "summary": self.summary(), "notes": self.notes}


async def _sample(store: RedisJobStore, info: RedisInfo, start: float) -> Sample:
    keys = store.keys.queue(QUEUE)
    finished = await store.redis.hget(keys.stats, "run|bagbot.noop|done")
    return Sample(round(time.monotonic() - start, 1), await info.used_memory(), int(finished or 0),
                  int(await store.redis.zcard(keys.state("done"))), int(await store.redis.zcard(keys.ready)))


async def _produce(store: RedisJobStore, stop: asyncio.Event) -> None:
    """Keep BACKLOG_LOW..BACKLOG_HIGH jobs queued until `stop`."""
    ready = store.keys.queue(QUEUE).ready
    while not stop.is_set():
        if int(await store.redis.zcard(ready)) < BACKLOG_LOW:
            specs = [JobSpec("bagbot.noop", queue=QUEUE) for _ in range(BACKLOG_HIGH - BACKLOG_LOW)]
            for start in range(0, len(specs), 500):
                await store.enqueue_many(specs[start:start + 500])
        else:
            await asyncio.sleep(0.05)


async def run_soak(opts: SoakOptions, echo: Any = print) -> SoakResult:
    """The soak run; `echo` gets one line per sample as it is taken."""
    result = SoakResult(opts.seconds, opts.retention, opts.workers, opts.concurrency)
    prefix = f"bagbot-soak-{uuid.uuid4().hex[:8]}"
    info = await RedisInfo.connect(opts.redis_url)
    store = RedisJobStore.from_url(opts.redis_url, prefix=prefix, retention_seconds=opts.retention)
    stop = asyncio.Event()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        version = (await store.redis.info("server")).get("redis_version", "?")
        producer = asyncio.create_task(_produce(store, stop))
        workers = _start_workers(opts, prefix)
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < opts.seconds:
            await asyncio.sleep(min(opts.every, max(0.0, opts.seconds - elapsed)))
            sample = await _sample(store, info, start)
            result.samples.append(sample)
            echo(f"t={sample.t:7.1f}s  used_memory={sample.used_memory / 2**20:8.2f} MiB  "
                 f"finished={sample.finished:>10,}  stored_done={sample.stored_done:>8,}  "
                 f"ready={sample.ready:>6,}")
        stop.set()
        await producer
    finally:
        stop.set()
        _stop_workers(workers)
        await info.purge(prefix)
        await store.close()
        await info.close()
    result.notes.append(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, Redis {version}")
    return result


def _start_workers(opts: SoakOptions, prefix: str) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, JOB_STORE="redis", REDIS_URL=opts.redis_url, BAGBOT_PREFIX=prefix,
               BAGBOT_QUEUES=QUEUE, BAGBOT_CONCURRENCY=str(opts.concurrency),
               BAGBOT_RETENTION_SECONDS=repr(opts.retention), BAGBOT_LOG_LEVEL="WARNING")
    command = [sys.executable, "-m", "backend.workers"]
    return [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(opts.workers)]


def _stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: a graceful shutdown
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def print_summary(result: SoakResult, echo: Any = print) -> None:
    summary = result.summary()
    echo(f"soak: {result.seconds:.0f} s, retention {result.retention:g} s, {result.workers} worker(s) × "
         f"concurrency {result.concurrency}")
    echo(f"jobs finished: {summary['jobs_finished']:,} ({summary['jobs_per_s']:,.0f} jobs/s); "
         f"most done jobs stored at once: {summary['max_stored_done']:,}")
    for half in ("first", "second"):
        s = summary[f"used_memory_{half}_half"]
        echo(f"used_memory, {half} half: median {s['median'] / 2**20:.2f} MiB, min {s['min'] / 2**20:.2f}, "
             f"max {s['max'] / 2**20:.2f}")
    for note in result.notes:
        echo(note)


def soak_command(seconds: float, retention: float, workers: int, concurrency: int, url: str,
                 json_out: bool) -> None:
    """`bagbot bench --soak`: run, then print the summary (or the whole run as JSON)."""
    import json

    opts = SoakOptions(seconds, retention, workers, concurrency, url, every=max(1.0, min(10.0, seconds / 20)))
    result = asyncio.run(run_soak(opts, echo=(lambda line: None) if json_out else print))
    if json_out:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_summary(result)
