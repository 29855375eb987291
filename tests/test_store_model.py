"""Model test: the memory store and the Redis store (real server) agree on every step.

A hypothesis state machine sends both stores the same random operations and
compares what they return, which errors they raise, and the states, attempts
and counters they hold after every step. Time never decides an outcome here:
no jitter, scheduled jobs and retries are due in a million seconds, leases
last an hour.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from backend.workers.job_store import JobStore
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Claim, Completion, Job, JobError, JobSpec
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff

FAR = 1_000_000.0  # seconds: nothing scheduled in a test ever becomes due
LEASE = 3600.0
QUEUES = ("default", "q2")
BACKOFF = Backoff(base=FAR, cap=FAR, jitter=0.0)

ClaimPair = tuple[Claim, Claim]  # (memory's claim, Redis's claim) on the same job


def view(job: Job | None) -> tuple[Any, ...] | None:
    """What both stores must agree on (not times, not tokens: each store has its own)."""
    if job is None:
        return None
    error = (job.last_error.type, job.last_error.message) if job.last_error else None
    return (job.id, job.queue, job.name, job.args, job.state, job.attempts, job.max_attempts, job.priority,
            job.unique_key, error, job.result)


def claim_of(job: Job) -> Claim:
    return Claim(job.queue, job.id, job.token or "")


class StoresAgree(RuleBasedStateMachine):
    redis_url: ClassVar[str] = ""
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.prefix = f"bbmodel-{uuid.uuid4().hex[:10]}"
        self.memory = MemoryJobStore()
        self.redis = RedisJobStore.from_url(self.redis_url, prefix=self.prefix)
        self.known: set[tuple[str, str]] = set()  # (queue, id) of every job either store holds

    def run(self, step: Callable[[JobStore], Awaitable[Any]]) -> tuple[Any, Any]:
        """Run one step on both stores; an exception counts as its class name."""
        results = []
        for store in (self.memory, self.redis):
            try:
                results.append(self.loop.run_until_complete(step(store)))
            except Exception as exc:  # the error itself is what is compared
                results.append(f"raised {type(exc).__name__}")
        return results[0], results[1]

    def teardown(self) -> None:
        async def close() -> None:
            client = self.redis.redis
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
            await self.redis.close()
            await self.memory.close()

        try:
            self.loop.run_until_complete(close())
        finally:
            self.loop.close()

    # -- rules --------------------------------------------------------------------

    @rule(
        queue=st.sampled_from(QUEUES),
        number=st.integers(0, 12),
        priority=st.sampled_from([-1, 0, 0, 1]),
        unique_key=st.sampled_from([None, None, "k1", "k2"]),
        later=st.booleans(),
        max_attempts=st.integers(1, 3),
    )
    def enqueue(
        self, queue: str, number: int, priority: int, unique_key: str | None, later: bool, max_attempts: int
    ) -> None:
        spec = JobSpec("m.job", args=[number], queue=queue, id=f"{queue}-j{number}", priority=priority,
                       unique_key=unique_key, delay=FAR if later else None, max_attempts=max_attempts,
                       backoff=BACKOFF)
        mem, red = self.run(lambda store: store.enqueue(spec))
        assert view(mem) == view(red)
        self.known.add((queue, mem.id))

    @rule(target=claims, limit=st.integers(1, 3), order=st.sampled_from([QUEUES, QUEUES[::-1], QUEUES[:1]]))
    def claim(self, limit: int, order: tuple[str, ...]) -> Any:
        mem, red = self.run(lambda store: store.claim("model-worker", order, limit, LEASE))
        assert [view(job) for job in mem] == [view(job) for job in red]
        return multiple(*[(claim_of(m), claim_of(r)) for m, r in zip(mem, red, strict=True)])

    @rule(
        pair=claims,
        outcome=st.sampled_from(["done", "retry", "fatal"]),
        duration=st.sampled_from([0.003, 2.0]),
    )
    def finish(self, pair: ClaimPair, outcome: str, duration: float) -> None:
        def completion(claim: Claim) -> Completion:
            if outcome == "done":
                return Completion(claim, duration, result={"ok": claim.job_id})
            return Completion(claim, duration, error=JobError("E", outcome), retryable=outcome == "retry",
                              retry_delay=FAR)

        mem, red = self.run(lambda store: store.finish([completion(pair[0 if store is self.memory else 1])]))
        assert mem == red

    @rule(pair=claims)
    def release(self, pair: ClaimPair) -> None:
        mem, red = self.run(lambda store: store.release([pair[0 if store is self.memory else 1]]))
        assert mem == red

    @rule(pair=claims)
    def extend(self, pair: ClaimPair) -> None:
        mem, red = self.run(lambda store: store.extend([pair[0 if store is self.memory else 1]], LEASE))
        assert len(mem) == len(red)

    @rule(queue=st.sampled_from(QUEUES), number=st.integers(0, 14), with_queue=st.booleans())
    def cancel(self, queue: str, number: int, with_queue: bool) -> None:
        job_id = f"{queue}-j{number}"
        mem, red = self.run(lambda store: store.cancel(job_id, queue if with_queue else None))
        assert (mem if isinstance(mem, str) else view(mem)) == (red if isinstance(red, str) else view(red))

    @rule(queue=st.sampled_from(QUEUES), number=st.integers(0, 14))
    def retry(self, queue: str, number: int) -> None:
        job_id = f"{queue}-j{number}"
        mem, red = self.run(lambda store: store.retry(job_id))
        assert (mem if isinstance(mem, str) else view(mem)) == (red if isinstance(red, str) else view(red))

    @rule()
    def counts(self) -> None:
        mem, red = self.run(lambda store: store.counts())
        assert mem == red

    # -- after every step ----------------------------------------------------------

    @invariant()
    def jobs_agree(self) -> None:
        for queue, job_id in sorted(self.known):
            mem, red = self.run(lambda store: store.get(job_id, queue))  # noqa: B023 - run at once
            assert view(mem) == view(red), (queue, job_id)

    @invariant()
    def counters_agree(self) -> None:
        mem, red = self.run(lambda store: store.metrics())
        assert mem.counts == red.counts
        assert sorted(mem.queues) == sorted(red.queues)
        for name in mem.queues:
            m, r = mem.queues[name], red.queues[name]
            assert (m.enqueued, m.runs, m.retries, m.duration_buckets) == (r.enqueued, r.runs, r.retries,
                                                                          r.duration_buckets), name


@pytest.mark.redis_only
def test_memory_and_redis_stores_agree(redis_url: str) -> None:
    StoresAgree.redis_url = redis_url
    run_state_machine_as_test(
        StoresAgree,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
