"""render.yaml: the guide's three services with the facts Render needs, and start commands that really start.

The start commands run here the way Render runs them (a shell, PORT in the
environment), against the test Redis with a private key prefix, and are
stopped with SIGTERM as Render stops them on a deploy.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.redis_server import delete_prefix, free_port

ROOT = Path(__file__).resolve().parents[1]
SHUTDOWN_GRACE = 25.0  # Settings.shutdown_grace_seconds default
RENDER_MAX_SHUTDOWN_DELAY = 300  # Render's upper bound for maxShutdownDelaySeconds


@pytest.fixture(scope="module")
def blueprint() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "render.yaml").read_text())
    assert isinstance(data, dict)
    return data


def service(blueprint: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [s for s in blueprint["services"] if s.get("name") == name]
    assert len(matches) == 1, f"expected one service named {name}"
    return dict(matches[0])


def env_vars(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["key"]: item for item in svc.get("envVars", [])}


def test_exactly_the_guides_three_services(blueprint: dict[str, Any]) -> None:
    assert sorted(s["name"] for s in blueprint["services"]) == [
        "bagbot-backend",
        "bagbot-redis",
        "bagbot-worker",
    ]


def test_redis_never_evicts_and_is_private(blueprint: dict[str, Any]) -> None:
    redis = service(blueprint, "bagbot-redis")
    assert redis["type"] in ("keyvalue", "redis")
    assert redis["plan"] == "free"
    assert redis["maxmemoryPolicy"] == "noeviction"
    assert redis["ipAllowList"] == []


def test_backend_is_a_python_web_service_bound_to_port(blueprint: dict[str, Any]) -> None:
    backend = service(blueprint, "bagbot-backend")
    assert backend["type"] == "web"
    assert backend["runtime"] == "python"
    assert backend["plan"] == "free"
    assert backend["buildCommand"] == "pip install ."
    start = backend["startCommand"]
    assert "backend.api.app:app" in start or start.startswith("bagbot serve")
    if "uvicorn" in start:
        assert "--host 0.0.0.0" in start and "--port $PORT" in start
        # slow clients cannot hold connections: the head deadline, and idle keep-alive closed
        assert "--http backend.api.serving:TimedHttpToolsProtocol" in start
        assert "--timeout-keep-alive" in start
    # liveness, not readiness: a Redis outage must give 503s, not a restart loop
    assert backend["healthCheckPath"] == "/api/health"


def test_worker_runs_the_worker_module_with_a_shutdown_margin(blueprint: dict[str, Any]) -> None:
    worker = service(blueprint, "bagbot-worker")
    assert worker["type"] == "worker"
    assert worker["runtime"] == "python"
    assert worker["plan"] not in ("free", None)  # Render has no free plan for workers
    assert worker["buildCommand"] == "pip install ."
    assert worker["startCommand"] == "python -m backend.workers"
    delay = worker["maxShutdownDelaySeconds"]
    assert isinstance(delay, int) and SHUTDOWN_GRACE + 10 <= delay <= RENDER_MAX_SHUTDOWN_DELAY
    grace = env_vars(worker).get("BAGBOT_SHUTDOWN_GRACE_SECONDS")
    if grace is not None:
        assert float(grace["value"]) + 10 <= delay


@pytest.mark.parametrize("name", ["bagbot-backend", "bagbot-worker"])
def test_job_store_env_comes_from_the_redis_service(blueprint: dict[str, Any], name: str) -> None:
    redis = service(blueprint, "bagbot-redis")
    env = env_vars(service(blueprint, name))
    assert env["JOB_STORE"]["value"] == "redis"
    assert env["REDIS_URL"]["fromService"] == {
        "type": redis["type"],
        "name": "bagbot-redis",
        "property": "connectionString",
    }


def test_api_token_is_generated(blueprint: dict[str, Any]) -> None:
    env = env_vars(service(blueprint, "bagbot-backend"))
    assert env["BAGBOT_API_TOKEN"] == {"key": "BAGBOT_API_TOKEN", "generateValue": True}


def test_every_plain_env_value_is_accepted_by_settings(blueprint: dict[str, Any]) -> None:
    from backend.config import Settings

    for name in ("bagbot-backend", "bagbot-worker"):
        values = {k: str(v["value"]) for k, v in env_vars(service(blueprint, name)).items() if "value" in v}
        values["REDIS_URL"] = "redis://red-example:6379"
        values["BAGBOT_API_TOKEN"] = "generated-by-render"
        Settings.from_env(values)


# -- the start commands, run for real -------------------------------------------------------


def render_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """What Render gives the process: its env vars, PORT, and our Python on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAGBOT_", "JOB_STORE", "REDIS_URL"))}
    env.update(
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        JOB_STORE="redis",
        REDIS_URL=redis_url,
        BAGBOT_PREFIX=prefix,
        BAGBOT_API_TOKEN="test-token-123",
        BAGBOT_HEARTBEAT_SECONDS="1",
        BAGBOT_LEASE_SECONDS="5",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # `exec` so SIGTERM reaches the service itself, as with Render's process supervisor
    with log.open("wb") as sink:
        return subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"], cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )


def wait_for(
    predicate: Any, what: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {what}:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    pytest.fail(f"no {what} within {timeout}s:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"did not stop on SIGTERM:\n{log.read_text(errors='replace')}")


def health_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_backend_start_command_serves_health(
    blueprint: dict[str, Any], redis_url: str, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "backend.log"
    command = service(blueprint, "bagbot-backend")["startCommand"]
    proc = start(command, render_env(redis_url, prefix, PORT=str(port)), log)
    try:
        wait_for(lambda: health_ok(port), "answer on /api/health", proc, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ready", timeout=5) as response:
            assert response.status == 200
    finally:
        code = stop(proc, log)
        asyncio.run(delete_prefix(redis_url, prefix))  # the backend's keys (its reset-watch marker)
    # uvicorn shuts down cleanly, then re-raises the signal it caught: 0 or "killed by SIGTERM"
    assert code in (0, -signal.SIGTERM), log.read_text(errors="replace")
    assert "Traceback" not in log.read_text(errors="replace")


def test_worker_start_command_registers_and_stops_cleanly(
    blueprint: dict[str, Any], redis_url: str, prefix: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    command = service(blueprint, "bagbot-worker")["startCommand"]
    proc = start(command, render_env(redis_url, prefix), log)
    try:
        wait_for(
            lambda: "Worker registration successful" in log.read_text(errors="replace"),
            "registration",
            proc,
            log,
        )
    finally:
        code = stop(proc, log)
        asyncio.run(delete_prefix(redis_url, prefix))  # the worker's keys (its reset-watch epoch)
    assert code == 0, log.read_text(errors="replace")


def test_rollback_to_memory_leaves_the_worker_idle_not_looping(
    blueprint: dict[str, Any], redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """The guide's quick rollback sets JOB_STORE=memory on both services: the worker must stay up, quiet."""
    log = tmp_path / "worker-memory.log"
    command = service(blueprint, "bagbot-worker")["startCommand"]
    proc = start(command, render_env(redis_url, prefix, JOB_STORE="memory"), log)
    try:
        wait_for(lambda: "idle" in log.read_text(errors="replace"), "idle notice", proc, log)
        time.sleep(1.0)
        assert proc.poll() is None, "the idle worker exited: Render would restart it in a loop"
    finally:
        code = stop(proc, log)
    assert code == 0
    assert log.read_text(errors="replace").count("worker_idle") == 1
