"""Differential run: the memory store and a real Redis get the same random operations, with time.

The hypothesis model test (test_store_model.py) keeps time out of every outcome. This run lets
time decide: jobs are scheduled a moment ahead, leases are short, and a `sleep` step makes them
due or expired in both stores at once. A worker claims from two and three queues in one call,
over several concurrency-limit keys, so promotion and lease recovery on every queue of a claim
are compared (where the two stores once disagreed: one stopped housekeeping after the first
queue filled the batch). Claims are confirmed (an extend) or left unconfirmed at random, so both
a charged expiry and a lost claim given back uncounted are compared. After every step both stores
must hold the same jobs in the same states with the same attempts, errors and counters.

The two stores get each step a moment apart (memory first, then Redis), each on its own clock
reading (the same system clock). A due time or lease deadline falling inside that moment would let
one store see it passed and the other not: a difference of timing, not of meaning. So no step
starts within GUARD of a deadline either store holds (it waits until both are past it), and a step
that took so long that a deadline fell inside it after all (a stalled machine) is not compared: its
sequence is run again from the start with fresh stores.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from backend.workers.job_store import JobStore, JobStoreError
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Claim, Completion, Job, JobError, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff

QUEUES = ("qa", "qb", "qc")
DUE_SOON = 0.4  # seconds: delays, leases and backoffs; a sleep step waits longer than this
NAP = DUE_SOON + 0.25
SEQUENCES = 8
STEPS = 45
GUARD = 0.1  # seconds: no step starts this close before a deadline
MARGIN = 0.01  # seconds past a deadline before a step may run (clock granularity)
TRIES = 3  # runs of one sequence before a machine that stalls every time fails the test

pytestmark = pytest.mark.redis_only


def view(job: Job | None) -> tuple[Any, ...] | None:
    """What both stores must agree on (no times, no tokens: each store has its own)."""
    if job is None:
        return None
    error = (job.last_error.type, job.last_error.message) if job.last_error else None
    return (job.id, job.queue, job.state, job.attempts, job.priority, error, job.result, job.unique_key)


class Straddled(Exception):
    """A deadline fell inside a step: the two stores may have seen it on different sides."""


def deadline(job: Job | None) -> float | None:
    """When time alone changes what the stores do with this job: its due time or lease end."""
    if job is None:
        return None
    if job.state in (JobState.SCHEDULED, JobState.RETRY_SCHEDULED):
        return job.run_at
    return job.lease_until if job.state is JobState.RUNNING else None


class Pair:
    """The same operations on both stores, compared as they go."""

    def __init__(self, memory: JobStore, redis: JobStore, rng: random.Random) -> None:
        self.stores = (memory, redis)
        self.rng = rng
        self.known: set[tuple[str, str]] = set()
        self.held: list[tuple[Claim, Claim]] = []  # (memory's claim, Redis's claim) of one running job
        self.deadlines: list[float] = []  # every due time and lease end either store held at the last check

    async def step(self, name: str) -> None:
        """Run one step clear of every deadline, so that both stores see each on the same side."""
        if name == "nap":  # touches no store: it is how deadlines get passed
            return await self.nap()
        while soon := [d for d in self.deadlines if time.time() - MARGIN <= d <= time.time() + GUARD]:
            await asyncio.sleep(max(soon) + MARGIN - time.time())
        start = time.time()
        await getattr(self, name)()
        end = time.time()
        if any(start - MARGIN <= d <= end + MARGIN for d in self.deadlines):
            raise Straddled(name)

    async def both(self, step: Any) -> tuple[Any, Any]:
        out = []
        for store in self.stores:
            try:
                out.append(await step(store))
            except JobStoreError as exc:
                out.append(f"raised {type(exc).__name__}")
        return out[0], out[1]

    async def enqueue(self) -> None:
        queue = self.rng.choice(QUEUES)
        number = self.rng.randrange(10)
        limit_key = self.rng.choice([None, None, "k1", "k2"])
        spec = JobSpec(
            "d.job", args=[number], queue=queue, id=f"{queue}-{number}",
            priority=self.rng.choice([0, 0, 1]), delay=self.rng.choice([None, None, DUE_SOON]),
            max_attempts=self.rng.randint(1, 3), backoff=Backoff(DUE_SOON, DUE_SOON, 0.0),
            unique_key=self.rng.choice([None, None, "u1"]),
            limit_key=limit_key, limit=None if limit_key is None else 1,
        )
        mem, red = await self.both(lambda store: store.enqueue(spec))
        assert view(mem) == view(red)
        self.known.add((queue, spec.id or ""))

    async def claim(self) -> None:
        order = list(QUEUES)
        self.rng.shuffle(order)
        order = order[: self.rng.randint(2, 3)]
        limit = self.rng.randint(1, 4)
        mem, red = await self.both(lambda store: store.claim("diff", order, limit, DUE_SOON))
        assert [view(j) for j in mem] == [view(j) for j in red]
        pairs = [(Claim(m.queue, m.id, m.token or ""), Claim(r.queue, r.id, r.token or "")) for m, r in
                 zip(mem, red, strict=True)]
        self.held.extend(pairs)
        if pairs and self.rng.random() < 0.5:  # the worker got them: their expiry is charged
            mem, red = await self.both(lambda s: s.extend([p[0 if s is self.stores[0] else 1] for p in pairs],
                                                          DUE_SOON))
            assert [c.job_id for c in mem] == [c.job_id for c in red] == []

    async def finish(self) -> None:
        if not self.held:
            return
        pair = self.held.pop(self.rng.randrange(len(self.held)))
        outcome = self.rng.choice(["done", "retry", "fatal", "cancelled"])

        def completion(claim: Claim) -> Completion:
            if outcome == "done":
                return Completion(claim, 0.01, result={"ok": claim.job_id})
            if outcome == "cancelled":
                return Completion(claim, 0.01, cancelled=True)
            return Completion(claim, 0.01, error=JobError("E", outcome), retryable=outcome == "retry")

        mem, red = await self.both(lambda s: s.finish([completion(pair[0 if s is self.stores[0] else 1])]))
        assert mem == red

    async def release(self) -> None:
        if self.held:
            pair = self.held.pop()
            mem, red = await self.both(lambda s: s.release([pair[0 if s is self.stores[0] else 1]]))
            assert mem == red

    async def operator(self) -> None:
        queue, number = self.rng.choice(QUEUES), self.rng.randrange(10)
        action = self.rng.choice(["cancel", "retry"])
        mem, red = await self.both(lambda store: getattr(store, action)(f"{queue}-{number}", queue))
        assert (mem if isinstance(mem, str) else view(mem)) == (red if isinstance(red, str) else view(red))

    async def nap(self) -> None:
        await asyncio.sleep(NAP)  # scheduled jobs come due and held leases expire, in both stores

    async def housekeeping(self) -> None:
        mem, red = await self.both(lambda store: store.promote(list(QUEUES)))
        assert mem == red
        mem, red = await self.both(lambda store: store.recover(list(QUEUES)))
        assert mem == red

    async def check(self) -> None:
        self.deadlines = []
        for queue, job_id in sorted(self.known):
            mem, red = await self.both(lambda store: store.get(job_id, queue))  # noqa: B023 - awaited at once
            assert view(mem) == view(red), (queue, job_id)
            self.deadlines += [d for d in (deadline(mem), deadline(red)) if d is not None]
        mem, red = await self.both(lambda store: store.metrics())
        assert mem.counts == red.counts
        for name in mem.queues:
            m, r = mem.queues[name], red.queues[name]
            assert (m.enqueued, m.runs, m.retries) == (r.enqueued, r.runs, r.retries), name


async def test_memory_and_redis_agree_on_random_timed_sequences(redis_url: str, prefix: str) -> None:
    straddled: list[str] = []
    for seed in range(SEQUENCES):
        for attempt in range(TRIES):
            try:
                await run_sequence(seed, redis_url, f"{prefix}-{seed}-{attempt}")
                break
            except Straddled as exc:
                straddled.append(f"seed {seed}: {exc}")
        else:
            pytest.fail(f"a deadline fell inside a step on every try (stalls over {GUARD}s): {straddled}")


async def run_sequence(seed: int, redis_url: str, prefix: str) -> None:
    steps = ["enqueue"] * 6 + ["claim"] * 4 + ["finish"] * 3 + ["release", "operator", "nap", "housekeeping"]
    rng = random.Random(seed)
    memory = MemoryJobStore()
    redis = RedisJobStore.from_url(redis_url, prefix=prefix)
    pair = Pair(memory, redis, rng)
    try:
        for _ in range(STEPS):
            await pair.step(rng.choice(steps))
            await pair.check()
        # the case that once split them: a claim over several queues with work due on each
        await pair.nap()
        await pair.step("claim")
        await pair.check()
    finally:
        client = redis.redis
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await redis.close()
        await memory.close()
