"""`bagbot jobs retry|cancel|purge` over a filter and `bagbot queues pause|resume`, run as real
subprocesses against a real Redis (and over HTTP against a real backend); and a paused queue
seen by a real worker process: nothing claimed from it while another queue runs, and its jobs run
at once on resume.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from backend.workers.models import Claim, JobError, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.redis_server import free_port
from tests.test_cli import Service, as_json, bagbot, env, health_ok, make_env

__all__ = ["env"]  # the CLI's environment fixture, on the shared server under this test's prefix

T = TypeVar("T")


def on_store(env: dict[str, str], action: Callable[[RedisJobStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = RedisJobStore.from_url(env["REDIS_URL"], prefix=env["BAGBOT_PREFIX"])
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(main())


def make_failed(env: dict[str, str], n: int, queue: str = "default", name: str = "t.job") -> list[str]:
    async def action(store: RedisJobStore) -> list[str]:
        ids = []
        for _ in range(n):
            job = await store.enqueue(JobSpec(name, queue=queue))
            (claimed,) = await store.claim("cli-test", [queue], 1, 30)
            assert claimed.id == job.id
            await store.fail(Claim(queue, job.id, claimed.token or ""), JobError("E", "m"), retryable=False)
            ids.append(job.id)
        return ids

    return on_store(env, action)


def states(env: dict[str, str], ids: list[str]) -> list[str]:
    async def action(store: RedisJobStore) -> list[str]:
        jobs = [await store.get(job_id) for job_id in ids]
        return [job.state.value if job is not None else "gone" for job in jobs]

    return on_store(env, action)


def counts(env: dict[str, str]) -> dict[str, dict[str, int]]:
    return on_store(env, lambda store: store.counts())


# -- bulk on the store ------------------------------------------------------------------------------


def test_jobs_retry_by_filter_moves_the_matching_jobs(env: dict[str, str]) -> None:
    target = make_failed(env, 3, name="t.a")
    other = make_failed(env, 2, name="t.b")
    total = as_json(bagbot(env, "jobs", "retry", "--state", "failed", "--name", "t.a", "--json"))
    assert total == {"matched": 3, "moved": 3, "more": False}
    assert states(env, target) == ["enqueued"] * 3 and states(env, other) == ["failed"] * 2

    limited = as_json(bagbot(env, "jobs", "retry", "--all", "--limit", "1", "--json"))
    assert limited == {"matched": 1, "moved": 1, "more": True}
    text = bagbot(env, "jobs", "retry", "--state", "failed")
    assert text.returncode == 0 and "retried 1 job(s)" in text.stdout, text.stderr


def test_jobs_retry_and_cancel_by_ids_say_what_was_left(env: dict[str, str]) -> None:
    (failed,) = make_failed(env, 1)
    live = on_store(env, lambda store: store.enqueue(JobSpec("t.job", delay=3600)))
    result = bagbot(env, "jobs", "retry", failed, live.id)
    assert result.returncode == 0, result.stderr
    assert "retried 1 job(s); 1 matched but left as they were" in result.stdout
    cancelled = as_json(bagbot(env, "jobs", "cancel", failed, live.id, "--yes", "--json"))
    assert cancelled == {"matched": 2, "moved": 2, "more": False}
    assert states(env, [failed, live.id]) == ["cancelled", "cancelled"]


def test_bulk_cancel_asks_first_and_bad_filters_are_usage_errors(env: dict[str, str]) -> None:
    job = on_store(env, lambda store: store.enqueue(JobSpec("t.job", queue="mail")))
    refused = bagbot(env, "jobs", "cancel", "--queue", "mail", stdin="n\n")
    assert refused.returncode == 1 and "nothing cancelled" in refused.stderr
    assert states(env, [job.id]) == ["enqueued"]

    nothing = bagbot(env, "jobs", "retry")
    assert nothing.returncode == 2 and "say which jobs" in nothing.stderr
    running = bagbot(env, "jobs", "retry", "--state", "running")
    assert running.returncode == 2 and "cannot retry jobs that are running" in running.stderr
    unknown = bagbot(env, "jobs", "cancel", "--state", "nope", "--yes")
    assert unknown.returncode == 2 and "unknown state" in unknown.stderr
    bad_queue = bagbot(env, "jobs", "cancel", "--queue", "a b", "--yes")
    assert bad_queue.returncode == 2 and "queue" in bad_queue.stderr
    assert states(env, [job.id]) == ["enqueued"]

    done = as_json(bagbot(env, "jobs", "cancel", "--queue", "mail", "--yes", "--json"))
    assert done == {"matched": 1, "moved": 1, "more": False}


def test_jobs_purge_deletes_finished_jobs_by_state(env: dict[str, str]) -> None:
    failed = make_failed(env, 2)
    live = on_store(env, lambda store: store.enqueue(JobSpec("t.job")))
    assert bagbot(env, "jobs", "purge", "--state", "running", "--yes").returncode == 2
    assert as_json(bagbot(env, "jobs", "purge", "--state", "done", "--yes", "--json")) == {"purged": 0}
    assert as_json(bagbot(env, "jobs", "purge", "--state", "failed", "--yes", "--json")) == {"purged": 2}
    assert states(env, [*failed, live.id]) == ["gone", "gone", "enqueued"]


def test_queues_pause_and_resume_from_the_cli(env: dict[str, str]) -> None:
    on_store(env, lambda store: store.enqueue(JobSpec("t.job", queue="mail")))
    assert as_json(bagbot(env, "queues", "pause", "mail", "--json")) == {"queue": "mail", "paused": True}
    table = bagbot(env, "queues")
    assert table.returncode == 0 and "mail (paused)" in table.stdout, table.stdout + table.stderr
    assert as_json(bagbot(env, "queues", "--json"))["mail"]["enqueued"] == 1  # the JSON shape is unchanged
    assert on_store(env, lambda store: store.paused_queues()) == {"mail"}
    resumed = bagbot(env, "queues", "resume", "mail")
    assert resumed.returncode == 0 and "queue mail resumed" in resumed.stdout
    assert "(paused)" not in bagbot(env, "queues").stdout
    bad = bagbot(env, "queues", "pause", "a{b}")
    assert bad.returncode == 2 and "queue" in bad.stderr


# -- over HTTP --------------------------------------------------------------------------------------


def test_bulk_purge_and_pause_over_http_need_the_token(env: dict[str, str], tmp_path: Path) -> None:
    port, token = free_port(), "bulk-cli-token"
    backend = Service({**env, "PORT": str(port), "BAGBOT_API_TOKEN": token}, ["serve"], tmp_path / "api.log")
    try:
        backend.wait_until(lambda: health_ok(port), "backend health")
        url = f"http://127.0.0.1:{port}"
        client = make_env()  # nothing local: every call goes through the API
        failed = make_failed(env, 3)

        denied = bagbot(client, "jobs", "retry", "--state", "failed", "--url", url)
        assert denied.returncode == 2 and "401" in denied.stderr
        assert bagbot(client, "queues", "pause", "default", "--url", url).returncode == 2
        assert states(env, failed) == ["failed"] * 3

        auth = ("--url", url, "--token", token)
        retried = bagbot(client, "jobs", "retry", "--state", "failed", "--limit", "2", "--json", *auth)
        assert as_json(retried) == {"matched": 2, "moved": 2, "more": True}
        assert as_json(bagbot(client, "jobs", "cancel", "--all", "--yes", "--json", *auth))["moved"] == 2
        bad = bagbot(client, "jobs", "retry", "--state", "enqueued", *auth)
        assert bad.returncode == 2 and "422" in bad.stderr and "retry takes failed, cancelled" in bad.stderr
        assert as_json(bagbot(client, "jobs", "purge", "--state", "cancelled", "--yes", "--json", *auth)) \
            == {"purged": 2}

        assert as_json(bagbot(client, "queues", *auth, "pause", "default", "--json"))["paused"] is True
        assert "default (paused)" in bagbot(client, "queues", *auth).stdout
        assert as_json(bagbot(client, "queues", "resume", "default", "--json", *auth))["paused"] is False
    finally:
        backend.stop()


# -- a real worker ------------------------------------------------------------------------------------


def noops(queue: str, n: int) -> list[JobSpec]:
    return [JobSpec("bagbot.noop", queue=queue) for _ in range(n)]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    """Poll until `predicate` holds; returns how long it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"no {what} within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_real_worker_claims_nothing_from_a_paused_queue_and_runs_it_at_once_on_resume(
    env: dict[str, str], tmp_path: Path
) -> None:
    # A long heartbeat: an idle worker then looks again only when its 5 s blocking pop runs out
    # (redis/connect.py MAX_BLOCK_SECONDS); the resume's wake-up token makes it claim at once.
    # test_store_bulk.py holds the wake-up itself to a tighter bound.
    worker_env = {**env, "BAGBOT_QUEUES": "slow,fast", "BAGBOT_HEARTBEAT_SECONDS": "60",
                  "BAGBOT_LEASE_SECONDS": "180", "BAGBOT_CONCURRENCY": "4"}
    worker = Service(worker_env, ["worker"], tmp_path / "worker.log")
    try:
        worker.wait_until(lambda: "Worker registration successful" in worker.text(), "worker registration")
        long = on_store(env, lambda s: s.enqueue(JobSpec("bagbot.sleep", args=[2], queue="slow")))
        wait_for(lambda: states(env, [long.id]) == ["running"], "running job")

        paused = bagbot(env, "queues", "pause", "slow")
        assert paused.returncode == 0, paused.stderr
        held = on_store(env, lambda s: s.enqueue_many(noops("slow", 5)))
        ran = on_store(env, lambda s: s.enqueue_many(noops("fast", 5)))
        ids = [job.id for job in held]

        wait_for(lambda: states(env, [job.id for job in ran]) == ["done"] * 5, "fast queue's jobs done")
        wait_for(lambda: states(env, [long.id]) == ["done"], "the running job to finish while paused")
        observed_until = time.monotonic() + 2.5
        while time.monotonic() < observed_until:  # a window in which nothing may happen
            assert states(env, ids) == ["enqueued"] * 5
            time.sleep(0.1)
        assert all(job.attempts == 0 for job in on_store(env, lambda s: s.list_jobs(queue="slow",
                   state=JobState.ENQUEUED)).jobs)

        resumed = bagbot(env, "queues", "resume", "slow")
        assert resumed.returncode == 0, resumed.stderr
        took = wait_for(lambda: states(env, ids) == ["done"] * 5, "paused jobs run after resume", timeout=60)
        assert took < 4.0, f"the resumed queue's jobs waited {took:.1f}s: the worker was not woken"
    finally:
        assert worker.stop() == 0, worker.text()
    assert "Traceback" not in worker.text()
