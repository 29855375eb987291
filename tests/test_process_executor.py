"""`executor="process"` in real worker processes on a real Redis.

A handler that holds the GIL runs in a child process, so the worker's loop keeps renewing its
lease (2 s here) and no other worker starts the job; a timeout kills the child; a killed worker
takes its children with it; errors, progress and results cross the process boundary intact.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.feature_workers import Spawner, wait_state
from tests.worker_procs import eventually, read_records

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]


@pytest.fixture
def store(redis_store: RedisJobStore) -> RedisJobStore:
    return redis_store


@pytest.fixture
def worker_tasks() -> str:
    return "tests.tasks_faults"


def alive(pid: int) -> bool:
    """A zombie (dead, not yet reaped by whoever inherited it) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_of(spawner: Spawner, job_id: str, event: str = "start") -> list[int]:
    return [r.pid for r in read_records(spawner.record) if r.job_id == job_id and r.event == event]


async def test_a_gil_holding_handler_keeps_its_lease_and_runs_once(
    store: RedisJobStore, spawner: Spawner
) -> None:
    """With the thread executor the same job (faults.gil_thread) freezes the loop for longer than
    the 2 s lease, and the second worker starts it again while the first is still on it."""
    workers = await spawner.start(2, BAGBOT_CONCURRENCY="2")
    job = await store.enqueue(JobSpec("faults.gil_process", args=[6.0], max_attempts=3))
    final = await wait_state(store, job.id, JobState.DONE, JobState.FAILED, timeout=120)
    assert final.state is JobState.DONE and final.attempts == 1, final.last_error
    assert final.progress == 1.0
    assert len(pids_of(spawner, job.id)) == 1 and len(pids_of(spawner, job.id, "end")) == 1
    child = pids_of(spawner, job.id)[0]
    assert child not in {w.pid for w in workers}  # it ran in a child process
    logs = "".join(w.log() for w in workers)
    assert "job_lease_lost" not in logs and "job_outcome_discarded" not in logs
    for w in workers:
        w.send(signal.SIGTERM)
    assert [await w.wait() for w in workers] == [0, 0]


async def test_a_process_handler_over_its_timeout_is_killed(store: RedisJobStore, spawner: Spawner) -> None:
    (worker,) = await spawner.start(1)
    job = await store.enqueue(JobSpec("faults.process_forever", max_attempts=2))
    final = await wait_state(store, job.id, JobState.FAILED, timeout=60)
    assert final.attempts == 2
    assert final.last_error is not None and final.last_error.type == "JobTimeout"
    children = pids_of(spawner, job.id)
    assert len(children) == 2 and worker.pid not in children
    assert not any(alive(pid) for pid in children)  # killed, not left spinning
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_errors_progress_and_results_cross_the_process_boundary(
    store: RedisJobStore, spawner: Spawner
) -> None:
    (worker,) = await spawner.start(1, BAGBOT_CONCURRENCY="4")
    ok = await store.enqueue(JobSpec("faults.process_echo", args=[7]))
    permanent = await store.enqueue(JobSpec("faults.process_echo", args=[1], kwargs={"fail": "permanent"}))
    exit_spec = JobSpec("faults.process_echo", args=[1], kwargs={"fail": "exit"}, max_attempts=1)
    exits = await store.enqueue(exit_spec)
    done = await wait_state(store, ok.id, JobState.DONE, JobState.FAILED)
    assert done.result == {"value": 7, "attempt": 1, "job": ok.id} and done.progress == 0.5
    failed = await wait_state(store, permanent.id, JobState.FAILED, JobState.DONE)
    assert failed.attempts == 1 and failed.last_error is not None  # no_retry is honoured in the child
    assert failed.last_error.type == "Permanent" and "do not retry me" in failed.last_error.message
    assert "Permanent" in failed.last_error.traceback
    exited = await wait_state(store, exits.id, JobState.FAILED, JobState.DONE)
    assert exited.last_error is not None and exited.last_error.type == "SystemExit"
    assert "a handler's print goes to stderr" in worker.log()
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_killed_worker_takes_its_child_with_it(store: RedisJobStore, spawner: Spawner) -> None:
    """Else the child would run on while the job's lease expires and another worker reruns it."""
    (worker,) = await spawner.start(1)
    job = await store.enqueue(JobSpec("faults.gil_process", args=[30.0]))
    await eventually(lambda: _has_start(spawner, job.id), 30, "child started")
    (child,) = pids_of(spawner, job.id)
    worker.proc.kill()
    await worker.wait()
    await eventually(lambda: _gone(child), 10, "child killed with its worker")


async def _has_start(spawner: Spawner, job_id: str) -> bool:
    return bool(pids_of(spawner, job_id))


async def _gone(pid: int) -> bool:
    return not alive(pid)


async def test_cancel_and_shutdown_kill_the_child(store: RedisJobStore, spawner: Spawner) -> None:
    """Unlike a thread, a cancelled or released process job does not run on behind its outcome."""
    (worker,) = await spawner.start(1, BAGBOT_CONCURRENCY="2", BAGBOT_SHUTDOWN_GRACE_SECONDS="0.5")
    cancelled = await store.enqueue(JobSpec("faults.gil_process", args=[60.0]))
    released = await store.enqueue(JobSpec("faults.gil_process", args=[60.0]))
    for job in (cancelled, released):
        await eventually(lambda job_id=job.id: _has_start(spawner, job_id), 30, "child started")
    await store.cancel(cancelled.id)
    assert (await wait_state(store, cancelled.id, JobState.CANCELLED, timeout=20)).attempts == 1
    await eventually(lambda: _gone(pids_of(spawner, cancelled.id)[0]), 10, "cancelled child killed")
    assert "child process killed" in worker.log()
    worker.send(signal.SIGTERM)
    assert await worker.wait(30) == 0
    after = await store.get(released.id)
    assert after is not None and after.state is JobState.ENQUEUED and after.attempts == 0
    assert not alive(pids_of(spawner, released.id)[0])
    assert pids_of(spawner, cancelled.id, "end") == [] and pids_of(spawner, released.id, "end") == []


async def test_a_dependant_in_a_child_process_reads_its_parents_results(
    store: RedisJobStore, spawner: Spawner
) -> None:
    (worker,) = await spawner.start(1, BAGBOT_CONCURRENCY="2")
    parent = await store.enqueue(JobSpec("faults.process_echo", args=[7]))
    child = await store.enqueue(JobSpec("faults.process_echo", args=[8], depends_on=[parent.id]))
    done = await wait_state(store, child.id, JobState.DONE, JobState.FAILED, JobState.CANCELLED)
    assert done.result["parents"] == {parent.id: {"value": 7, "attempt": 1, "job": parent.id}}
    assert done.result["counts"] == {"done": 1, "failed": 0, "cancelled": 0}
    worker.send(signal.SIGTERM)
    assert await worker.wait() == 0
