"""The CLI's rough edges a new user hit (issue 15), each tried as they tried it.

Flags shown as taking values, a help summary cut mid-sentence, pydantic's error list for a bad
queue, a URL without its scheme or with /api, an unknown queue listed as an empty table, a job
waited for on a queue no worker takes, smoke stopping at one line with Redis down, an idle
worker warning about threads at SIGTERM, and `check` silently checking localhost.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.cli import app
from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.worker_procs import WorkerProcess, eventually, worker_env

runner = CliRunner()


def flat(text: str) -> str:
    """Help text without the box drawing and the wrapping, to read sentences whole."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# -- the worker at SIGTERM --------------------------------------------------------------------

SYNC_TASKS = '''
import time

from backend.jobs import task


@task("edges.sync")
def work(seconds: float) -> float:
    time.sleep(seconds)  # long enough that all 8 threads of the pool are in use at once
    return seconds
'''


@pytest.fixture
def sync_worker(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[WorkerProcess]:
    app_dir = tmp_path / "edges_app"
    app_dir.mkdir()
    (app_dir / "edges_tasks.py").write_text(SYNC_TASKS)
    env = worker_env(redis_url, prefix, tmp_path / "record", BAGBOT_TASKS="edges_tasks", BAGBOT_CONCURRENCY="8")
    proc = WorkerProcess(tmp_path, "edges-worker", env, cwd=app_dir)
    yield proc
    proc.stop()


async def test_sigterm_with_nothing_running_does_not_warn_about_threads(
    redis_store: RedisJobStore, sync_worker: WorkerProcess
) -> None:
    jobs = await redis_store.enqueue_many([JobSpec("edges.sync", args=[0.3]) for _ in range(24)])

    async def all_done() -> bool:
        got = [await redis_store.get(job.id) for job in jobs]
        return all(j is not None and j.state is JobState.DONE for j in got)

    await eventually(all_done, 60, "every sync job done")
    await asyncio.sleep(0.2)  # the worker is idle now: every sync handler has returned
    sync_worker.send(signal.SIGTERM)
    assert await sync_worker.wait(30) == 0
    assert "event=worker_stopped" in sync_worker.log() or "stopped" in sync_worker.log()
    assert "exit_with_running_threads" not in sync_worker.log(), sync_worker.log()[-2000:]
