"""Real worker processes for the worker tests: start, signal, read their logs and records."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from backend.workers.job_store import StoreUnavailableError

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """`python -m backend.workers` in a subprocess, its output in a file (a pipe could fill and block it)."""

    def __init__(self, tmp: Path, name: str, env: Mapping[str, str], cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = tmp / f"{name}.log"
        self._log = self.log_path.open("wb")
        ours = ("BAGBOT_", "JOB_STORE", "REDIS_URL")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.workers"],
            cwd=cwd or ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"{self.name} exited ({code}) before logging {text!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {text!r}:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.05)

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not exit:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.05)
        self._log.close()
        return self.proc.returncode

    def stop(self) -> None:
        """Test teardown: never leave a worker behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def worker_env(redis_url: str, prefix: str, record: Path, **extra: str) -> dict[str, str]:
    env = {
        "JOB_STORE": "redis",
        "REDIS_URL": redis_url,
        "BAGBOT_PREFIX": prefix,
        "BAGBOT_TASKS": "tests.tasks_for_tests",
        "BAGBOT_HEARTBEAT_SECONDS": "0.5",
        "BAGBOT_LEASE_SECONDS": "2",
        "BAGBOT_TEST_RECORD": str(record),
    }
    env.update(extra)
    return env


@dataclass(frozen=True, slots=True)
class Execution:
    job_id: str
    pid: int
    attempt: int
    event: str
    at: float


def read_records(path: Path) -> list[Execution]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        job_id, pid, attempt, event, at = line.split()
        out.append(Execution(job_id, int(pid), int(attempt), event, float(at)))
    return out


def starts_by_job(path: Path) -> dict[str, list[Execution]]:
    by_job: dict[str, list[Execution]] = defaultdict(list)
    for ex in read_records(path):
        if ex.event == "start":
            by_job[ex.job_id].append(ex)
    return by_job


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await _try(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(0.1)


async def _try(check: Callable[[], Awaitable[bool]]) -> bool:
    """A check that reads Redis right after a restart may hit a dropped connection: just look again."""
    try:
        return await check()
    except StoreUnavailableError:
        return False
