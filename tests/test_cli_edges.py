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
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from backend.cli import app
from backend.ops.smoke_checks import CHECKLIST
from backend.workers.models import JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.api_server import BackendProcess
from tests.redis_server import RedisServer
from tests.test_cli import as_json, bagbot, make_env
from tests.worker_procs import WorkerProcess, eventually, worker_env

runner = CliRunner()

# worker, backend and CLI processes write under the test's prefix on the shared server
pytestmark = pytest.mark.usefixtures("delete_prefix_after")


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
    assert "cancel Cancel jobs; a running one is asked to stop. " in listing + " "
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


# -- usage errors in one line ------------------------------------------------------------------


@pytest.fixture
def env(redis_url: str, prefix: str) -> dict[str, str]:
    return make_env(JOB_STORE="redis", REDIS_URL=redis_url, BAGBOT_PREFIX=prefix)


@pytest.fixture
def backend(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[BackendProcess]:
    server = BackendProcess(tmp_path, {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def test_a_bad_queue_is_one_line_on_the_store_and_over_http(
    env: dict[str, str], backend: BackendProcess
) -> None:
    for via in ([], ["--url", backend.base_url]):
        result = bagbot(env, "enqueue", "bagbot.noop", "--queue", "bad queue", *via)
        assert result.returncode == 2
        assert "invalid queue name 'bad queue'" in one_error_line(result)
        listed = bagbot(env, "jobs", "list", "--queue", "bad queue", *via)
        assert listed.returncode == 2 and "invalid queue name" in one_error_line(listed)
    # what the server refuses comes back as `field: message`, not pydantic's list of dicts
    result = bagbot(env, "enqueue", "bagbot.noop", "--priority", "5000", "--url", backend.base_url)
    line = one_error_line(result)
    assert result.returncode == 2 and "priority: " in line and "{'type'" not in line and "[{" not in line


def test_a_url_without_scheme_or_with_api_says_how_to_write_it(
    env: dict[str, str], backend: BackendProcess
) -> None:
    host = backend.base_url.removeprefix("http://")
    result = bagbot(env, "jobs", "list", "--url", host)
    assert result.returncode == 2 and f"http://{host}" in one_error_line(result)
    result = bagbot(env, "queues", "--url", backend.base_url + "/api")
    line = one_error_line(result)
    assert result.returncode == 2 and "without /api" in line and f"use {backend.base_url}" in line
    result = bagbot(env, "queues", "--url", backend.base_url + "/backend")  # some other wrong path
    line = one_error_line(result)
    assert result.returncode == 4 and "answered 404" in line and "base URL" in line


def test_listing_an_unknown_queue_says_so(env: dict[str, str], backend: BackendProcess) -> None:
    assert bagbot(env, "enqueue", "bagbot.noop", "--queue", "real").returncode == 0
    for via in ([], ["--url", backend.base_url]):
        result = bagbot(env, "jobs", "list", "--queue", "nosuch", *via)
        line = one_error_line(result)
        assert result.returncode == 4 and "no queue 'nosuch'" in line and "real" in line
        known = bagbot(env, "jobs", "list", "--queue", "real", "--state", "failed", *via)
        assert known.returncode == 0  # a queue that exists, with nothing in that state: an empty table


def test_waiting_on_a_queue_no_worker_takes_says_so(env: dict[str, str], tmp_path: Path, redis_url: str,
                                                     prefix: str) -> None:
    worker = WorkerProcess(tmp_path, "default-worker", worker_env(redis_url, prefix, tmp_path / "rec"))
    try:
        asyncio.run(worker.wait_for_log("event=worker_registered"))
        result = bagbot(env, "enqueue", "bagbot.noop", "--queue", "nobody", "--wait", "--wait-timeout", "1")
        assert result.returncode == 1
        assert "warning: no live worker takes queue 'nobody' (live workers take: default)" in result.stderr
        assert "is still enqueued: no live worker takes queue 'nobody'" in result.stderr
        served = bagbot(env, "enqueue", "bagbot.noop", "--wait", "--wait-timeout", "60")
        assert served.returncode == 0 and "warning" not in served.stderr
    finally:
        worker.stop()


def test_run_at_needs_a_zone_on_the_command_line(env: dict[str, str], backend: BackendProcess) -> None:
    naive = bagbot(env, "enqueue", "bagbot.noop", "--run-at", "2030-01-01T09:00:00")
    assert naive.returncode == 2 and "has no time zone" in one_error_line(naive)
    for via in ([], ["--url", backend.base_url]):
        at = "2030-01-01T09:00:00+01:00"
        result = bagbot(env, "enqueue", "bagbot.noop", "--run-at", at, "--json", *via)
        job = as_json(result)
        assert job["state"] == "scheduled" and job["run_at"] == 1893484800.0  # 08:00 UTC


# -- smoke and check ----------------------------------------------------------------------------


def test_smoke_with_redis_down_prints_the_whole_checklist(tmp_path: Path) -> None:
    redis = RedisServer().start()
    server = BackendProcess(tmp_path, {"JOB_STORE": "redis", "REDIS_URL": redis.url, "BAGBOT_PREFIX": "smk"})
    try:
        server.wait_ready()
        redis.kill()
        result = bagbot(make_env(), "smoke", "--url", server.base_url, "--timeout", "3")
    finally:
        server.stop()
        redis.cleanup()
    assert result.returncode == 1, result.stdout + result.stderr
    marks = [line for line in result.stdout.splitlines() if line.startswith(("✓", "✗"))]
    assert len(marks) == len(CHECKLIST), result.stdout + result.stderr
    assert all(label in result.stdout for label in CHECKLIST)
    assert "✗ Redis service is running and healthy" in result.stdout
    assert "not run: no diagnostic job could be enqueued" in result.stdout and "FAILED" in result.stdout


def test_check_without_environment_says_what_it_checks(redis_url: str) -> None:
    bare = bagbot(make_env(), "check")
    assert "REDIS_URL is not set, so this checks the default redis://localhost:6379/0" in bare.stderr
    assert "JOB_STORE is 'memory'" in bare.stderr
    given = bagbot(make_env(JOB_STORE="redis", REDIS_URL=redis_url), "check")
    assert given.returncode == 0 and "note:" not in given.stderr
