"""`python -m backend.workers` as a process: exit codes, the memory-mode idle worker, no password in logs."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, in_ci
from tests.worker_procs import ROOT, WorkerProcess


def run_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith(("BAGBOT_", "JOB_STORE", "REDIS_URL"))}
    full.update(env)
    command = [sys.executable, "-m", "backend.workers"]
    return subprocess.run(command, cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_bad_env_value_exits_2_naming_the_variable() -> None:
    done = run_once({"JOB_STORE": "redis", "BAGBOT_CONCURRENCY": "lots"})
    assert done.returncode == 2
    assert "BAGBOT_CONCURRENCY" in done.stderr and "lots" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_redis_url_never_shows_its_password() -> None:
    done = run_once({"JOB_STORE": "redis", "REDIS_URL": "redis://:s3cretpw@redis.example:port/0"})
    assert done.returncode == 2
    assert "REDIS_URL" in done.stderr and "s3cretpw" not in done.stderr


def test_unimportable_tasks_module_exits_2() -> None:
    done = run_once({"JOB_STORE": "redis", "BAGBOT_TASKS": "tests.no_such_tasks_module"})
    assert done.returncode == 2
    assert "tests.no_such_tasks_module" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_memory_mode_worker_idles_and_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    proc = WorkerProcess(tmp_path, "idle", {"JOB_STORE": "memory"})
    try:
        await proc.wait_for_log("event=worker_idle")
        assert "JOB_STORE=memory" in proc.log()
        proc.send(sig)
        assert await proc.wait(30) == 0
        assert proc.log().count("event=worker_idle") == 1
    finally:
        proc.stop()


@pytest.mark.redis_only
async def test_logs_never_show_the_redis_password(tmp_path: Path) -> None:
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        if in_ci():
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    # a private server: set its password after start (RedisServer's readiness PING has none)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"CONFIG SET requirepass s3cretpw\r\n")
        assert sock.recv(64).startswith(b"+OK")
    url = f"redis://:s3cretpw@127.0.0.1:{server.port}/0"
    env = {"JOB_STORE": "redis", "REDIS_URL": url, "BAGBOT_PREFIX": "bbtest-pw"}
    proc = WorkerProcess(tmp_path, "auth", env)
    try:
        await proc.wait_for_log("✓ Worker registration successful")
        proc.send(signal.SIGTERM)
        assert await proc.wait(30) == 0
        log = proc.log()
        assert "url=redis://:***@127.0.0.1" in log and "s3cretpw" not in log
    finally:
        proc.stop()
        server.cleanup()


@pytest.mark.parametrize("value", ["soon", "-1", "0", "nan", "2"])  # "2": not above the 5 s heartbeat
def test_a_bad_unknown_handler_grace_exits_2_naming_it(value: str) -> None:
    done = run_once({"JOB_STORE": "redis", "BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS": value})
    assert done.returncode == 2
    assert "BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS" in done.stderr and "Traceback" not in done.stderr


def test_the_unknown_handler_grace_is_read_from_the_env() -> None:
    from backend.config import Settings

    assert Settings.from_env({}).unknown_handler_grace_seconds == 300.0
    env = {"BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS": "45", "BAGBOT_HEARTBEAT_SECONDS": "5"}
    assert Settings.from_env(env).unknown_handler_grace_seconds == 45.0
