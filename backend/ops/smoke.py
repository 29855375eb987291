"""`bagbot smoke`: the staging guide's post-deployment verification as one run.

It enqueues diagnostic jobs (bagbot.noop, bagbot.echo, bagbot.fail times=1, a
delayed job it cancels) through a `Client` — a deployed backend's HTTP API or
the job store directly — waits for live workers to run them, and judges the
guide's "Validation Checklist" from what the jobs, the worker registry and the
metrics endpoint show. Nothing is assumed from the client's clock except the
wait itself; every time compared comes from the same store.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backend.api.metrics import GUIDE_METRICS
from backend.ops.client import Client, JSONDict, OpsError
from backend.ops.smoke_checks import (
    CHECKLIST,
    Item,
    Observed,
    SmokeOptions,
    attempts,
    backend_connects,
    exclusive,
    expected_backoff,
    heartbeats,
    metrics_endpoint,
    metrics_names,
    no_duplication,
    redis_healthy,
    registration,
    retry_backoff,
    transitions,
    worker_connects,
)

# the judges' names from before they moved to smoke_checks.py (tests import them from here)
_metrics_names = metrics_names
_retry_backoff = retry_backoff

__all__ = [
    "CHECKLIST",
    "GUIDE_METRICS",
    "Item",
    "Observed",
    "SmokeOptions",
    "SmokeResult",
    "_metrics_names",
    "_retry_backoff",
    "expected_backoff",
    "run_smoke",
]


@dataclass(slots=True)
class SmokeResult:
    """The checklist one run judged, and the ids of its jobs (to look them up afterwards)."""

    items: list[Item]
    run_id: str
    jobs: dict[str, str]

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "run_id": self.run_id,
            "jobs": self.jobs,
            "items": [i.to_json() for i in self.items],
        }


Progress = Callable[[str], None]  # shown as the status line while the run waits


async def run_smoke(
    client: Client, options: SmokeOptions, progress: Progress = lambda _: None
) -> SmokeResult:
    """Run every check; collects failures instead of stopping at the first."""
    run_id = uuid.uuid4().hex[:8]
    progress("checking the store")
    ready_ok, ready = await client.ready()
    workers_before = await _safe_workers(client)

    progress("enqueueing diagnostic jobs")
    try:
        jobs = await _enqueue_all(client, options, run_id)
        dup_same, unique_same, cancel_ok, cancel_detail = await _duplicates_and_cancel(
            client, options, run_id, jobs
        )
    except OpsError as exc:  # e.g. Redis down behind the backend: still the whole checklist
        return await _without_jobs(client, options, run_id, (ready_ok, ready), workers_before, exc)

    watched = {key: Observed(job, job, {str(job.get("state")): job}) for key, job in jobs.items()}
    await _wait_terminal(client, watched, options, progress)
    workers_after = await _safe_workers(client)
    metrics = await _safe_metrics(client)

    items = [
        redis_healthy(ready_ok, ready, options.expect_redis),
        backend_connects(ready_ok, client, ready, options.expect_redis),
        worker_connects(watched, workers_after),
        metrics_endpoint(metrics),
        metrics_names(metrics),
        exclusive(watched),
        retry_backoff(watched["fail"]),
        registration(workers_after, options),
        heartbeats(workers_before, workers_after, options),
        no_duplication(watched, dup_same, unique_same),
        transitions(watched, cancel_ok, cancel_detail),
        attempts(watched),
    ]
    return SmokeResult(items, run_id, {key: str(o.last.get("id")) for key, o in watched.items()})


async def _without_jobs(
    client: Client,
    options: SmokeOptions,
    run_id: str,
    readiness: tuple[bool, JSONDict],
    workers: list[JSONDict] | str,
    exc: OpsError,
) -> SmokeResult:
    """The checklist when no diagnostic job could be enqueued: what can be judged without jobs
    is judged, every other line fails saying why it could not run."""
    ready_ok, ready = readiness
    metrics = await _safe_metrics(client)
    judged = [
        redis_healthy(ready_ok, ready, options.expect_redis),
        backend_connects(ready_ok, client, ready, options.expect_redis),
    ]
    judged[1] = judged[1] if not judged[1].ok else Item(judged[1].label, False, f"enqueue failed: {exc}")
    items = [*judged, metrics_endpoint(metrics), metrics_names(metrics)]
    if isinstance(workers, list):
        items.append(registration(workers, options))
    not_run = f"not run: no diagnostic job could be enqueued ({exc})"
    labels = {item.label for item in items}
    items += [Item(label, False, not_run) for label in CHECKLIST if label not in labels]
    items.sort(key=lambda item: CHECKLIST.index(item.label) if item.label in CHECKLIST else len(CHECKLIST))
    return SmokeResult(items, run_id, {})


# -- driving the jobs ------------------------------------------------------------


async def _enqueue_all(client: Client, options: SmokeOptions, run_id: str) -> dict[str, JSONDict]:
    base = {"queue": options.queue}
    jobs: dict[str, JSONDict] = {}
    for index in range(options.noop_jobs):
        body = {**base, "name": "bagbot.noop", "id": f"smoke-{run_id}-noop-{index}", "max_attempts": 1}
        jobs[f"noop{index}"] = await client.enqueue(body)
    echo_args = ["smoke", run_id, 3]
    jobs["echo"] = await client.enqueue(
        {**base, "name": "bagbot.echo", "args": echo_args, "id": f"smoke-{run_id}-echo"}
    )
    jobs["fail"] = await client.enqueue(
        {
            **base,
            "name": "bagbot.fail",
            "kwargs": {"times": 1},
            "max_attempts": 3,
            "id": f"smoke-{run_id}-fail",
        }
    )
    return jobs


async def _duplicates_and_cancel(
    client: Client, options: SmokeOptions, run_id: str, jobs: dict[str, JSONDict]
) -> tuple[bool, bool, bool, str]:
    """Enqueueing again with the same id, or with a unique key a live job holds, must return
    that job; a job delayed by an hour is `scheduled` and can be cancelled."""
    base = {"queue": options.queue, "name": "bagbot.noop"}
    again = await client.enqueue({**base, "id": f"smoke-{run_id}-noop-0"})
    same_id = again.get("id") == jobs["noop0"].get("id") and again.get("created_at") == jobs["noop0"].get(
        "created_at"
    )
    key = f"smoke-{run_id}"
    held = await client.enqueue({**base, "delay": 3600, "unique_key": key, "id": f"smoke-{run_id}-held"})
    twin = await client.enqueue({**base, "unique_key": key, "id": f"smoke-{run_id}-twin"})
    same_unique = twin.get("id") == held.get("id")
    if held.get("state") != "scheduled":
        return same_id, same_unique, False, f"a job delayed by an hour was {held.get('state')}, not scheduled"
    try:
        cancelled = await client.cancel(str(held["id"]), options.queue)
    except OpsError as exc:
        return same_id, same_unique, False, f"cancel failed: {exc}"
    if cancelled.get("state") != "cancelled":
        return same_id, same_unique, False, f"cancel left it {cancelled.get('state')}"
    return same_id, same_unique, True, "scheduled → cancelled"


async def _wait_terminal(
    client: Client, watched: dict[str, Observed], options: SmokeOptions, progress: Progress
) -> None:
    deadline = time.monotonic() + options.timeout
    while time.monotonic() < deadline:
        pending = [key for key, obs in watched.items() if not obs.terminal]
        if not pending:
            return
        done = len(watched) - len(pending)
        progress(f"waiting for workers: {done}/{len(watched)} jobs finished")
        # concurrently, so a slow link still sees the short retry_scheduled window of bagbot.fail
        fresh = await asyncio.gather(
            *(client.get(str(watched[key].first["id"]), options.queue) for key in pending)
        )
        for key, job in zip(pending, fresh, strict=True):
            watched[key].see(job)
        await asyncio.sleep(options.poll_interval)


async def _safe_workers(client: Client) -> list[JSONDict] | str:
    try:
        return await client.workers()
    except OpsError as exc:
        return str(exc)


async def _safe_metrics(client: Client) -> str | OpsError | None:
    try:
        return await client.metrics_text()
    except OpsError as exc:
        return exc
