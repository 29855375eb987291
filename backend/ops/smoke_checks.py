"""The judging half of `bagbot smoke`: one function per item of the staging guide's checklist.

Each takes what the run observed (the jobs as seen in every state, the worker registry before
and after, the readiness answer, the metrics text) and returns an `Item`: ok or not, and a
detail that says why. Nothing here talks to a store or a backend; `smoke.py` drives the jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backend.api.metrics import GUIDE_METRICS
from backend.ops.client import Client, JSONDict, OpsError
from backend.workers.models import TERMINAL_STATES
from backend.workers.rules import Backoff

CHECKLIST = (
    "Redis service is running and healthy",
    "Backend service can connect to Redis",
    "Worker service can connect to Redis",
    "`/api/metrics` endpoint returns Prometheus metrics",
    "Redis-backed metrics appear (enqueue, run, retry, heartbeat)",
    "Worker jobs are claimed exclusively",
    "Retry scheduling works with correct backoff",
    "Worker registration/deregistration works",
    "Heartbeats are being recorded",
    "No job duplication across multiple workers",
    # The guide's "Verify Job Store Operations" adds these two:
    "State transitions (enqueued → running → done, scheduled → cancelled)",
    "Attempts tracking",
)

TIME_SLACK = 0.05  # store timestamps are rounded to milliseconds
# Between the first start and the retry's run_at sit the handler's run and the worker's batched report
# besides the backoff itself: the upper bound gets this much room so a loaded machine is not a failure.
RUN_SLACK = 2.0


@dataclass(slots=True)
class Item:
    """One line of the checklist: whether it holds, and what was seen that says so."""

    label: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"item": self.label, "ok": self.ok, "detail": self.detail}


@dataclass(slots=True)
class SmokeOptions:
    """What the run is asked to do; the judges read `max_heartbeat_age` from it too."""

    queue: str = "default"
    noop_jobs: int = 10
    timeout: float = 60.0
    max_heartbeat_age: float = 30.0
    # False only for the local self-test on the memory store, where no Redis is expected
    expect_redis: bool = True
    poll_interval: float = 0.1


@dataclass(slots=True)
class Observed:
    """Every state a job was seen in, and the first snapshot in each."""

    first: JSONDict
    last: JSONDict
    seen: dict[str, JSONDict] = field(default_factory=dict)

    def see(self, job: JSONDict) -> None:
        self.last = job
        self.seen.setdefault(str(job.get("state")), job)

    @property
    def terminal(self) -> bool:
        return str(self.last.get("state")) in {s.value for s in TERMINAL_STATES}


# -- judging ------------------------------------------------------------------------


def _store_kind(ready: JSONDict) -> str:
    """`store` in the API's readiness body, `backend` in the store's own health."""
    return _find(ready, "store") or _find(ready, "backend")


def redis_healthy(ok: bool, ready: JSONDict, expect_redis: bool) -> Item:
    label = CHECKLIST[0]
    policy = _find(ready, "maxmemory_policy")
    if not ok:
        return Item(label, False, f"readiness check failed: {_short(ready)}")
    if _store_kind(ready) == "memory":
        if expect_redis:
            return Item(label, False, "the backend runs JOB_STORE=memory: no Redis is in use")
        return Item(label, True, "memory store self-test: no Redis involved")
    if policy and policy != "noeviction":
        return Item(label, False, f"maxmemory-policy is {policy}, not noeviction")
    version = _find(ready, "version")
    return Item(label, True, f"answers{f' (version {version})' if version else ''}, policy {policy or 'n/a'}")


def backend_connects(ok: bool, client: Client, ready: JSONDict, expect_redis: bool) -> Item:
    label = CHECKLIST[1]
    if not ok:
        return Item(label, False, f"{client.where} is not ready: {_short(ready)}")
    if _store_kind(ready) == "memory" and expect_redis:
        return Item(label, False, f"{client.where} uses the memory store (set JOB_STORE=redis)")
    return Item(label, True, f"{client.where} is ready and accepted the jobs")


def worker_connects(watched: dict[str, Observed], workers: list[JSONDict] | str) -> Item:
    label = CHECKLIST[2]
    ran = {str(o.last.get("worker")) for o in watched.values() if o.last.get("worker")}
    if not ran:
        return Item(label, False, "no worker ran any smoke job")
    live = {str(w.get("id")) for w in workers} if isinstance(workers, list) else set()
    return Item(label, True, f"jobs ran on {len(ran)} worker(s); {len(ran & live)} of them still registered")


def metrics_endpoint(metrics: str | OpsError | None) -> Item:
    label = CHECKLIST[3]
    if metrics is None:
        return Item(label, True, "not checked without --url (the store's metrics snapshot is used instead)")
    if isinstance(metrics, OpsError):
        return Item(label, False, str(metrics))
    if "# TYPE" not in metrics:
        return Item(label, False, "200 but not in Prometheus text format")
    return Item(label, True, f"{len(metrics.splitlines())} lines of Prometheus text")


def metrics_names(metrics: str | OpsError | None) -> Item:
    label = CHECKLIST[4]
    if isinstance(metrics, OpsError):
        return Item(label, False, str(metrics))
    if metrics is None:
        return Item(label, True, "not checked without --url")
    samples = [line for line in metrics.splitlines() if line and not line.startswith("#")]
    # a metric counts only with a sample, as scripts/test_metrics_endpoint.py counts it
    missing = [name for name in GUIDE_METRICS if not any(_is_sample_of(line, name) for line in samples)]
    if missing:
        return Item(label, False, f"no samples for: {', '.join(missing)}")
    if not any(
        line.startswith("bagbot_job_enqueue_total{") and 'name="bagbot.noop"' in line for line in samples
    ):
        return Item(label, False, "bagbot_job_enqueue_total has no sample for bagbot.noop")
    return Item(label, True, "all five bagbot_* metrics, with samples for the smoke jobs")


def _is_sample_of(line: str, name: str) -> bool:
    """`name{...} v`, `name v`, or a histogram's `name_bucket{...} v` / `_sum` / `_count`."""
    if not line.startswith(name):
        return False
    rest = line[len(name) :]
    return rest[:1] in ("{", " ") or rest.startswith(("_bucket", "_sum", "_count"))


def exclusive(watched: dict[str, Observed]) -> Item:
    label = CHECKLIST[5]
    noops = [o.last for key, o in watched.items() if key.startswith("noop")]
    bad = [j for j in noops if j.get("state") != "done" or j.get("attempts") != 1]
    if bad:
        shown = ", ".join(f"{j.get('id')}={j.get('state')}/attempts {j.get('attempts')}" for j in bad[:3])
        return Item(label, False, f"{len(bad)} of {len(noops)} noop jobs not done exactly once: {shown}")
    workers = {j.get("worker") for j in noops}
    return Item(
        label, True, f"{len(noops)} noop jobs each ran once (attempts == 1) on {len(workers)} worker(s)"
    )


def expected_backoff() -> Backoff:
    """The backoff the worker applies to bagbot.fail: its handler's, else the job default."""
    try:
        from backend.workers import diagnostics  # noqa: F401 - registers bagbot.fail
        from backend.workers.handlers import default_registry

        handler = default_registry.get("bagbot.fail")
    except ImportError:
        handler = None
    return handler.backoff if handler is not None and handler.backoff is not None else Backoff()


def retry_backoff(obs: Observed) -> Item:
    label = CHECKLIST[6]
    job = obs.last
    if job.get("state") != "done" or job.get("attempts") != 2:
        return Item(
            label, False, f"bagbot.fail times=1 ended {job.get('state')} after {job.get('attempts')} attempts"
        )
    low, high = expected_backoff().bounds(1)
    second_start = _epoch(job.get("started_at"))
    waiting = obs.seen.get("retry_scheduled")
    if waiting is not None:
        run_at, started = _epoch(waiting.get("run_at")), _epoch(waiting.get("started_at"))
        if run_at is None or started is None:
            return Item(label, False, f"retry_scheduled without run_at/started_at: {_short(waiting)}")
        if second_start is not None and second_start < run_at - TIME_SLACK:
            return Item(label, False, f"the retry started {run_at - second_start:.3f}s before its run_at")
        delay, how = run_at - started, "retry_scheduled → done"
    else:
        # the short waiting window was missed (a slow link): the retry cannot start before the
        # backoff has passed since the first run, which began after the job was created
        created = _epoch(job.get("created_at"))
        if created is None or second_start is None:
            return Item(label, False, "never seen in retry_scheduled, and no start times to infer the delay")
        delay, how = (
            second_start - created,
            "done (retry_scheduled not observed; delay inferred from start times)",
        )
    if not low - TIME_SLACK <= delay <= high + RUN_SLACK:
        return Item(label, False, f"retry delay {delay:.3f}s outside backoff bounds [{low:.3f}, {high:.3f}]s")
    return Item(label, True, f"{how}, attempts 2, delay {delay:.2f}s within [{low:.2f}, {high:.2f}]s")


def registration(workers: list[JSONDict] | str, options: SmokeOptions) -> Item:
    label = CHECKLIST[7]
    if isinstance(workers, str):
        return Item(label, False, workers)
    if not workers:
        return Item(label, False, "no worker is registered")
    stale = [w for w in workers if float(w.get("heartbeat_age") or 0) > options.max_heartbeat_age * 4]
    if stale:
        ids = ", ".join(str(w.get("id")) for w in stale[:3])
        return Item(label, False, f"stale entries were not removed: {ids}")
    return Item(label, True, f"{len(workers)} worker(s) registered, no stale entries")


def heartbeats(before: list[JSONDict] | str, after: list[JSONDict] | str, options: SmokeOptions) -> Item:
    label = CHECKLIST[8]
    if isinstance(after, str):
        return Item(label, False, after)
    fresh = [w for w in after if float(w.get("heartbeat_age") or 0) <= options.max_heartbeat_age]
    if not fresh:
        return Item(label, False, f"no worker heartbeat within {options.max_heartbeat_age:.0f}s")
    ages = ", ".join(f"{float(w.get('heartbeat_age') or 0):.1f}s" for w in fresh[:5])
    earlier = (
        {str(w.get("id")): _epoch(w.get("last_heartbeat")) for w in before}
        if isinstance(before, list)
        else {}
    )
    advanced = sum(
        1 for w in fresh if (earlier.get(str(w.get("id"))) or 0.0) < (_epoch(w.get("last_heartbeat")) or 0.0)
    )
    return Item(label, True, f"heartbeat ages {ages}; {advanced} advanced during the run")


def no_duplication(watched: dict[str, Observed], same_id: bool, same_unique: bool) -> Item:
    label = CHECKLIST[9]
    if not same_id:
        return Item(label, False, "enqueueing again with the same id made a second job")
    if not same_unique:
        return Item(label, False, "a second job was made for a unique key that a live job holds")
    over = [
        o.last
        for o in watched.values()
        if int(o.last.get("attempts") or 0) > int(o.last.get("max_attempts") or 1)
    ]
    if over:
        return Item(label, False, f"{over[0].get('id')} ran more times than max_attempts")
    return Item(
        label, True, "same id / unique key enqueued twice gave one job; every job ran once per attempt"
    )


def transitions(watched: dict[str, Observed], cancel_ok: bool, cancel_detail: str) -> Item:
    label = CHECKLIST[10]
    echo = watched["echo"]
    first, last = echo.first, echo.last
    if first.get("state") != "enqueued":
        return Item(label, False, f"a new job was {first.get('state')}, not enqueued")
    if last.get("state") != "done":
        return Item(label, False, f"bagbot.echo ended {last.get('state')}: {_short(last.get('last_error'))}")
    if last.get("result") != first.get("args"):
        return Item(
            label, False, f"bagbot.echo returned {last.get('result')!r}, not its args {first.get('args')!r}"
        )
    created, started, finished = (_epoch(last.get(k)) for k in ("created_at", "started_at", "finished_at"))
    if None in (created, started, finished) or not (created or 0) <= (started or 0) <= (finished or 0):
        return Item(
            label, False, f"times out of order: created {created}, started {started}, finished {finished}"
        )
    if not cancel_ok:
        return Item(label, False, cancel_detail)
    return Item(label, True, f"enqueued → running → done with the result intact; {cancel_detail}")


def attempts(watched: dict[str, Observed]) -> Item:
    label = CHECKLIST[11]
    expected = {"echo": 1, "fail": 2, "noop0": 1}
    wrong = {
        k: watched[k].last.get("attempts")
        for k, n in expected.items()
        if watched[k].last.get("attempts") != n
    }
    if wrong:
        return Item(label, False, f"unexpected attempts: {wrong} (expected {expected})")
    return Item(label, True, "noop 1, echo 1, fail(times=1) 2")


# -- small helpers ---------------------------------------------------------------------


def _epoch(value: Any) -> float | None:
    """Times come as epoch seconds from the store, maybe as ISO strings from an API."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _find(data: Any, key: str) -> str:
    """A key anywhere in a small nested JSON answer (readiness bodies differ in shape)."""
    if isinstance(data, dict):
        if key in data and data[key] not in (None, ""):
            return str(data[key])
        for value in data.values():
            found = _find(value, key)
            if found:
                return found
    return ""


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."
