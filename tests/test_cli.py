"""The real `bagbot` command, run as a subprocess against a real Redis with a private key prefix."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.redis_server import RedisServer, delete_prefix, free_port, start_server

ROOT = Path(__file__).resolve().parents[1]


def make_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAGBOT_", "JOB_STORE", "REDIS_URL"))}
    env.update(PYTHONUNBUFFERED="1", BAGBOT_HEARTBEAT_SECONDS="1", BAGBOT_LEASE_SECONDS="5")
    env.update(values)
    return env


def bagbot(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture
def env(redis_url: str, prefix: str) -> Iterator[dict[str, str]]:
    """The CLI's environment on the shared server under this test's prefix; its keys are deleted after
    (conftest's no_keys_left_behind checks that none are left)."""
    yield make_env(JOB_STORE="redis", REDIS_URL=redis_url, BAGBOT_PREFIX=prefix)
    asyncio.run(delete_prefix(redis_url, prefix))


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server of our own, for checks that change its configuration."""
    server = start_server()
    try:
        yield server
    finally:
        server.cleanup()


class Service:
    """A `bagbot` subprocess (serve or worker) with its log in a file."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "backend.cli", *args],
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, predicate: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"exited {self.proc.returncode} before {what}:\n{self.text()}")
            time.sleep(0.1)
        pytest.fail(f"no {what} within {timeout}s:\n{self.text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Service]:
    service = Service(env, ["worker"], tmp_path / "worker.log")
    try:
        service.wait_until(lambda: "Worker registration successful" in service.text(), "worker registration")
        yield service
    finally:
        assert service.stop() == 0, service.text()


def health_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# -- help and usage ------------------------------------------------------------------------------


def test_help_names_every_command_and_the_exit_codes() -> None:
    result = bagbot(make_env(COLUMNS="200"), "--help")
    assert result.returncode == 0
    for command in ("serve", "worker", "enqueue", "jobs", "queues", "workers", "purge", "check", "smoke"):
        assert command in result.stdout
    assert "Exit codes" in result.stdout


def test_memory_store_without_url_is_a_usage_error() -> None:
    result = bagbot(make_env(JOB_STORE="memory"), "jobs", "list")
    assert result.returncode == 2
    assert "--url" in result.stderr


def test_bad_configuration_is_a_usage_error_naming_the_variable() -> None:
    result = bagbot(make_env(JOB_STORE="redis", BAGBOT_CONCURRENCY="lots"), "queues")
    assert result.returncode == 2
    assert "BAGBOT_CONCURRENCY" in result.stderr


def test_unreachable_redis_exits_3_without_showing_the_password() -> None:
    url = f"redis://:pw-secret99@127.0.0.1:{free_port()}/0"
    result = bagbot(make_env(JOB_STORE="redis", REDIS_URL=url), "queues")
    assert result.returncode == 3, result.stderr
    assert "unavailable" in result.stderr and "pw-secret99" not in result.stdout + result.stderr


# -- jobs through the store ------------------------------------------------------------------------


def test_enqueue_parses_args_as_json_when_they_parse(env: dict[str, str]) -> None:
    job = as_json(
        bagbot(env, "enqueue", "bagbot.echo", "1", "true", '{"a": [1]}', "hello", "--kwargs", '{"x": 2}',
               "--delay", "3600", "--priority", "5", "--max-attempts", "4", "--queue", "cli", "--json")
    )  # fmt: skip
    assert job["args"] == [1, True, {"a": [1]}, "hello"]
    assert job["kwargs"] == {"x": 2}
    assert (job["state"], job["queue"], job["priority"], job["max_attempts"]) == ("scheduled", "cli", 5, 4)


def test_enqueue_rejects_kwargs_that_are_not_a_json_object(env: dict[str, str]) -> None:
    assert bagbot(env, "enqueue", "bagbot.noop", "--kwargs", "{nope").returncode == 2
    assert bagbot(env, "enqueue", "bagbot.noop", "--kwargs", "[1]").returncode == 2


def test_show_list_cancel_retry_and_their_exit_codes(env: dict[str, str]) -> None:
    job = as_json(bagbot(env, "enqueue", "bagbot.noop", "--delay", "3600", "--id", "cli-job-1", "--json"))
    assert job["id"] == "cli-job-1"
    again = as_json(bagbot(env, "enqueue", "bagbot.noop", "--delay", "3600", "--id", "cli-job-1", "--json"))
    assert again["created_at"] == job["created_at"]  # same id: the same job, not a second one

    shown = as_json(bagbot(env, "jobs", "show", "cli-job-1", "--json"))
    assert shown["state"] == "scheduled"
    page = as_json(bagbot(env, "jobs", "list", "--state", "scheduled", "--json"))
    assert [j["id"] for j in page["jobs"]] == ["cli-job-1"]
    assert page["cursor"] is None

    cancelled = as_json(bagbot(env, "jobs", "cancel", "cli-job-1", "--json"))
    assert cancelled["state"] == "cancelled"
    refused = bagbot(env, "jobs", "cancel", "cli-job-1")
    assert refused.returncode == 5 and "cancelled" in refused.stderr

    retried = as_json(bagbot(env, "jobs", "retry", "cli-job-1", "--json"))
    assert (retried["state"], retried["attempts"]) == ("enqueued", 0)
    assert bagbot(env, "jobs", "retry", "cli-job-1").returncode == 5

    assert bagbot(env, "jobs", "show", "no-such-job").returncode == 4
    assert bagbot(env, "jobs", "cancel", "no-such-job").returncode == 4
    assert bagbot(env, "jobs", "list", "--state", "bogus").returncode == 2

    counts = as_json(bagbot(env, "queues", "--json"))
    assert counts["default"]["enqueued"] == 1
    assert set(counts["default"]) == {"scheduled", "enqueued", "running", "retry_scheduled", "done", "failed",
                                      "cancelled"}  # fmt: skip

    table = bagbot(env, "jobs", "list")
    assert table.returncode == 0 and "cli-job-1" in table.stdout


def test_purge_asks_first_and_deletes_only_terminal_jobs(env: dict[str, str]) -> None:
    as_json(bagbot(env, "enqueue", "bagbot.noop", "--delay", "3600", "--id", "purge-me", "--json"))
    as_json(bagbot(env, "enqueue", "bagbot.noop", "--delay", "3600", "--id", "keep-me", "--json"))
    as_json(bagbot(env, "jobs", "cancel", "purge-me", "--json"))

    declined = bagbot(env, "purge", "--older-than", "0", stdin="n\n")
    assert declined.returncode == 1
    assert "Delete terminal jobs" in declined.stderr
    assert bagbot(env, "jobs", "show", "purge-me").returncode == 0

    purged = as_json(bagbot(env, "purge", "--older-than", "0", "--yes", "--json"))
    assert purged == {"purged": 1}
    assert bagbot(env, "jobs", "show", "purge-me").returncode == 4
    assert bagbot(env, "jobs", "show", "keep-me").returncode == 0


def test_enqueue_wait_shows_the_result_and_fails_with_the_job(env: dict[str, str], worker: Service) -> None:
    done = bagbot(env, "enqueue", "bagbot.echo", "a", "2", "--wait", "--wait-timeout", "60")
    assert done.returncode == 0, done.stderr
    assert '["a", 2]' in done.stdout

    done_json = as_json(bagbot(env, "enqueue", "bagbot.fail", "--kwargs", '{"times": 1}', "--wait", "--json"))
    assert (done_json["state"], done_json["attempts"]) == ("done", 2)

    failed = bagbot(
        env, "enqueue", "bagbot.fail", "--kwargs", '{"times": 5}', "--max-attempts", "1", "--wait"
    )
    assert failed.returncode == 1
    assert "failed" in failed.stdout and "DiagnosticFailure" in failed.stdout

    workers = as_json(bagbot(env, "workers", "--json"))
    assert len(workers) == 1
    assert workers[0]["heartbeat_age"] < 30  # alive: far below any stale cut-off
    assert "bagbot.fail" in workers[0]["handlers"]
    shown = bagbot(env, "workers")
    assert shown.returncode == 0 and "handlers" in shown.stdout


# -- check --------------------------------------------------------------------------------------------


def test_check_accepts_noeviction(private_redis: RedisServer, prefix: str) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.set(f"{prefix}:{{q}}:job:x", "1")
    client.close()
    env = make_env(REDIS_URL=private_redis.url, BAGBOT_PREFIX=prefix)
    report = as_json(bagbot(env, "check", "--json"))
    assert report["ok"] and report["reachable"]
    assert report["maxmemory_policy"] == "noeviction"
    assert report["keys"] == 1 and report["version"]
    text = bagbot(env, "check")
    assert text.returncode == 0 and "noeviction" in text.stdout


def test_check_refuses_allkeys_lru(prefix: str) -> None:
    server = start_server("--maxmemory-policy", "allkeys-lru")
    try:
        result = bagbot(make_env(REDIS_URL=server.url, BAGBOT_PREFIX=prefix), "check")
    finally:
        server.cleanup()
    assert result.returncode == 1
    assert "allkeys-lru" in result.stdout and "noeviction" in result.stdout


def test_check_never_prints_the_password(private_redis: RedisServer) -> None:
    password = "s3cret-Pa55word"
    client = redis.Redis.from_url(private_redis.url)
    client.config_set("requirepass", password)
    client.close()
    good = f"redis://:{password}@127.0.0.1:{private_redis.port}/0"
    bad = f"redis://:wrong-{password}@127.0.0.1:{private_redis.port}/0"

    accepted = bagbot(make_env(REDIS_URL=good), "check")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    refused = bagbot(make_env(REDIS_URL=bad), "check", "--json")
    assert refused.returncode == 3
    for result in (accepted, refused):
        assert password not in result.stdout + result.stderr
    assert "***" in accepted.stdout


def test_check_unreachable_exits_3() -> None:
    result = bagbot(make_env(REDIS_URL=f"redis://:pw-123@127.0.0.1:{free_port()}/0"), "check")
    assert result.returncode == 3
    assert "pw-123" not in result.stdout + result.stderr


# -- smoke -----------------------------------------------------------------------------------------------


def test_smoke_url_passes_against_a_backend_and_a_worker_on_redis(
    env: dict[str, str], worker: Service, tmp_path: Path
) -> None:
    port = free_port()
    token = "smoke-token-123"
    backend = Service(
        {**env, "PORT": str(port), "BAGBOT_API_TOKEN": token}, ["serve"], tmp_path / "backend.log"
    )
    try:
        backend.wait_until(lambda: health_ok(port), "backend health")
        url = f"http://127.0.0.1:{port}"
        client_env = make_env()  # nothing local: everything goes through the API
        result = bagbot(client_env, "smoke", "--url", url, "--token", token, "--json", "--timeout", "60")
        report = json.loads(result.stdout)
        failed = [item for item in report["items"] if not item["ok"]]
        assert result.returncode == 0 and not failed, json.dumps(failed, indent=2) + result.stderr
        assert len(report["items"]) == 12

        text = bagbot(client_env, "smoke", "--url", url, "--token", token)
        assert text.returncode == 0, text.stdout + text.stderr
        assert "Validation Checklist" in text.stdout
        assert text.stdout.count("✓") == 12 and "✗" not in text.stdout

        # read commands over HTTP, and a refused mutation without the token
        counts = as_json(bagbot(client_env, "queues", "--url", url, "--json"))
        assert counts["default"]["done"] >= 24
        assert as_json(bagbot(client_env, "workers", "--url", url, "--json"))[0]["id"]
        page = as_json(bagbot(client_env, "jobs", "list", "--url", url, "--state", "cancelled", "--json"))
        assert len(page["jobs"]) == 2
        denied = bagbot(client_env, "jobs", "retry", page["jobs"][0]["id"], "--url", url)
        assert denied.returncode == 2 and "401" in denied.stderr
        assert bagbot(client_env, "jobs", "show", "nope", "--url", url).returncode == 4
    finally:
        backend.stop()


def test_smoke_fails_without_workers(env: dict[str, str]) -> None:
    result = bagbot(env, "smoke", "--timeout", "2", "--jobs", "2", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    failed = {item["item"] for item in report["items"] if not item["ok"]}
    assert "Worker jobs are claimed exclusively" in failed
    assert "Heartbeats are being recorded" in failed


def test_smoke_url_flags_a_backend_still_on_the_memory_store(tmp_path: Path) -> None:
    """After the rollback (or a missed JOB_STORE) jobs run, but nothing is in Redis: the Redis lines fail."""
    port = free_port()
    backend = Service(make_env(JOB_STORE="memory", PORT=str(port)), ["serve"], tmp_path / "backend.log")
    try:
        backend.wait_until(lambda: health_ok(port), "backend health")
        result = bagbot(make_env(), "smoke", "--url", f"http://127.0.0.1:{port}", "--json", "--timeout", "30")
    finally:
        backend.stop()
    report = json.loads(result.stdout)
    failed = [item["item"] for item in report["items"] if not item["ok"]]
    assert result.returncode == 1
    assert failed == ["Redis service is running and healthy", "Backend service can connect to Redis"], report


def test_smoke_on_the_memory_store_runs_an_embedded_worker() -> None:
    result = bagbot(make_env(JOB_STORE="memory"), "smoke", "--json", "--timeout", "30")
    report = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps(report, indent=2) + result.stderr


# -- the smoke test's judgments, on crafted observations -------------------------------------------------


def fail_job_observed(delay: float, attempts: int = 2) -> Any:
    from backend.ops.smoke import Observed

    first = {"id": "f", "state": "enqueued", "attempts": 0}
    waiting = {
        "id": "f",
        "state": "retry_scheduled",
        "attempts": 1,
        "started_at": 100.0,
        "run_at": 100.0 + delay,
    }
    done = {"id": "f", "state": "done", "attempts": attempts, "started_at": 100.0 + delay + 0.01}
    observed = Observed(first, first, {"enqueued": first})
    observed.see(waiting)
    observed.see(done)
    return observed


def test_smoke_accepts_a_retry_delay_within_the_backoff_bounds() -> None:
    from backend.ops.smoke import _retry_backoff, expected_backoff

    low, high = expected_backoff().bounds(1)
    assert _retry_backoff(fail_job_observed((low + high) / 2)).ok


@pytest.mark.parametrize("delay", [0.0, 0.5, 10.0])
def test_smoke_rejects_a_retry_delay_outside_the_backoff_bounds(delay: float) -> None:
    from backend.ops.smoke import _retry_backoff

    item = _retry_backoff(fail_job_observed(delay))
    assert not item.ok and "outside backoff bounds" in item.detail


def test_smoke_rejects_a_retry_never_seen_waiting_or_with_wrong_attempts() -> None:
    from backend.ops.smoke import Observed, _retry_backoff

    done = {"id": "f", "state": "done", "attempts": 2}
    assert not _retry_backoff(Observed(done, done, {"done": done})).ok
    assert not _retry_backoff(fail_job_observed(0.9, attempts=3)).ok


def test_smoke_infers_the_retry_delay_when_the_waiting_window_was_missed() -> None:
    from backend.ops.smoke import Observed, _retry_backoff

    def done(second_start: float) -> Observed:
        job = {"id": "f", "state": "done", "attempts": 2, "created_at": 100.0, "started_at": second_start}
        return Observed(job, job, {"done": job})

    assert _retry_backoff(done(100.9)).ok
    assert not _retry_backoff(done(100.1)).ok  # retried before its backoff could have passed


def test_smoke_counts_a_metric_only_with_samples() -> None:
    from backend.ops.smoke import GUIDE_METRICS, _metrics_names

    help_only = "\n".join(f"# HELP {n} x\n# TYPE {n} counter" for n in GUIDE_METRICS)
    assert not _metrics_names(help_only).ok
    samples = "\n".join(
        [
            'bagbot_job_enqueue_total{queue="default",name="bagbot.noop"} 3.0',
            'bagbot_job_run_total{queue="default",name="bagbot.noop",outcome="done"} 3.0',
            'bagbot_job_run_duration_seconds_bucket{queue="default",name="bagbot.noop",le="+Inf"} 3.0',
            'bagbot_retry_scheduled_total{queue="default",name="bagbot.fail"} 1.0',
            'bagbot_heartbeat_age_seconds{worker="w1"} 0.4',
        ]
    )
    assert _metrics_names(help_only + "\n" + samples).ok
    assert not _metrics_names(samples.replace("bagbot_heartbeat_age_seconds", "other")).ok
