"""An application of its own, as a new user writes one: a tasks module and a script that import
only `backend.jobs`, a real worker process started with BAGBOT_TASKS, a real Redis.

The script enqueues typed jobs through the sync facade and the async client, gets typed results
back, and a failing job raises JobFailed carrying the handler's error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker_procs import WorkerProcess

# worker, backend and CLI processes write under the test's prefix on the shared server
pytestmark = pytest.mark.usefixtures("delete_prefix_after")

TASKS = '''
from backend.jobs import task


@task("app.add")
async def add(x: int, y: int) -> int:
    return x + y


@task("app.words", max_attempts=1)
def words(text: str, *, upper: bool = False) -> list[str]:
    return (text.upper() if upper else text).split()


class PaymentDeclined(Exception):
    pass


@task("app.charge", max_attempts=1)
async def charge(cents: int) -> None:
    raise PaymentDeclined(f"card declined for {cents} cents")
'''

SCRIPT = '''
import asyncio
import json

from backend.jobs import Client, JobFailed

from tasks import add, charge, words


async def main() -> dict[str, object]:
    async with Client.from_env() as client:
        total = await (await add.enqueue(2, 3)).result(timeout=60)
        split = await (await client.enqueue(words, "a b c", upper=True)).result(timeout=60)
        try:
            await (await charge.enqueue(999)).result(timeout=60)
            failed = None
        except JobFailed as exc:
            failed = [exc.error.type, exc.error.message]
    with Client.sync_from_env() as jobs:
        sync_total = jobs.enqueue(add, 40, 2).result(timeout=60)
    return {"total": total, "split": split, "failed": failed, "sync_total": sync_total}


print(json.dumps(asyncio.run(main())))
'''


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    app = tmp_path / "myapp"
    app.mkdir()
    (app / "tasks.py").write_text(TASKS)
    (app / "script.py").write_text(SCRIPT)
    return app


@pytest.fixture
def env(redis_url: str, prefix: str) -> dict[str, str]:
    ours = ("BAGBOT_", "JOB_STORE", "REDIS_URL")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return base | {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix}


@pytest.fixture
def worker(app_dir: Path, env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(tmp_path, "app-worker", env | {"BAGBOT_TASKS": "tasks"}, cwd=app_dir)
    yield proc
    proc.stop()


async def test_an_app_of_its_own_gets_typed_results_and_job_failed(
    app_dir: Path, env: dict[str, str], worker: WorkerProcess
) -> None:
    run = subprocess.run(
        [sys.executable, "script.py"], cwd=app_dir, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr + worker.log()[-3000:]
    assert json.loads(run.stdout) == {
        "total": 5,
        "split": ["A", "B", "C"],
        "failed": ["PaymentDeclined", "card declined for 999 cents"],
        "sync_total": 42,
    }


def test_the_same_script_without_job_store_redis_refuses_saying_why(
    app_dir: Path, env: dict[str, str]
) -> None:
    bare = {k: v for k, v in env.items() if k not in ("JOB_STORE", "REDIS_URL")}
    run = subprocess.run(
        [sys.executable, "script.py"], cwd=app_dir, env=bare, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert "ClientConfigError" in run.stderr and "JOB_STORE=redis" in run.stderr
