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
from typing import Any

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


# -- help -----------------------------------------------------------------------------------


def every_command() -> list[list[str]]:
    """The argv of every command and group, from the app itself (a new command is covered too)."""
    import typer.main

    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:  # typer's own (vendored) click types
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_no_flag_is_shown_as_taking_a_value() -> None:
    commands = every_command()
    assert ["jobs", "cancel"] in commands and ["enqueue"] in commands and len(commands) > 10
    for argv in commands:
        result = runner.invoke(app, [*argv, "--help"])
        assert result.exit_code == 0, (argv, result.output)
        assert "<bool>" not in result.output, (argv, result.output)
        assert "--help" in result.output
    wait_line = next(line for line in runner.invoke(app, ["enqueue", "--help"]).output.splitlines()
                     if "--wait " in line)
    assert "<" not in wait_line  # `--wait` takes no value


def test_the_jobs_summary_of_cancel_is_a_whole_sentence() -> None:
    listing = flat(runner.invoke(app, ["jobs", "--help"]).output)
    assert "cancel Cancel a job; a running one is asked to stop. " in listing + " "
    detail = flat(runner.invoke(app, ["jobs", "cancel", "--help"]).output)
    assert "Running: its worker stops it within a heartbeat, and it ends cancelled." in detail


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
    env = worker_env(
        redis_url, prefix, tmp_path / "record", BAGBOT_TASKS="edges_tasks", BAGBOT_CONCURRENCY="8"
    )
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
