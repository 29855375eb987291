"""Shared set-up for the feature tests: a Redis store on the test's prefix and real worker
processes running the feature handlers (tests/tasks_features.py)."""

from __future__ import annotations

from pathlib import Path

from backend.workers.models import Job, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.worker_procs import WorkerProcess, eventually, worker_env


class Spawner:
    """Starts worker processes (`python -m backend.workers`) and stops them all at teardown."""

    def __init__(self, tmp: Path, redis_url: str, prefix: str, tasks: str = "tests.tasks_features") -> None:
        self.tmp, self.redis_url, self.prefix, self.tasks = tmp, redis_url, prefix, tasks
        self.record = tmp / "record.txt"
        self.procs: list[WorkerProcess] = []

    async def start(self, count: int = 1, **env: str) -> list[WorkerProcess]:
        new = []
        for _ in range(count):
            full = worker_env(self.redis_url, self.prefix, self.record, BAGBOT_TASKS=self.tasks, **env)
            new.append(WorkerProcess(self.tmp, f"worker{len(self.procs)}", full))
            self.procs.append(new[-1])
        for proc in new:
            await proc.wait_for_log("✓ Worker registration successful")
        return new

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


async def wait_state(store: RedisJobStore, job_id: str, *states: JobState, timeout: float = 30.0) -> Job:
    async def reached() -> bool:
        job = await store.get(job_id)
        return job is not None and job.state in states

    await eventually(reached, timeout, f"job {job_id} in {states}")
    job = await store.get(job_id)
    assert job is not None
    return job
