"""The guide's post-deployment check, locally: backend and worker as separate processes on a real Redis.

The backend runs no worker (JOB_STORE=redis); the worker process runs the job;
the backend's /api/metrics shows the worker's runs because both read and
write the same counters in Redis. Then scripts/test_metrics_endpoint.py
prints the five ✓ lines, exactly as the guide expects.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.api.metrics import GUIDE_METRICS
from tests.api_server import ROOT, BackendProcess, delete_prefix, worker_process

TOKEN = "e2e-token-0123456789"

pytestmark = [pytest.mark.slow, pytest.mark.redis_only]


def wait_for(client: httpx.Client, job_id: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] == state:
            return job
        assert time.monotonic() < deadline, f"job stuck in {job['state']}: {job}"
        time.sleep(0.1)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_backend_metrics_show_the_runs_of_a_separate_worker(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    env = {
        "JOB_STORE": "redis",
        "REDIS_URL": redis_url,
        "BAGBOT_PREFIX": prefix,
        "BAGBOT_API_TOKEN": TOKEN,
        "BAGBOT_HEARTBEAT_SECONDS": "0.5",
        "BAGBOT_LEASE_SECONDS": "5",
    }
    backend = BackendProcess(tmp_path, env)
    worker = worker_process(tmp_path, env)
    try:
        backend.wait_ready()
        worker.wait_for_log("Worker registration successful")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=backend.base_url, timeout=10) as client:
            assert client.get("/api/ready").json()["policy_ok"] is True
            response = client.post(
                "/api/jobs", json={"name": "bagbot.fail", "kwargs": {"times": 1}}, headers=auth
            )
            assert response.status_code == 201, response.text
            job = wait_for(client, response.json()["id"], "done")
            assert job["attempts"] == 2  # failed once, retried, then succeeded
            assert job["last_error"] is not None

            (info,) = client.get("/api/workers").json()["workers"]
            assert info["pid"] == worker.proc.pid  # the separate process, not the backend
            assert info["pid"] != backend.proc.pid

            got = samples(client.get("/api/metrics").text)
            labels = {"queue": "default", "name": "bagbot.fail"}

            def value(metric: str, **extra: str) -> float | None:
                return got.get((metric, frozenset({**labels, **extra}.items())))

            assert value("bagbot_job_enqueue_total") == 1
            assert value("bagbot_job_run_total", outcome="retry") == 1
            assert value("bagbot_job_run_total", outcome="done") == 1
            assert value("bagbot_retry_scheduled_total") == 1
            assert value("bagbot_job_run_duration_seconds_count") == 2
            assert got.get(("bagbot_heartbeat_age_seconds", frozenset({("worker", info["id"])}))) is not None
            assert got.get(("bagbot_workers", frozenset())) == 1

        checker = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "test_metrics_endpoint.py"), backend.base_url],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"},
        )
        assert checker.returncode == 0, checker.stdout + checker.stderr
        assert checker.stdout.splitlines() == [f"✓ Found metric: {name}" for name in GUIDE_METRICS]
    finally:
        worker_code = worker.stop()
        backend_code = backend.stop()
        asyncio.run(delete_prefix(redis_url, prefix))
    assert worker_code == 0, worker.log()[-3000:]
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: -15 is its clean exit.
    assert backend_code in (0, -15), backend.log()[-3000:]
    assert "Application shutdown complete" in backend.log()
    assert "separate worker processes" in backend.log()
    assert "Traceback" not in backend.log()
