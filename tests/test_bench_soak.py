"""`bagbot bench --soak` runs end to end for a few seconds (its figures are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from tests.worker_procs import ROOT

pytestmark = pytest.mark.slow


def soak_prefixes(client: redis.Redis) -> set[str]:
    return {key.split(b":")[0].decode() for key in client.scan_iter(match="bagbot-soak-*", count=1000)}


def test_soak_samples_memory_and_jobs_and_cleans_up(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    before = soak_prefixes(client)
    done = subprocess.run(
        [sys.executable, "-m", "backend.cli", "bench", "--soak", "8", "--retention", "1", "--json",
         "--redis-url", redis_url],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    samples = result["samples"]
    assert len(samples) >= 4
    assert all(s["used_memory"] > 0 and s["stored_done"] >= 0 for s in samples)
    assert result["summary"]["jobs_finished"] == samples[-1]["finished"] > 0
    assert set(result["summary"]["used_memory_second_half"]) == {"median", "min", "max"}
    assert soak_prefixes(client) <= before  # the run's keys are gone
