"""Dependencies and batches under fire: real worker processes, one SIGKILLed every 0.8 s
while batches (with callbacks) and chains go through, with retried and doomed jobs among them.

What must hold (docs/features.md): a dependant of done parents runs (never "never"), and never
before its last parent ended done; each of its attempts ran at most once, so a killed worker never
makes it run twice on one release; a dependant of a failed parent never runs and ends cancelled;
each batch's callback is released exactly once, after its last job's final outcome, and is given
the counts of done/failed/cancelled that the jobs really ended with.

Run with `pytest -s` to see the figures.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from backend.client.client import Client
from backend.client.workflows import BatchHandle, Call
from backend.workers.models import Job, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.worker_procs import Execution, WorkerProcess, read_records, worker_env

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]

WORKERS = 3
BATCHES = 8
PER_BATCH = 10
CHAINS = 24
KILL_EVERY = 0.8


def batch_calls(b: int, rng: random.Random) -> list[Call[object]]:
    calls: list[Call[object]] = []
    for i in range(PER_BATCH):
        if i % 5 == 4:  # doomed: fails on each of its 2 attempts
            calls.append(Call.of("tests.flaky", kwargs={"times": 1000}, max_attempts=2))
        elif i % 5 == 3:  # fails once, then succeeds: retried, not finished until its last attempt
            calls.append(Call.of("tests.flaky", kwargs={"times": 1}, max_attempts=10))
        else:
            calls.append(Call.of("tests.record", kwargs={"sleep": round(rng.uniform(0.1, 1.0), 3)},
                                 max_attempts=10))
    return calls


def chain_calls(c: int, rng: random.Random) -> list[Call[object]]:
    middle = (Call.of("tests.flaky", kwargs={"times": 1000}, max_attempts=2) if c % 4 == 3
              else Call.of("tests.flaky", kwargs={"times": 1}, max_attempts=10))
    return [Call.of("tests.record", kwargs={"sleep": round(rng.uniform(0.2, 1.2), 3)}, max_attempts=10),
            middle,
            Call.of("tests.record", kwargs={"sleep": 0.2}, max_attempts=10)]


class Fleet:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.alive: list[WorkerProcess] = []
        self.all: list[WorkerProcess] = []
        self.kills = 0
        self.rng = random.Random(17)

    def spawn(self) -> None:
        proc = WorkerProcess(self.tmp, f"worker{len(self.all)}", self.env)
        self.alive.append(proc)
        self.all.append(proc)

    def kill_one(self) -> None:
        self.alive.pop(self.rng.randrange(len(self.alive))).send(signal.SIGKILL)
        self.kills += 1
        self.spawn()

    def stop_all(self) -> None:
        for proc in self.all:
            proc.stop()


async def read_jobs(store: RedisJobStore, ids: list[str]) -> dict[str, Job]:
    jobs: dict[str, Job] = {}
    for job_id in ids:
        job = await store.get(job_id, "default")
        assert job is not None
        jobs[job_id] = job
    return jobs


def check_attempts_ran_once(job: Job, starts: list[Execution]) -> None:
    attempts = [ex.attempt for ex in starts]
    assert len(attempts) == len(set(attempts)), f"{job.id}: an attempt ran twice {attempts}"
    assert len(attempts) <= job.attempts, (job.id, attempts, job.attempts)


async def test_kills_never_make_a_dependant_run_twice_or_never_and_callbacks_fire_once(
    redis_url: str, prefix: str, tmp_path: Path, delete_prefix_after: None
) -> None:
    record = tmp_path / "record.txt"
    fleet = Fleet(tmp_path, worker_env(redis_url, prefix, record, BAGBOT_CONCURRENCY="6"))
    store = RedisJobStore.from_url(redis_url, prefix=prefix)
    client = Client(store, owns_store=False)
    rng = random.Random(2026)
    try:
        for _ in range(WORKERS):
            fleet.spawn()
        batches: list[BatchHandle[object]] = []
        chains: list[list[str]] = []
        for b in range(BATCHES):
            callback = Call.of("tests.batch_done", kwargs={"sleep": 0.4}, max_attempts=10)
            batches.append(await client.batch(batch_calls(b, rng), callback=callback, id=f"batch{b}"))
        from backend.client.workflows import enqueue_chain

        for c in range(CHAINS):
            chains.append([handle.id for handle in await enqueue_chain(client, chain_calls(c, rng))])
        ends = [batch.id for batch in batches] + [chain[-1] for chain in chains]

        deadline = time.monotonic() + 240
        while not all(job.is_terminal for job in (await read_jobs(store, ends)).values()):
            assert time.monotonic() < deadline, "the workflows did not end within 240 s"
            await asyncio.sleep(KILL_EVERY)
            fleet.kill_one()

        members = [i for b in batches for i in b.job_ids] + [i for c in chains for i in c]
        jobs = await read_jobs(store, [*members, *ends])
        starts: dict[str, list[Execution]] = defaultdict(list)
        for ex in read_records(record):
            starts[ex.job_id].append(ex)
        for job in jobs.values():
            check_attempts_ran_once(job, starts[job.id])

        for batch in batches:
            await check_batch(batch, jobs, starts)
        for chain in chains:
            check_chain(chain, jobs, starts)
        assert fleet.kills >= 8
        runs = sum(len(s) for s in starts.values())
        print(f"\nworkflow chaos: {len(jobs)} jobs, {fleet.kills} SIGKILLs, {runs} handler starts")
    finally:
        fleet.stop_all()
        await client.close()
        await store.close()


async def check_batch(batch: BatchHandle[object], jobs: dict[str, Job], starts: dict[str, list[Execution]]
                      ) -> None:
    """The callback: released once, after the final outcomes, given their true counts."""
    callback = jobs[batch.id]
    assert callback.state is JobState.DONE, callback
    members = [jobs[i] for i in batch.job_ids]
    assert all(m.is_terminal for m in members)
    real = {s: sum(m.state.value == s for m in members) for s in ("done", "failed", "cancelled")}
    assert real == {"done": 8, "failed": 2, "cancelled": 0}
    events = {ex.event for ex in starts[batch.id]}
    assert events == {f"cb-{real['done']}-{real['failed']}-{real['cancelled']}"}, events
    last_end = max(m.finished_at or 0.0 for m in members)
    assert min(ex.at for ex in starts[batch.id]) >= last_end - 0.05  # not before the last one
    assert callback.result == real
    assert (await batch.status()).finished


def check_chain(chain: list[str], jobs: dict[str, Job], starts: dict[str, list[Execution]]) -> None:
    """Each link ran only after the one before ended done; after a doomed link, never."""
    first, middle, last = (jobs[i] for i in chain)
    assert first.state is JobState.DONE
    if middle.max_attempts == 2:  # doomed middle: the last never runs
        assert middle.state is JobState.FAILED
        assert last.state is JobState.CANCELLED and starts[last.id] == []
        assert last.last_error is not None and middle.id in last.last_error.message
    else:
        assert middle.state is JobState.DONE and last.state is JobState.DONE
        assert starts[last.id], f"{last.id} was done but never ran"
        assert min(ex.at for ex in starts[last.id]) >= (middle.finished_at or 0.0) - 0.05
    assert min(ex.at for ex in starts[middle.id]) >= (first.finished_at or 0.0) - 0.05
