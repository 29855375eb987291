"""The worker's parts one at a time, without a claim loop, on the real in-process store.

Each test builds only the parts it needs around one `WorkerState`, claims jobs itself and
checks what the part did in the store. Faults are injected by small store subclasses.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from backend.config import Settings
from backend.workers.execution import Execution, truncated_result
from backend.workers.handlers import HandlerRegistry, current_job, report_progress
from backend.workers.job_store import StoreUnavailableError
from backend.workers.leases import Leases
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Claim, Completion, JobError, JobSpec, JobState, ScheduleInfo, WorkerInfo
from backend.workers.orchestration import Worker
from backend.workers.outages import OutageLog
from backend.workers.progress import ProgressWriter
from backend.workers.reporting import Reporter
from backend.workers.rules import Backoff
from backend.workers.scheduler import Scheduler
from backend.workers.schedules import Every
from backend.workers.shutdown import Shutdown
from backend.workers.worker_state import Run, WorkerState

WORKER = "w-parts"
SETTINGS = Settings(heartbeat_seconds=0.1, lease_seconds=30.0, concurrency=2, shutdown_grace_seconds=0.0)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def until(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check)


async def state_of(store: MemoryJobStore, job_id: str) -> JobState | None:
    job = await store.get(job_id)
    return None if job is None else job.state


class FinishDownStore(MemoryJobStore):
    """A store whose finish step is unreachable while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.refused = asyncio.Event()

    async def finish(self, completions: Sequence[Completion]) -> list[JobState | None]:
        if self.down:
            self.refused.set()
            raise StoreUnavailableError("finish: connection refused")
        return await super().finish(completions)


class DeclareDownStore(MemoryJobStore):
    """A store that cannot take schedules while `down` is set."""

    down = True

    async def register_schedules(self, schedules: Sequence[ScheduleInfo]) -> None:
        if self.down:
            raise StoreUnavailableError("register_schedules: connection refused")
        await super().register_schedules(schedules)


@pytest.fixture
async def store() -> AsyncIterator[MemoryJobStore]:
    mem = MemoryJobStore()
    yield mem
    await mem.close()


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry()


@pytest.fixture
def state() -> WorkerState:
    return WorkerState(WORKER, OutageLog(WORKER, "memory"))


def info() -> WorkerInfo:
    return WorkerInfo(id=WORKER, host="test", pid=1, queues=["default"], concurrency=SETTINGS.concurrency)


async def claim_run(store: MemoryJobStore, spec: JobSpec) -> Run:
    """Enqueue `spec` and claim it, as the claim loop would."""
    await store.enqueue(spec)
    (job,) = await store.claim(WORKER, ["default"], 1, SETTINGS.lease_seconds)
    return Run(job=job, claim=Claim(job.queue, job.id, job.token or ""), started=time.monotonic())


async def forever() -> Completion:
    await asyncio.sleep(3600)
    raise AssertionError("not reached")


def start(state: WorkerState, reporter: Reporter, run: Run, work: Awaitable[Completion]) -> None:
    """Make `run` a running handler whose outcome goes to `reporter`, like Worker._start."""
    run.task = asyncio.ensure_future(work)
    run.task.add_done_callback(lambda task: reporter.run_done(run, task))
    state.runs[run.claim] = run


def execution(store: MemoryJobStore, registry: HandlerRegistry) -> Execution:
    return Execution(registry, SETTINGS, WORKER, ProgressWriter(store, WORKER))


# -- execution ------------------------------------------------------------------------------


async def test_execution_unknown_handler_asks_the_store_to_hand_the_job_back(
    store: MemoryJobStore, registry: HandlerRegistry
) -> None:
    run = await claim_run(store, JobSpec("no.such.handler", max_attempts=5))
    completion = await execution(store, registry).execute(run)
    assert completion.claim == run.claim and completion.error is not None
    assert completion.error.type == "UnknownHandler" and not completion.retryable
    assert completion.unknown_grace == Settings().unknown_handler_grace_seconds
    assert await store.finish([completion]) == [JobState.SCHEDULED]  # handed back, uncounted
    back = await store.get(run.job.id)
    assert back is not None and back.attempts == 0


async def test_execution_error_carries_the_handler_policy_for_the_store_to_apply(
    store: MemoryJobStore, registry: HandlerRegistry
) -> None:
    @registry.task("t.boom", max_attempts=1, backoff=Backoff(7.0, jitter=0), no_retry=(KeyError,))
    async def boom(kind: str) -> None:
        raise KeyError("gone") if kind == "key" else RuntimeError("flaky")

    parts = execution(store, registry)
    flaky = await parts.execute(await claim_run(store, JobSpec("t.boom", args=["runtime"])))
    assert flaky.error is not None and flaky.error.type == "RuntimeError" and flaky.error.message == "flaky"
    assert flaky.retryable and flaky.max_attempts == 1 and flaky.backoff == Backoff(7.0, jitter=0)
    assert "RuntimeError" in flaky.error.traceback
    gone = await parts.execute(await claim_run(store, JobSpec("t.boom", args=["key"])))
    assert gone.error is not None and gone.error.type == "KeyError" and not gone.retryable
    # the worker decided nothing: the store applies the handler's 1 attempt (the job set none)
    assert await store.finish([flaky]) == [JobState.FAILED]


async def test_execution_timeout_is_a_retryable_job_timeout(
    store: MemoryJobStore, registry: HandlerRegistry
) -> None:
    @registry.task("t.hang")
    async def hang() -> None:
        await asyncio.sleep(3600)

    run = await claim_run(store, JobSpec("t.hang", timeout=0.05))
    completion = await execution(store, registry).execute(run)
    assert completion.error is not None and completion.error.type == "JobTimeout"
    assert "within its timeout (0.05s)" in completion.error.message and completion.retryable


async def test_execution_checks_results(store: MemoryJobStore, registry: HandlerRegistry) -> None:
    @registry.task("t.opaque")
    def opaque() -> object:
        return object()

    @registry.task("t.big")
    async def big() -> str:
        return "x" * 5000

    parts = execution(store, registry)
    parts.max_result_bytes = 1000
    not_json = await parts.execute(await claim_run(store, JobSpec("t.opaque")))
    assert not_json.error is not None and not_json.error.type == "NonJsonResult" and not not_json.retryable
    huge = await parts.execute(await claim_run(store, JobSpec("t.big")))
    assert huge.error is None
    assert huge.result == truncated_result(b'"' + b"x" * 5000 + b'"', 1000)


async def test_execution_sync_handler_runs_in_a_thread_that_sees_its_job(
    store: MemoryJobStore, registry: HandlerRegistry
) -> None:
    @registry.task("t.whoami")
    def whoami(n: int) -> dict[str, object]:
        report_progress(0.5, "half way")
        return {"job": current_job().job_id, "n": n, "thread": threading.current_thread().name}

    parts = execution(store, registry)
    run = await claim_run(store, JobSpec("t.whoami", args=[3]))
    completion = await parts.execute(run)
    parts.close()
    assert completion.error is None
    assert completion.result["job"] == run.job.id and completion.result["n"] == 3
    assert completion.result["thread"].startswith("bagbot-")

    async def progress_saved() -> bool:
        job = await store.get(run.job.id)
        return job is not None and job.progress == 0.5 and job.progress_message == "half way"

    await eventually(progress_saved)


# -- reporting ------------------------------------------------------------------------------


async def test_reporter_sends_a_batch_and_counts_it(store: MemoryJobStore, state: WorkerState) -> None:
    reporter = Reporter(store, state)
    ok = await claim_run(store, JobSpec("t.any"))
    bad = await claim_run(store, JobSpec("t.any", max_attempts=1))
    reporter.add(Completion(ok.claim, 0.01, result={"ok": True}), ok.job)
    reporter.add(Completion(bad.claim, 0.01, error=JobError("Boom", "no")), bad.job)
    loop = asyncio.create_task(reporter.run())
    await until(lambda: state.counters.jobs_done + state.counters.jobs_failed == 2)
    assert await state_of(store, ok.job.id) is JobState.DONE
    assert await state_of(store, bad.job.id) is JobState.FAILED
    assert (state.counters.jobs_done, state.counters.jobs_failed) == (1, 1)
    assert reporter.unreported == 0
    state.closing = True
    reporter.wake()
    await asyncio.wait_for(loop, timeout=10)


async def test_reporter_keeps_outcomes_through_a_store_outage() -> None:
    store = FinishDownStore()
    state = WorkerState(WORKER, OutageLog(WORKER, "memory"))
    reporter = Reporter(store, state)
    run = await claim_run(store, JobSpec("t.any"))
    reporter.add(Completion(run.claim, 0.01, result=1), run.job)
    loop = asyncio.create_task(reporter.run())
    await asyncio.wait_for(store.refused.wait(), timeout=10)
    # kept, and its claim still held (once) so that heartbeats keep its lease
    assert reporter.claims() == [run.claim]
    assert state.outage.since is not None
    assert await state_of(store, run.job.id) is JobState.RUNNING
    store.down = False

    async def reported() -> bool:
        return await state_of(store, run.job.id) is JobState.DONE

    await eventually(reported)
    assert reporter.claims() == [] and state.counters.jobs_done == 1
    await until(lambda: state.outage.since is None)
    state.closing = True
    reporter.wake()
    await asyncio.wait_for(loop, timeout=10)
    await store.close()


async def test_reporter_collects_finished_runs(store: MemoryJobStore, state: WorkerState) -> None:
    reporter = Reporter(store, state)
    cancelled, stale = await claim_run(store, JobSpec("t.any")), await claim_run(store, JobSpec("t.any"))
    start(state, reporter, cancelled, forever())
    start(state, reporter, stale, forever())
    assert cancelled.task is not None and stale.task is not None
    cancelled.cancel_reason, stale.cancel_reason = "cancel", "stale"
    cancelled.task.cancel()
    stale.task.cancel()
    await asyncio.wait([cancelled.task, stale.task])
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert state.runs == {} and state.slot_freed.is_set()
    # the cancelled run is reported as cancelled; the stale one is not reported at all
    reported = [(o.completion.claim, o.completion.cancelled) for o in reporter.pending]
    assert reported == [(cancelled.claim, True)]


# -- leases ---------------------------------------------------------------------------------


def leases(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry, reporter: Reporter
) -> Leases:
    scheduler = Scheduler(store, SETTINGS, state, registry, ["default"])
    return Leases(store, SETTINGS, state, info(), registry, reporter, scheduler.declare)


async def test_leases_register_and_hold_every_unreported_claim(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry
) -> None:
    reporter = Reporter(store, state)
    parts = leases(store, state, registry, reporter)
    assert await parts.register() and state.registered
    assert [w.id for w in await store.list_workers()] == [WORKER]
    running, finished = await claim_run(store, JobSpec("t.any")), await claim_run(store, JobSpec("t.any"))
    start(state, reporter, running, forever())
    reporter.add(Completion(finished.claim, 0.0, result=None), finished.job)
    assert parts.claims_held() == [running.claim, finished.claim]
    await parts.beat()  # both current: nothing dropped
    assert running.cancel_reason is None and reporter.claims() == [finished.claim]
    assert running.task is not None
    running.task.cancel()
    await asyncio.wait([running.task])


async def test_leases_drop_a_stale_claim(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry
) -> None:
    reporter = Reporter(store, state)
    parts = leases(store, state, registry, reporter)
    running, finished = await claim_run(store, JobSpec("t.any")), await claim_run(store, JobSpec("t.any"))
    start(state, reporter, running, forever())
    reporter.add(Completion(finished.claim, 0.0, result=None), finished.job)
    # another actor takes both jobs away (as lease expiry would): these claims are stale now
    assert await store.release([running.claim, finished.claim]) == 2
    await parts.beat()
    assert running.cancel_reason == "stale" and running.task is not None
    await asyncio.wait([running.task])
    assert running.task.cancelled()
    await asyncio.sleep(0)
    assert state.runs == {} and reporter.pending == [] and state.counters.outcomes_discarded == 1


async def test_leases_cancel_a_job_on_request(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry
) -> None:
    reporter = Reporter(store, state)
    parts = leases(store, state, registry, reporter)
    run = await claim_run(store, JobSpec("t.any"))
    start(state, reporter, run, forever())
    await store.cancel(run.job.id)
    await parts.beat()
    assert run.cancel_reason == "cancel" and run.task is not None
    await asyncio.wait([run.task])
    await asyncio.sleep(0)
    assert [o.completion.cancelled for o in reporter.pending] == [True]
    assert await store.finish([reporter.pending[0].completion]) == [JobState.CANCELLED]


async def test_leases_housekeeping_declares_once_the_store_is_back(
    state: WorkerState, registry: HandlerRegistry
) -> None:
    store = DeclareDownStore()
    registry.schedule("t.tick", Every(60, name="tick"))
    scheduler = Scheduler(store, SETTINGS, state, registry, ["default"])
    parts = Leases(store, SETTINGS, state, info(), registry, Reporter(store, state), scheduler.declare)
    await parts.housekeeping()
    assert not scheduler.declared and state.outage.since is not None
    store.down = False
    await parts.housekeeping()
    assert scheduler.declared and [s.name for s in await store.list_schedules()] == ["tick"]
    await store.close()


# -- scheduler ------------------------------------------------------------------------------


async def test_scheduler_declares_limits(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry
) -> None:
    @registry.task("t.one_at_a_time", limit=1)
    async def one() -> None:
        return None

    await Scheduler(store, SETTINGS, state, registry, ["default"]).declare()
    await store.enqueue_many([JobSpec("t.one_at_a_time"), JobSpec("t.one_at_a_time")])
    assert len(await store.claim(WORKER, ["default"], 2, SETTINGS.lease_seconds)) == 1


async def test_scheduler_fires_a_due_schedule_once(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry
) -> None:
    registry.schedule("t.tick", Every(3600, name="hourly"))
    scheduler = Scheduler(store, SETTINGS, state, registry, ["default"])
    loop = asyncio.create_task(scheduler.run())

    async def fired() -> bool:
        return (await store.counts()).get("default", {}).get("enqueued", 0) >= 1

    await eventually(fired)
    state.stop.set()
    await asyncio.wait_for(loop, timeout=10)
    page = await store.list_jobs("default")
    assert [(job.name, job.id.startswith("sched-hourly-")) for job in page.jobs] == [("t.tick", True)]


# -- shutdown -------------------------------------------------------------------------------


def shutdown_parts(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry, settings: Settings = SETTINGS
) -> tuple[Shutdown, Reporter, Leases]:
    reporter = Reporter(store, state)
    lease = leases(store, state, registry, reporter)
    return Shutdown(store, settings, state, reporter, lease, execution(store, registry)), reporter, lease


async def test_shutdown_releases_leftover_runs(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry
) -> None:
    shutdown, reporter, lease = shutdown_parts(store, state, registry)
    assert await lease.register()
    run = await claim_run(store, JobSpec("t.any"))
    start(state, reporter, run, forever())
    heartbeat, reports = asyncio.create_task(lease.run()), asyncio.create_task(reporter.run())
    shutdown.request_stop()
    assert state.stop.is_set()
    await shutdown.run(heartbeat, reports, None)
    back = await store.get(run.job.id)
    assert back is not None and back.state is JobState.ENQUEUED and back.attempts == 0
    assert run.cancel_reason == "shutdown" and state.counters.jobs_released == 1
    assert heartbeat.done() and reports.done() and reporter.pending == []
    assert not state.registered and await store.list_workers() == []


async def test_shutdown_lets_running_jobs_finish_within_the_grace_period(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry
) -> None:
    settings = Settings(heartbeat_seconds=0.1, lease_seconds=30.0, shutdown_grace_seconds=60.0)
    shutdown, reporter, lease = shutdown_parts(store, state, registry, settings)
    run = await claim_run(store, JobSpec("t.any"))
    finish = asyncio.Event()

    async def finishes() -> Completion:
        await finish.wait()
        return Completion(run.claim, 0.0, result="finished")

    start(state, reporter, run, finishes())
    heartbeat, reports = asyncio.create_task(lease.run()), asyncio.create_task(reporter.run())
    stopping = asyncio.create_task(shutdown.run(heartbeat, reports, None))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the handler
    finish.set()
    await asyncio.wait_for(stopping, timeout=20)
    assert await state_of(store, run.job.id) is JobState.DONE
    assert state.counters.jobs_released == 0 and state.counters.jobs_done == 1


async def test_second_stop_request_hurries(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry
) -> None:
    shutdown, _, _ = shutdown_parts(store, state, registry)
    shutdown.request_stop()
    assert state.stop.is_set() and not state.hurry.is_set()
    shutdown.request_stop()
    assert state.hurry.is_set()


async def test_shutdown_retries_are_bounded(
    store: MemoryJobStore, state: WorkerState, registry: HandlerRegistry
) -> None:
    shutdown, _, _ = shutdown_parts(store, state, registry)
    calls: list[int] = []

    async def down() -> int:
        calls.append(1)
        raise StoreUnavailableError("refused")

    async def back_second_time() -> int:
        calls.append(2)
        if calls.count(2) == 1:
            raise StoreUnavailableError("refused")
        return 42

    assert await shutdown.retry_until("release", down, time.monotonic() + 0.3) is None
    assert 1 in calls and state.outage.since is not None
    assert await shutdown.retry_until("release", back_second_time, time.monotonic() + 20) == 42


# -- the composition ------------------------------------------------------------------------


async def test_worker_surface_delegates_to_its_parts(
    store: MemoryJobStore, registry: HandlerRegistry
) -> None:
    worker = Worker(store, SETTINGS, registry, worker_id=WORKER)
    worker.max_result_bytes = 123
    assert worker.execution.max_result_bytes == 123 and worker.max_result_bytes == 123
    worker.state.counters.jobs_done = 3
    assert (worker.jobs_done, worker.running, worker.registered) == (3, 0, False)
    assert (worker.id, worker.queues, worker.lease, worker.concurrency) == (WORKER, ["default"], 30.0, 2)
