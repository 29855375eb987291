"""`bagbot bench`: the speed and memory figures the README quotes, measured the same way every time.

Workload (see benchmarks/README.md): no-op jobs (`bagbot.noop`) on one queue of
a private key prefix, a local Redis, workers as real `python -m backend.workers`
processes started after the jobs are queued. Timings of job starts and ends come
from the job records (server clock, microseconds), so process start-up time is
not counted as drain time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from backend.config import Settings, redact_url
from backend.ops.bench_due import measure_due_lateness, percentile
from backend.ops.bench_floor import floor_cpu_us_per_job
from backend.ops.redis_info import TOP_LEVEL_COMMANDS, RedisInfo, commands_delta
from backend.workers.job_store import JobStore
from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore

QUEUE = "bench"


def queue_names(count: int) -> list[str]:
    """The bench's queues: `bench`, or `bench0..benchN-1` to spread work over a cluster's nodes."""
    return [QUEUE] if count <= 1 else [f"{QUEUE}{i}" for i in range(count)]


@dataclass(slots=True)
class BenchOptions:
    """One run's workload: the command's options, plus the enqueue concurrency and batch size."""

    jobs: int = 20_000
    workers: int = 1
    concurrency: int = 100
    store: str = "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"
    latency_jobs: int = 1_000
    latency_rate: float = 200.0
    queues: int = 1
    enqueue_concurrency: int = 100
    batch_size: int = 500


@dataclass(slots=True)
class BenchResult:
    """One run's figures: the keys of `--json` and of the table's rows (`bench.ROWS`)."""

    store: str
    jobs: int
    workers: int
    concurrency: int
    enqueue_single_jobs_per_s: float = 0.0
    enqueue_batch_jobs_per_s: float = 0.0
    drain_jobs_per_s: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    commands_per_job_single: float = 0.0
    commands_per_job_batched: float = 0.0
    script_commands_per_job: float = 0.0
    redis_cpu_us_per_job: float = 0.0
    floor_redis_cpu_us_per_job: float = 0.0
    redis_cpu_vs_floor: float = 0.0
    redis_bytes_per_queued_job: float = 0.0
    redis_bytes_per_finished_job: float = 0.0
    worker_peak_rss_mib: float = 0.0
    due_lateness_p50_ms: float = 0.0  # a delayed job's start after its due time, idle worker (bench_due.py)
    due_lateness_p99_ms: float = 0.0
    retry_lateness_p50_ms: float = 0.0  # a retry's start after its backoff ran out
    retry_lateness_p99_ms: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _specs(count: int, queues: list[str], start: int = 0) -> list[JobSpec]:
    """No-op jobs spread round robin over `queues`."""
    return [JobSpec(name="bagbot.noop", queue=queues[(start + i) % len(queues)]) for i in range(count)]


async def _enqueue_single(
    store: JobStore, count: int, concurrency: int, tick: Callable[[int], None], queues: list[str]
) -> float:
    remaining, unticked = count, 0

    async def producer() -> None:
        nonlocal remaining, unticked
        while remaining > 0:
            remaining -= 1
            await store.enqueue(JobSpec(name="bagbot.noop", queue=queues[remaining % len(queues)]))
            unticked += 1
            if unticked >= 100:  # the progress bar costs ~2 µs an update: not once per job
                tick(unticked)
                unticked = 0

    started = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(concurrency)))
    rate = count / (time.perf_counter() - started)
    tick(unticked)
    return rate


async def _enqueue_batched(
    store: JobStore, count: int, batch: int, tick: Callable[[int], None], queues: list[str]
) -> float:
    started = time.perf_counter()
    for offset in range(0, count, batch):
        size = min(batch, count - offset)
        await store.enqueue_many(_specs(size, queues, offset))
        tick(size)
    return count / (time.perf_counter() - started)


async def _wait_until(check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every)
    return False


async def _count(store: JobStore, state: JobState) -> int:
    return sum(per_state.get(state.value, 0) for per_state in (await store.counts()).values())


class _Workers:
    """Worker processes, and the peak RSS each reached (VmHWM, read before they exit)."""

    def __init__(self, opts: BenchOptions, prefix: str) -> None:
        env = dict(os.environ, JOB_STORE="redis", REDIS_URL=opts.redis_url, BAGBOT_PREFIX=prefix,
                   BAGBOT_QUEUES=",".join(queue_names(opts.queues)), BAGBOT_CONCURRENCY=str(opts.concurrency),
                   BAGBOT_LOG_LEVEL="WARNING")
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "backend.workers"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(opts.workers)
        ]

    def peak_rss_mib(self) -> float:
        peaks = []
        for proc in self.procs:
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peaks.append(int(line.split()[1]) / 1024)
            except OSError:
                continue
        return max(peaks, default=0.0)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _job_times(store: JobStore, state: JobState, limit: int) -> list[tuple[float, float, float]]:
    """(created_at, started_at, finished_at) of up to `limit` jobs of the bench queues in `state`."""
    times: list[tuple[float, float, float]] = []
    cursor = None
    while len(times) < limit:
        page = await store.list_jobs(state=state, limit=1000, cursor=cursor)
        times.extend((j.created_at, j.started_at or 0.0, j.finished_at or 0.0) for j in page.jobs)
        cursor = page.cursor
        if cursor is None:
            break
    return times


async def _drain(store: JobStore, opts: BenchOptions, prefix: str, result: BenchResult,
                 progress: Progress, task: TaskID) -> None:
    workers = _Workers(opts, prefix)
    try:
        async def all_done() -> bool:
            done = await _count(store, JobState.DONE)
            progress.update(task, completed=done)
            return done >= opts.jobs

        if not await _wait_until(all_done, timeout=max(120.0, opts.jobs / 500)):
            result.notes.append("drain did not finish in time")
        result.worker_peak_rss_mib = workers.peak_rss_mib()
    finally:
        workers.stop()


async def _drain_rate(store: JobStore, jobs: int) -> float:
    """Jobs per second between the first start and the last finish (server clock)."""
    times = await _job_times(store, JobState.DONE, jobs)
    if not times:
        return 0.0
    first_start = min(t[1] for t in times)
    last_finish = max(t[2] for t in times)
    return len(times) / max(last_finish - first_start, 1e-6)


async def _latency(store: JobStore, opts: BenchOptions, prefix: str, progress: Progress,
                   task: TaskID) -> list[float]:
    """Enqueue-to-start delays (ms) at a steady rate on an already idle worker."""
    one = BenchOptions(**{**asdict(opts), "workers": 1})
    first_queue = queue_names(opts.queues)[0]
    workers = _Workers(one, prefix)
    try:
        async def registered() -> bool:
            return len(await store.list_workers()) > 0

        await _wait_until(registered, timeout=30)
        await asyncio.sleep(0.5)  # let it reach its blocking wait
        gap = 1.0 / opts.latency_rate
        ids: list[str] = []
        started = time.perf_counter()
        for index in range(opts.latency_jobs):
            delay = started + index * gap - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ids.append((await store.enqueue(JobSpec(name="bagbot.noop", queue=first_queue))).id)
            progress.update(task, advance=1)

        async def finished() -> bool:
            return await _count(store, JobState.DONE) >= opts.latency_jobs

        await _wait_until(finished, timeout=60)
    finally:
        workers.stop()
    delays = []
    for job_id in ids:
        job = await store.get(job_id, first_queue)
        if job is not None and job.started_at is not None:
            delays.append((job.started_at - job.created_at) * 1000)
    return delays


async def run_redis_bench(opts: BenchOptions, progress: Progress) -> BenchResult:
    result = BenchResult(store="redis", jobs=opts.jobs, workers=opts.workers, concurrency=opts.concurrency)
    info = await RedisInfo.connect(opts.redis_url)
    queues = queue_names(opts.queues)
    prefixes: list[str] = []

    def new_prefix() -> str:
        prefixes.append(f"bagbot-bench-{uuid.uuid4().hex[:8]}")
        return prefixes[-1]

    def fresh_store() -> tuple[RedisJobStore, str]:
        prefix = new_prefix()
        return RedisJobStore.from_url(opts.redis_url, prefix=prefix), prefix

    try:
        # 1. one at a time, then batched; the batched set is the one the workers drain.
        store, prefix = fresh_store()
        task = progress.add_task("enqueue one at a time", total=opts.jobs)
        before = await info.commandstats()
        result.enqueue_single_jobs_per_s = await _enqueue_single(
            store, opts.jobs, opts.enqueue_concurrency, lambda n: progress.update(task, advance=n), queues)
        single_enqueue_cmds = commands_delta(await info.commandstats(), before)
        await info.purge(prefix)
        await store.close()

        store, prefix = fresh_store()
        task = progress.add_task("enqueue batched", total=opts.jobs)
        memory_before = await info.used_memory()
        before, cpu_before = await info.commandstats(), await info.cpu_seconds()
        result.enqueue_batch_jobs_per_s = await _enqueue_batched(
            store, opts.jobs, opts.batch_size, lambda n: progress.update(task, advance=n), queues)
        result.redis_bytes_per_queued_job = (await info.used_memory() - memory_before) / opts.jobs

        # 2. drain with W worker processes started after the jobs are queued.
        task = progress.add_task(f"drain with {opts.workers} worker(s)", total=opts.jobs)
        await _drain(store, opts, prefix, result, progress, task)
        cycle = commands_delta(await info.commandstats(), before)
        result.redis_cpu_us_per_job = (await info.cpu_seconds() - cpu_before) * 1e6 / opts.jobs
        result.redis_bytes_per_finished_job = (await info.used_memory() - memory_before) / opts.jobs
        top = sum(calls for name, calls in cycle.items() if name in TOP_LEVEL_COMMANDS)
        result.commands_per_job_batched = top / opts.jobs
        result.script_commands_per_job = sum(cycle.values()) / opts.jobs
        single_top = sum(c for n, c in single_enqueue_cmds.items() if n in TOP_LEVEL_COMMANDS)
        worker_top = top - _batched_enqueue_calls(opts)
        result.commands_per_job_single = (single_top + worker_top) / opts.jobs
        result.drain_jobs_per_s = await _drain_rate(store, opts.jobs)
        await store.close()
        # the floor (bench_floor.py) on the same server, its keys purged like the others
        result.floor_redis_cpu_us_per_job = await floor_cpu_us_per_job(info, opts.redis_url, new_prefix(),
                                                                       queues[0], opts.jobs)
        result.redis_cpu_vs_floor = result.redis_cpu_us_per_job / result.floor_redis_cpu_us_per_job

        # 3. start latency on an idle worker at a steady rate.
        store, prefix = fresh_store()
        task = progress.add_task(f"latency at {opts.latency_rate:.0f} jobs/s", total=opts.latency_jobs)
        delays = sorted(await _latency(store, opts, prefix, progress, task))
        if delays:
            result.latency_p50_ms = statistics.median(delays)
            result.latency_p99_ms = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
            result.latency_max_ms = delays[-1]
        await store.close()

        # 4. how late an idle worker starts a delayed job and a retry (bench_due.py)
        store, prefix = fresh_store()
        progress.add_task("due-time lateness (delayed jobs, retries)", total=None)
        due = await measure_due_lateness(store, opts.redis_url, prefix, QUEUE)
        result.due_lateness_p50_ms = percentile(due.delayed_ms, 0.5)
        result.due_lateness_p99_ms = percentile(due.delayed_ms, 0.99)
        result.retry_lateness_p50_ms = percentile(due.retry_ms, 0.5)
        result.retry_lateness_p99_ms = percentile(due.retry_ms, 0.99)
        await store.close()
    finally:
        for prefix in prefixes:
            await info.purge(prefix)
        await info.close()
    return result


def _batched_enqueue_calls(opts: BenchOptions) -> int:
    """Script calls the batched enqueue made (replaced by one-at-a-time calls in the single figure)."""
    return -(-opts.jobs // opts.batch_size)


async def run_memory_bench(opts: BenchOptions, progress: Progress) -> BenchResult:
    """The embedded store: enqueue rates and an in-process worker's drain rate."""
    from backend.workers.memory_job_store import MemoryJobStore
    from backend.workers.orchestration import Worker

    result = BenchResult(store="memory", jobs=opts.jobs, workers=1, concurrency=opts.concurrency)
    queues = queue_names(opts.queues)
    store = MemoryJobStore()
    task = progress.add_task("enqueue one at a time", total=opts.jobs)
    result.enqueue_single_jobs_per_s = await _enqueue_single(
        store, opts.jobs, opts.enqueue_concurrency, lambda n: progress.update(task, advance=n), queues)
    store = MemoryJobStore()
    task = progress.add_task("enqueue batched", total=opts.jobs)
    result.enqueue_batch_jobs_per_s = await _enqueue_batched(
        store, opts.jobs, opts.batch_size, lambda n: progress.update(task, advance=n), queues)
    settings = Settings(queues=tuple(queues), concurrency=opts.concurrency, log_level="WARNING")
    worker = Worker(store, settings)
    task = progress.add_task("drain in-process", total=opts.jobs)
    started = time.perf_counter()
    await worker.start()

    async def all_done() -> bool:
        done = await _count(store, JobState.DONE)
        progress.update(task, completed=done)
        return done >= opts.jobs

    await _wait_until(all_done, timeout=300, every=0.01)
    result.drain_jobs_per_s = opts.jobs / (time.perf_counter() - started)
    await worker.stop()
    result.notes.append("memory store: drain measured in-process, wall clock")
    return result


def run_bench(opts: BenchOptions, quiet: bool = False) -> BenchResult:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), disable=quiet, transient=True) as progress:
        runner = run_memory_bench if opts.store == "memory" else run_redis_bench
        result = asyncio.run(runner(opts, progress))
    if opts.store == "redis":
        result.notes.append(f"redis: {redact_url(opts.redis_url)}")
    return result
