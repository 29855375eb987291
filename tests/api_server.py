"""Real service processes for the API's end-to-end tests: the backend under uvicorn, and workers.

Output goes to a file (a pipe nobody reads could fill and block the child),
and the environment is cleaned of any BAGBOT_*/JOB_STORE/REDIS_URL of the
caller, so a test only ever talks to the Redis and prefix it chose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.redis_server import delete_prefix, free_port

__all__ = ["delete_prefix"]  # tests import it from here with the other server helpers

ROOT = Path(__file__).resolve().parent.parent


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAGBOT_", "JOB_STORE", "REDIS_URL"))}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServiceProcess:
    """One child process with its log in `tmp/<name>.log`."""

    def __init__(self, tmp: Path, name: str, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = tmp / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(args), cwd=ROOT, env=clean_env(env), stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {text!r}:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it hangs: never leave a child behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class BackendProcess(ServiceProcess):
    """`uvicorn backend.api.app:app` on a free port of 127.0.0.1."""

    def __init__(self, tmp: Path, env: Mapping[str, str], name: str = "backend") -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            "backend.api.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--http",
            "backend.api.serving:TimedHttpToolsProtocol",  # as render.yaml and `bagbot serve` run it
            "--log-level",
            "info",
        ]
        super().__init__(tmp, name, args, env)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /api/health answers (the lifespan has finished starting up)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.base_url + "/api/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"backend exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"backend did not answer on {self.base_url}:\n{self.log()[-3000:]}")
            time.sleep(0.1)


def worker_process(tmp: Path, env: Mapping[str, str], name: str = "worker") -> ServiceProcess:
    """`python -m backend.workers`, as the worker service runs it."""
    return ServiceProcess(tmp, name, [sys.executable, "-m", "backend.workers"], env)
