"""Periodic jobs: the cron parser, the catch-up policy, and exactly-once fires with several
real worker processes on a real Redis (every worker runs the scheduler; no leader)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from backend.workers.models import JobState, ScheduleInfo
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.schedules import (
    Cron,
    Every,
    ScheduleError,
    due_fire,
    fire_job_id,
    info_of,
    schedule_from_info,
)
from tests.feature_workers import Spawner
from tests.worker_procs import eventually, starts_by_job


def at(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def iso(stamp: float, tz: str = "UTC") -> str:
    return datetime.fromtimestamp(stamp, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %a")


# -- the cron parser ------------------------------------------------------------------------------


def test_cron_fields_ranges_lists_steps_and_names() -> None:
    cron = Cron("*/15 9-17 * * mon-fri")
    start = at("2026-11-27 16:50")  # a Friday
    times = []
    t = start
    for _ in range(3):
        nxt = cron.next_after(t)
        assert nxt is not None
        times.append(iso(nxt))
        t = nxt
    assert times == ["2026-11-27 17:00 Fri", "2026-11-27 17:15 Fri", "2026-11-27 17:30 Fri"]
    t = at("2026-11-27 17:45")
    assert iso(cron.next_after(t) or 0) == "2026-11-30 09:00 Mon"  # skips the weekend
    assert iso(Cron("5,35 */6 1 jan,jul *").next_after(at("2026-01-01 06:06")) or 0) == "2026-01-01 06:35 Thu"
    assert iso(Cron("0 0 * * 7").next_after(at("2026-11-27 00:00")) or 0) == "2026-11-29 00:00 Sun"
    assert iso(Cron("@daily").next_after(at("2026-11-27 00:00")) or 0) == "2026-11-28 00:00 Sat"


def test_cron_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    cron = Cron("0 12 13 * fri")  # the 13th or any Friday, as classic cron
    fires = []
    t = at("2026-11-01 00:00")
    for _ in range(4):
        t = cron.next_after(t) or 0
        fires.append(iso(t))
    assert fires == ["2026-11-06 12:00 Fri", "2026-11-13 12:00 Fri", "2026-11-20 12:00 Fri",
                     "2026-11-27 12:00 Fri"]
    assert iso(cron.next_after(at("2026-12-12 13:00")) or 0) == "2026-12-13 12:00 Sun"


def test_cron_in_a_time_zone_across_daylight_saving_changes() -> None:
    berlin = "Europe/Berlin"
    daily = Cron("0 6 * * *", tz=berlin)
    nxt = daily.next_after(at("2026-11-29 03:00"))
    assert iso(nxt or 0, berlin) == "2026-11-29 06:00 Sun" and iso(nxt or 0) == "2026-11-29 05:00 Sun"
    gap = Cron("30 2 * * *", tz=berlin)  # 02:30 does not exist on 2026-03-29 in Berlin
    fires = [gap.next_after(at("2026-03-28 12:00")) or 0]
    fires.append(gap.next_after(fires[0]) or 0)
    assert [iso(f, berlin) for f in fires] == ["2026-03-30 02:30 Mon", "2026-03-31 02:30 Tue"]
    repeated = Cron("30 2 * * *", tz=berlin)  # 02:30 happens twice on 2026-10-25: fires once
    first = repeated.next_after(at("2026-10-24 12:00")) or 0
    assert iso(first, berlin) == "2026-10-25 02:30 Sun"
    assert iso(repeated.next_after(first) or 0, berlin) == "2026-10-26 02:30 Mon"


def test_latest_fire_and_the_catch_up_policy() -> None:
    daily = Cron("0 6 * * *")
    now = at("2026-11-29 09:00")
    assert due_fire(daily, now, catch_up=7 * 86400) == at("2026-11-29 06:00")  # the most recent only
    assert due_fire(daily, now, catch_up=3600) is None  # older than the window: skipped
    assert due_fire(daily, at("2026-11-29 06:00"), catch_up=60) == at("2026-11-29 06:00")
    every = Every(seconds=60)
    assert every.latest_at_or_before(125.5) == 120.0 and every.next_after(125.5) == 180.0
    assert every.next_after(120.0) == 180.0


@pytest.mark.parametrize("bad", ["* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "*/0 * * * *",
                                 "5-1 * * * *", "a * * * *", "* * * foo *"])
def test_invalid_cron_lines_are_refused(bad: str) -> None:
    with pytest.raises(ScheduleError):
        Cron(bad)


def test_invalid_schedules_are_refused() -> None:
    with pytest.raises(ScheduleError):
        Cron("0 6 * * *", tz="Mars/Olympus")
    with pytest.raises(ScheduleError):
        Every(seconds=0)


def test_fire_ids_are_deterministic_and_valid() -> None:
    assert fire_job_id("tick", 1700000000.0) == "sched-tick-1700000000"
    dotted = fire_job_id("reports.daily", 1700000000)
    assert dotted == fire_job_id("reports.daily", 1700000000) != fire_job_id("reports_daily", 1700000000)
    assert dotted.startswith("sched-reports_daily_") and len(dotted) <= 64


def test_schedule_info_round_trip() -> None:
    info = info_of("reports.build", Cron("0 6 * * *", tz="Europe/Berlin", name="reports.daily", args=[1]))
    assert info == ScheduleInfo("reports.daily", "reports.build", "default", "0 6 * * *", "Europe/Berlin",
                                [1])
    rebuilt = schedule_from_info(info)
    assert isinstance(rebuilt, Cron)
    assert rebuilt.next_after(0) == Cron("0 6 * * *", "Europe/Berlin").next_after(0)
    assert isinstance(schedule_from_info(info_of("t", Every(5))), Every)


# -- exactly once across workers ---------------------------------------------------------------------


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


@pytest.fixture
def worker_tasks() -> str:
    return "tests.tasks_periodic"


@pytest.mark.redis_only
async def test_each_fire_time_runs_once_across_four_workers_and_one_catch_up(
    store: RedisJobStore, spawner: Spawner
) -> None:
    workers = await spawner.start(4)
    await asyncio.sleep(8)  # about eight fire times, each offered by four schedulers
    for proc in workers:
        proc.send(signal.SIGTERM)
    for proc in workers:
        assert await proc.wait() == 0
    stopped = await store.server_time()

    page = await store.list_jobs(name="periodic.tick", limit=1000)
    fires = sorted(int(job.id.rsplit("-", 1)[1]) for job in page.jobs)
    assert len(fires) >= 4 and len(set(fires)) == len(fires)  # ~8; fewer only on a starved machine
    assert all(job.id == fire_job_id("tick", int(job.id.rsplit("-", 1)[1])) for job in page.jobs)
    starts = starts_by_job(spawner.record)
    assert Counter(len(runs) for job_id, runs in starts.items()) == {1: len(starts)}  # no duplicate run
    assert {job.state for job in page.jobs} <= {JobState.DONE, JobState.ENQUEUED}
    schedules = await store.list_schedules()
    assert [(s.name, s.expression) for s in schedules] == [("tick", "every 1s")]

    # every worker down across several fire times: only the most recent missed one is caught up
    await asyncio.sleep(3.5)
    restart = await store.server_time()
    await spawner.start(1)

    async def caught_up() -> bool:
        jobs = (await store.list_jobs(name="periodic.tick", limit=1000)).jobs
        return any(int(job.id.rsplit("-", 1)[1]) >= restart - 1 for job in jobs)

    await eventually(caught_up, 20, "a fire after the restart")
    later = sorted(int(job.id.rsplit("-", 1)[1]) for job in (await store.list_jobs(name="periodic.tick",
                                                                                   limit=1000)).jobs)
    missed = [fire for fire in later if stopped < fire < restart - 1]
    assert missed == [], f"fire times while every worker was down were enqueued: {missed}"


# -- schedules from configuration, in process ---------------------------------------------------------


async def test_a_handler_scheduled_from_config_twice_with_other_args() -> None:
    from backend.config import Settings
    from backend.workers.handlers import HandlerRegistry
    from backend.workers.memory_job_store import MemoryJobStore
    from backend.workers.orchestration import Worker

    registry = HandlerRegistry()
    seen: list[int] = []

    @registry.task("cfg.tick")
    async def tick(n: int) -> int:
        seen.append(n)
        return n

    registry.schedule("cfg.tick", Every(seconds=1, name="tick-one", args=[1]))
    registry.schedule("cfg.tick", Every(seconds=1, name="tick-two", args=[2]))
    store = MemoryJobStore()
    worker = Worker(store, Settings(heartbeat_seconds=0.2, lease_seconds=2.0), registry, worker_id="w-cfg")
    await worker.start()
    try:
        await eventually(_true_when(lambda: {1, 2} <= set(seen)), 10, "both schedules fired")
    finally:
        await worker.stop()
    jobs = (await store.list_jobs(name="cfg.tick", limit=100)).jobs
    assert {job.id.rsplit("-", 1)[0] for job in jobs} == {"sched-tick-one", "sched-tick-two"}
    assert [(s.name, s.handler) for s in await store.list_schedules()] == [
        ("tick-one", "cfg.tick"), ("tick-two", "cfg.tick")]


def _true_when(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped
