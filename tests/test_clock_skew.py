"""Workers whose own clocks are minutes off neither reclaim early nor retry early: leases,
schedules and heartbeats are all measured on the Redis server's clock (TIME inside the scripts).

The skewed workers run under tests/skewed_clock.py, which shifts time.time() in the process by
±10 minutes before the worker starts (their log timestamps show it).
"""

from __future__ import annotations

import itertools
import signal
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import Backoff
from tests.api_server import ServiceProcess
from tests.worker_procs import eventually, read_records, worker_env

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]
SKEW = 600.0  # ten minutes: far more than any lease, heartbeat or backoff here


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


class Skewed:
    def __init__(self, tmp: Path, redis_url: str, prefix: str) -> None:
        self.tmp, self.redis_url, self.prefix = tmp, redis_url, prefix
        self.record = tmp / "record.txt"
        self.procs: list[ServiceProcess] = []
        self.skews: dict[int, float] = {}  # pid -> its clock's offset

    def start(self, skew: float) -> ServiceProcess:
        env = worker_env(self.redis_url, self.prefix, self.record, BAGBOT_TEST_CLOCK_SKEW=str(skew))
        name = f"worker{len(self.procs)}"
        command = [sys.executable, "-m", "tests.skewed_clock", "backend.workers"]
        proc = ServiceProcess(self.tmp, name, command, env)
        proc.wait_for_log("✓ Heartbeats being sent")
        self.procs.append(proc)
        self.skews[proc.proc.pid] = skew
        return proc

    def real_time(self, pid: int, at: float) -> float:
        """A time a skewed worker recorded, back on the real clock."""
        return at - self.skews[pid]


@pytest.fixture
def skewed(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Skewed]:
    s = Skewed(tmp_path, redis_url, prefix)
    yield s
    for proc in s.procs:
        proc.stop()


def clock_offset(proc: ServiceProcess) -> float:
    """How far the worker's clock is off, read from the timestamp of its first log line."""
    first = proc.log().splitlines()[0]
    logged = datetime.strptime(first[:19], "%Y-%m-%d %H:%M:%S")
    return (logged - datetime.now()).total_seconds()


async def test_a_worker_ten_minutes_ahead_does_not_reclaim_a_live_lease(
    store: RedisJobStore, skewed: Skewed
) -> None:
    behind = skewed.start(-SKEW)
    job = await store.enqueue(JobSpec("tests.sleeper", args=[4.0]))  # twice the 2 s lease

    async def running() -> bool:
        got = await store.get(job.id)
        return got is not None and got.state is JobState.RUNNING

    await eventually(running, 30, "job running on the worker that is behind")
    ahead = skewed.start(+SKEW)  # on its clock, every lease granted now ran out 20 minutes ago
    assert clock_offset(behind) < -SKEW / 2 and clock_offset(ahead) > SKEW / 2  # the skew is real

    async def done() -> bool:
        got = await store.get(job.id)
        return got is not None and got.state is JobState.DONE

    await eventually(done, 30, "job done")
    got = await store.get(job.id)
    assert got is not None and got.attempts == 1 and got.last_error is None
    assert [ex.pid for ex in read_records(skewed.record)] == [behind.proc.pid] * 2  # start, end: once
    # the registry measures heartbeat ages on the server's clock too: nobody looks 10 minutes stale
    ages = [w.heartbeat_age for w in await store.list_workers()]
    assert len(ages) == 2 and max(ages) < 5
    for proc in (behind, ahead):
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(30) == 0


async def test_workers_minutes_off_do_not_retry_early(store: RedisJobStore, skewed: Skewed) -> None:
    workers = [skewed.start(+SKEW), skewed.start(-SKEW)]
    backoff = Backoff(base=1.5, cap=10, jitter=0)
    job = await store.enqueue(JobSpec("tests.flaky", kwargs={"times": 2}, max_attempts=5, backoff=backoff))

    async def done() -> bool:
        got = await store.get(job.id)
        return got is not None and got.state is JobState.DONE

    await eventually(done, 60, "flaky job done")
    got = await store.get(job.id)
    assert got is not None and got.attempts == 3
    runs = sorted((skewed.real_time(ex.pid, ex.at), ex.attempt) for ex in read_records(skewed.record))
    assert [attempt for _, attempt in runs] == [1, 2, 3]
    for (before, attempt), (after, _) in itertools.pairwise(runs):
        low, _ = backoff.bounds(attempt)
        assert after - before >= low - 0.05, (attempt, after - before)  # never early
        assert after - before < SKEW / 2  # and not ten minutes late either
    for proc in workers:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(30) == 0
