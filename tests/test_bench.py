"""`bagbot bench` runs end to end on a tiny workload (its figures are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from tests.worker_procs import ROOT

pytestmark = pytest.mark.slow


def bench(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "backend.cli", "bench", "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


FIGURES = ("enqueue_single_jobs_per_s", "enqueue_batch_jobs_per_s", "drain_jobs_per_s", "latency_p50_ms",
           "redis_cpu_us_per_job", "redis_bytes_per_queued_job", "worker_peak_rss_mib", "due_lateness_p50_ms",
           "due_lateness_p99_ms", "retry_lateness_p50_ms", "retry_lateness_p99_ms")


def bench_prefixes(client: redis.Redis) -> set[str]:
    return {key.split(b":")[0].decode() for key in client.scan_iter(match="bagbot-bench-*", count=1000)}


def test_bench_on_redis_reports_every_figure_and_cleans_up(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    before = bench_prefixes(client)  # a shared REDIS_URL may hold another run's keys
    result = bench("--jobs", "300", "--latency-jobs", "30", "--latency-rate", "100", "--redis-url", redis_url)
    for key in FIGURES:
        value = result[key]
        assert isinstance(value, float) and value > 0, key
    assert result["notes"] == [f"redis: {redis_url}"]
    assert bench_prefixes(client) <= before


def test_bench_on_the_memory_store() -> None:
    result = bench("--store", "memory", "--jobs", "300")
    drain = result["drain_jobs_per_s"]
    assert isinstance(drain, float) and drain > 0
