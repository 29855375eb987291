"""Where a drain's time goes: Redis `INFO commandstats` per job, and optionally the worker's py-spy profile.

    .venv/bin/python scripts/profile_drain.py [--jobs 20000] [--py-spy worker.txt]

Starts a private redis-server; enqueues N no-op jobs in batches of 500 (the bench's batched
phase); starts one worker (`python -m backend.workers`, concurrency 100; with `--py-spy FILE`, once it
has registered, `py-spy record --format raw --pid` writes its collapsed stacks to FILE) and waits
for all N to be done. Prints, for the enqueue and for the drain, each command Redis ran (scripts and
the commands inside them): calls per job, µs per call, µs per job; then the same for the floor
(backend/ops/bench_floor.py) on the same server. EVALSHA's µs include the commands the script
ran, so "Lua itself" = EVALSHA − the commands inside. With `--py-spy`, it then prints the
worker's top functions by own samples and by inclusive samples (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from backend.ops.bench_floor import Floor  # noqa: E402
from backend.workers.models import JobSpec, JobState  # noqa: E402
from backend.workers.redis_job_store import RedisJobStore  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

TOP_LEVEL = {"evalsha", "eval", "blpop", "info", "ping", "sadd", "smembers", "hello", "client", "select",
             "script", "config"}


async def stats(client: Redis) -> tuple[dict[str, tuple[int, float]], float]:
    """(command -> (calls, total µs)), Redis CPU seconds."""
    raw = await client.info("commandstats")
    cmds = {k.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"])) for k, v in raw.items()}
    cpu = await client.info("cpu")
    return cmds, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def report(title: str, before: tuple[dict[str, tuple[int, float]], float],
           after: tuple[dict[str, tuple[int, float]], float], jobs: int) -> None:
    delta = {name: (calls - before[0].get(name, (0, 0.0))[0], usec - before[0].get(name, (0, 0.0))[1])
             for name, (calls, usec) in after[0].items()}
    delta = {name: d for name, d in delta.items() if d[0] > 0 and name not in ("info",)}
    cpu_us = (after[1] - before[1]) * 1e6 / jobs
    inner = sum(usec for name, (_, usec) in delta.items() if name not in TOP_LEVEL)
    scripts = sum(usec for name, (_, usec) in delta.items() if name in ("evalsha", "eval"))
    top = sum(usec for name, (_, usec) in delta.items() if name in TOP_LEVEL) / jobs
    scale = cpu_us / top if top else 1.0  # commandstats µs are wall clock: a preempted Redis inflates them
    print(f"\n== {title}: {jobs:,} jobs, Redis CPU {cpu_us:.1f} µs/job (INFO cpu); commandstats "
          f"µs (wall clock) x {scale:.2f} = CPU ==")
    print(f"{'command':<16}{'calls/job':>10}{'µs/call':>9}{'µs/job':>8}{'CPU µs/job':>11}")
    for name, (calls, usec) in sorted(delta.items(), key=lambda item: -item[1][1]):
        per_job = usec / jobs
        print(f"{name:<16}{calls / jobs:>10.3f}{usec / calls:>9.2f}{per_job:>8.2f}{scale * per_job:>11.2f}")
    lua = (scripts - inner) / jobs
    print(f"inside scripts: {inner / jobs:.2f} µs/job (CPU {scale * inner / jobs:.1f}); Lua itself "
          f"(EVALSHA − inside): {lua:.2f} µs/job (CPU {scale * lua:.1f})")


async def memory(client: Redis, prefix: str, jobs: int, title: str) -> None:
    """MEMORY USAGE per job: a job hash (mean of 200), and each queue-level key divided by N."""
    job_keys, other = [], {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        if ":job:" in key:
            if len(job_keys) < 200:
                job_keys.append(key)
        else:
            other[key.removeprefix(prefix + ":")] = await client.memory_usage(key, samples=0) or 0
    sizes = [await client.memory_usage(key, samples=0) or 0 for key in job_keys]
    per_hash = sum(sizes) / max(len(sizes), 1)
    fields = await client.hlen(job_keys[0]) if job_keys else 0
    print(f"\n-- memory {title} (MEMORY USAGE, bytes per job) --")
    print(f"{'job hash (' + str(fields) + ' fields)':<40}{per_hash:>8.0f}")
    for key, usage in sorted(other.items(), key=lambda item: -item[1]):
        if usage / jobs >= 1:
            print(f"{key:<40}{usage / jobs:>8.0f}")


def start_worker(url: str, prefix: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, JOB_STORE="redis", REDIS_URL=url, BAGBOT_PREFIX=prefix, BAGBOT_QUEUES="bench",
               BAGBOT_CONCURRENCY="100", BAGBOT_LOG_LEVEL="WARNING")
    return subprocess.Popen([sys.executable, "-m", "backend.workers"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def schedstat(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one), summed over the process's threads."""
    run = wait = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        on_cpu, queued, _ = (task / "schedstat").read_text().split()
        run, wait = run + int(on_cpu) / 1e9, wait + int(queued) / 1e9
    return run, wait


def attach_py_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    """py-spy on the running worker (after its imports, so start-up is not in the profile)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--format", "raw", "--rate", "500", "--pid", str(pid), "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def profile(url: str, jobs: int, py_spy: str | None) -> None:
    admin = Redis.from_url(url, decode_responses=True)
    prefix = f"profile-{uuid.uuid4().hex[:8]}"
    store = RedisJobStore.from_url(url, prefix=prefix)
    start = await stats(admin)
    for offset in range(0, jobs, 500):
        await store.enqueue_many([JobSpec(name="bagbot.noop", queue="bench")
                                  for _ in range(min(500, jobs - offset))])
    queued = await stats(admin)
    await memory(admin, prefix, jobs, "after the enqueue")
    drain_start = await stats(admin)  # the memory survey's own commands are in neither phase
    worker = start_worker(url, prefix)
    spy = None
    try:
        if py_spy:
            while not await store.list_workers():
                await asyncio.sleep(0.01)
            spy = attach_py_spy(worker.pid, py_spy)
        while not await store.list_workers():
            await asyncio.sleep(0.01)
        redis_pid = int((await admin.info("server"))["process_id"])
        sched = [schedstat(worker.pid), schedstat(redis_pid)]
        worker_cpu, started = cpu_seconds(worker.pid), time.monotonic()
        while (await store.counts()).get("bench", {}).get(JobState.DONE.value, 0) < jobs:
            await asyncio.sleep(0.05)
        drained = await stats(admin)
        worker_cpu, elapsed = cpu_seconds(worker.pid) - worker_cpu, time.monotonic() - started
        for name, pid, (run0, wait0) in (("worker", worker.pid, sched[0]), ("redis", redis_pid, sched[1])):
            run, wait = schedstat(pid)
            run, wait = (run - run0) / elapsed, (wait - wait0) / elapsed
            print(f"{name}: on a CPU {100 * run:.0f}%, runnable but waiting for a CPU {100 * wait:.0f}%, "
                  f"idle {100 * (1 - run - wait):.0f}% of the drain")
        print(f"worker CPU during the drain (after it registered): {worker_cpu * 1e6 / jobs:.0f} µs/job; "
              f"{jobs / elapsed:,.0f} jobs/s wall clock{' under py-spy' if py_spy else ''}")
    finally:
        if spy is not None:
            spy.send_signal(2)  # py-spy writes its file when interrupted
            spy.wait(60)
        worker.terminate()
        worker.wait(60)
    await memory(admin, prefix, jobs, "after the drain")
    await store.close()
    report("enqueue (enqueue_many, 500 per call)", start, queued, jobs)
    report("drain (one worker, concurrency 100; includes heartbeats and idle waits)", drain_start, drained,
           jobs)
    floor = Floor(admin, f"floor-{uuid.uuid4().hex[:8]}", "bench")
    await floor.load()
    before = await stats(admin)
    await floor.cycle(jobs)
    report("floor (enqueue + claim + finish, 100 per call)", before, await stats(admin), jobs)
    await memory(admin, floor.job_prefix.split(":")[0], jobs, "of the floor, all done")
    await lua_costs(admin)
    await admin.aclose()


# What reading a job's hash into Lua costs, 100 jobs per call, as `claim.lua` and `finish.lua` do it.
SAMPLE_JOB = ["id", "0" * 32, "name", "bagbot.noop", "queue", "bench", "args", "[]", "kwargs", "{}",
              "state", "enqueued", "attempts", "0", "max_attempts", "3", "priority", "0", "timeout", "",
              "bo_base", "1", "bo_cap", "300", "bo_jitter", "0.25", "run_at", "",
              "created_at", "1765000000000000", "seq", "1", "unique_key", ""]
LUA_VARIANTS = {
    "empty per-job loop": "for _, id in ipairs(ARGV) do local k = KEYS[1] .. id end return 1",
    "HMGET 4 fields": "for _, id in ipairs(ARGV) do redis.call('HMGET', KEYS[1] .. id, 'name', 'state', "
                      "'attempts', 'token') end return 1",
    "HGETALL (18 fields)": "for _, id in ipairs(ARGV) do redis.call('HGETALL', KEYS[1] .. id) end return 1",
    "HGETALL + returned": "local out = {} for _, id in ipairs(ARGV) do out[#out + 1] = "
                          "redis.call('HGETALL', KEYS[1] .. id) end return out",
}


async def lua_costs(client: Redis) -> None:
    prefix = f"luacost-{uuid.uuid4().hex[:8]}:{{q}}:job:"
    ids = [f"{i:032d}" for i in range(100)]
    for job_id in ids:
        await client.hset(prefix + job_id, mapping=dict(zip(SAMPLE_JOB[::2], SAMPLE_JOB[1::2], strict=True)))
    print("\n-- Lua micro-costs (Redis CPU µs per job, 100 jobs per call, best of 3 x 30,000) --")
    for name, body in LUA_VARIANTS.items():
        sha = await client.script_load(body)
        best = []
        for _ in range(3):
            before = (await stats(client))[1]
            for _ in range(300):
                await client.evalsha(sha, 1, prefix, *ids)
            best.append(((await stats(client))[1] - before) * 1e6 / 30_000)
        print(f"{name:<40}{min(best):>8.2f}")
    await client.delete(*[prefix + job_id for job_id in ids])


def top_functions(path: str, count: int = 25) -> None:
    """Own and inclusive samples per function from py-spy's collapsed stacks (`a;b;c N` lines)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        frames = [frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
                  for frame in stack.split(";")]
        n = int(samples)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"\n== worker py-spy: {total} samples (on CPU) ==")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"-- top by {title} samples --")
        for frame, n in counter.most_common(count):
            print(f"{100 * n / total:6.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--py-spy", help="write the worker's collapsed stacks here (needs py-spy)")
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        asyncio.run(profile(server.url, args.jobs, args.py_spy))
    finally:
        server.cleanup()
    if args.py_spy:
        top_functions(args.py_spy)


if __name__ == "__main__":
    main()
