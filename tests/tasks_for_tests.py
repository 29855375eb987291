"""Handlers for the worker subprocess tests (BAGBOT_TASKS=tests.tasks_for_tests).

`record` appends one line per execution to the file named by BAGBOT_TEST_RECORD,
so a test can count how often each job really ran and in which process.
O_APPEND writes of one short line are atomic, so concurrent workers never
interleave their lines.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from backend.workers.handlers import current_job, task


def _append(line: str) -> None:
    path = os.environ["BAGBOT_TEST_RECORD"]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _mark(event: str) -> None:
    job = current_job()
    _append(f"{job.job_id} {os.getpid()} {job.attempt} {event} {time.time():.6f}")


@task("tests.record")
async def record(sleep: float = 0.0) -> int:
    """Record the execution at its start, then optionally sleep (so a kill can catch it in flight)."""
    _mark("start")
    if sleep:
        await asyncio.sleep(sleep)
    return os.getpid()


@task("tests.sleeper")
async def sleeper(seconds: float) -> str:
    """A long job, recorded when it starts and when it ends."""
    _mark("start")
    await asyncio.sleep(seconds)
    _mark("end")
    return "slept"


@task("tests.flaky")
async def flaky(times: int = 1) -> int:
    """Records each attempt with its time, raises while attempt <= times."""
    _mark("start")
    attempt = current_job().attempt
    if attempt <= times:
        raise RuntimeError(f"planned failure {attempt}/{times}")
    return attempt


@task("tests.cpu")
def cpu(n: int = 200_000) -> int:
    """A sync, CPU-bound handler: runs in the worker's thread pool."""
    _mark("start")
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


@task("tests.die")
async def die() -> None:
    """Kills its own worker process, as a poison job that crashes every worker it lands on."""
    _mark("start")
    os.kill(os.getpid(), signal.SIGKILL)


@task("tests.batch_done")
async def batch_done(sleep: float = 0.0) -> dict[str, int]:
    """A batch callback: records its start with the counts it was given (event
    cb-<done>-<failed>-<cancelled>), then optionally sleeps (so a kill can catch it in flight)."""
    counts = current_job().parent_counts
    _mark(f"cb-{counts['done']}-{counts['failed']}-{counts['cancelled']}")
    if sleep:
        await asyncio.sleep(sleep)
    return counts
