"""Where an enqueue's time goes: the client's CPU, Redis's CPU and commands, and memory, per job.

    .venv/bin/python scripts/profile_enqueue.py [--jobs 20000] [--rounds 3] [--cprofile out.prof]

Starts a private redis-server (or uses REDIS_URL) and, per round, enqueues N no-op jobs one at a
time (100 in flight, as `bagbot bench`) and N in batches of 500 (enqueue_many), each on a fresh
prefix. Prints per mode the wall-clock rate, the client's CPU µs per job (process time, so a busy
machine hurts it less than the rate), Redis's CPU µs per job (INFO cpu) and "Lua itself"
(EVALSHA − the commands inside, commandstats), then the commands per job and memory per queued job
(used_memory delta of the batched phase, and MEMORY USAGE of one job hash). Medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from backend.workers.models import JobSpec  # noqa: E402
from backend.workers.redis_job_store import RedisJobStore  # noqa: E402
from tests.redis_server import delete_keys, given_or_private_redis  # noqa: E402

TOP_LEVEL = {"evalsha", "eval", "info", "ping", "sadd", "smembers", "hello", "client", "select", "script",
             "config", "memory", "scan", "hlen"}


async def stats(client: Redis) -> tuple[dict[str, tuple[int, float]], float]:
    raw = await client.info("commandstats")
    cmds = {k.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"])) for k, v in raw.items()}
    cpu = await client.info("cpu")
    return cmds, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


Stats = tuple[dict[str, tuple[int, float]], float]


def delta(before: Stats, after: Stats) -> Stats:
    cmds = {name: (calls - before[0].get(name, (0, 0.0))[0], usec - before[0].get(name, (0, 0.0))[1])
            for name, (calls, usec) in after[0].items()}
    return {n: d for n, d in cmds.items() if d[0] > 0 and n != "info"}, after[1] - before[1]


async def single(store: RedisJobStore, jobs: int) -> None:
    remaining = jobs

    async def producer() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await store.enqueue(JobSpec(name="bagbot.noop", queue="bench"))

    await asyncio.gather(*(producer() for _ in range(100)))


async def batched(store: RedisJobStore, jobs: int) -> None:
    for offset in range(0, jobs, 500):
        await store.enqueue_many([JobSpec(name="bagbot.noop", queue="bench")
                                  for _ in range(min(500, jobs - offset))])


async def one_mode(admin: Redis, url: str, mode: str, jobs: int, prof: cProfile.Profile | None
                   ) -> dict[str, float]:
    prefix = f"penq-{uuid.uuid4().hex[:8]}"
    store = RedisJobStore.from_url(url, prefix=prefix)
    await store.enqueue(JobSpec(name="bagbot.noop", queue="bench"))  # scripts loaded, queue listed
    mem0 = int((await admin.info("memory"))["used_memory"])
    before = await stats(admin)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    await (single(store, jobs) if mode == "single" else batched(store, jobs))
    if prof:
        prof.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    cmds, redis_cpu = delta(before, await stats(admin))
    mem = int((await admin.info("memory"))["used_memory"]) - mem0
    keys = [k async for k in admin.scan_iter(match=f"{prefix}:*:job:*", count=100)][:50]
    sizes = [await admin.memory_usage(k, samples=0) or 0 for k in keys]
    fields = await admin.hlen(keys[0]) if keys else 0
    scripts = sum(u for n, (_, u) in cmds.items() if n in ("evalsha", "eval"))
    inner = sum(u for n, (_, u) in cmds.items() if n not in TOP_LEVEL)
    await store.close()
    await delete_keys(admin, prefix)  # exactly this run's keys (SCAN, then DEL)
    return {"rate": jobs / wall, "client_us": cpu * 1e6 / jobs, "redis_us": redis_cpu * 1e6 / jobs,
            "lua_us": (scripts - inner) / jobs, "inner_cmds": sum(c for n, (c, _) in cmds.items()
                                                                 if n not in TOP_LEVEL) / jobs,
            "mem_per_job": mem / jobs, "hash_bytes": statistics.mean(sizes) if sizes else 0.0,
            "fields": fields, "cmds": cmds}  # type: ignore[dict-item]


async def main(jobs: int, rounds: int, cprofile: str | None, modes: list[str]) -> None:
    with given_or_private_redis() as url:
        admin = Redis.from_url(url, decode_responses=True)
        prof = cProfile.Profile() if cprofile else None
        results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for _ in range(rounds):
            for mode in modes:
                results[mode].append(await one_mode(admin, url, mode, jobs, prof))
        await admin.aclose()
        if prof and cprofile:
            prof.dump_stats(cprofile)
    for mode, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "cmds"}
        print(f"{mode:8} {med['rate']:>8,.0f} jobs/s  client CPU {med['client_us']:.1f} µs/job  "
              f"Redis CPU {med['redis_us']:.1f} µs/job (Lua itself {med['lua_us']:.1f})  "
              f"{med['inner_cmds']:.2f} cmds/job in scripts  used_memory {med['mem_per_job']:.0f} B/job, "
              f"job hash {med['hash_bytes']:.0f} B ({med['fields']:.0f} fields)")
        cmds = runs[-1]["cmds"]
        print("   " + "  ".join(f"{n} {c / jobs:.2f}x {u / jobs:.2f}µs" for n, (c, u) in  # type: ignore[attr-defined]
                                sorted(cmds.items(), key=lambda kv: -kv[1][1])))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cprofile", default=None)
    parser.add_argument("--modes", default="single,batched")
    ns = parser.parse_args()
    asyncio.run(main(ns.jobs, ns.rounds, ns.cprofile, ns.modes.split(",")))
