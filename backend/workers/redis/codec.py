"""Conversion between Job records and the flat string hashes the Lua scripts keep.

Hash fields hold times in integer microseconds on the Redis clock; the empty
string stands for "none". Readers tolerate missing fields so that a job written
by an older version stays readable while old and new workers run side by side.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from backend.workers.models import Job, JobError, JobSpec, JobState, QueueMetrics, ScheduleInfo, WorkerInfo
from backend.workers.rules import (
    DURATION_BUCKETS,
    Backoff,
    InvalidJobError,
    dumps,
    loads,
)

log = logging.getLogger("bagbot.store")
T = TypeVar("T")
D = TypeVar("D")


def pairs_to_dict(flat: Sequence[Any]) -> dict[str, str]:
    """HGETALL as a Lua script returns it (a flat list) -> dict."""
    return dict(zip(map(str, flat[::2]), map(str, flat[1::2]), strict=False))


def us_to_s(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    return float(raw) / 1e6


def s_to_us(seconds: float) -> int:
    return round(seconds * 1e6)


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _integer(raw: str) -> int:
    return int(_finite(raw))


def _json_of(kind: type) -> Callable[[str], Any]:
    def decode(raw: str) -> Any:
        value = loads(raw)
        if not isinstance(value, kind):
            raise ValueError(raw)
        return value

    return decode


class _Fields:
    """A job hash read field by field: a value that cannot be read gives the field's default and is
    noted in `bad`, so one corrupt field never makes the whole job unreadable."""

    def __init__(self, data: Mapping[str, str]) -> None:
        self.data = data
        self.bad: dict[str, str] = {}

    def read(self, field: str, convert: Callable[[str], T], default: D) -> T | D:
        raw = self.data.get(field)
        if raw is None or raw == "":
            return default
        try:
            return convert(raw)
        except (ValueError, TypeError, OverflowError):
            self.bad[field] = raw[:80]
            return default

    def time(self, field: str) -> float | None:
        value = self.read(field, _finite, None)
        return None if value is None else value / 1e6


def job_from_hash(data: Mapping[str, str], job_id: str = "") -> Job:
    """The job a hash holds; fields that cannot be read are listed in `Job.unreadable`.

    The strict reading is tried first (it is on every claim's path); only a record it refuses is
    read again field by field."""
    try:
        return _strict_job(data)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return _tolerant_job(data, job_id)


def _strict_job(data: Mapping[str, str]) -> Job:
    if not data.get("name") or data.get("state") is None:
        raise ValueError("no name or state")
    args, kwargs, last_error = loads(data.get("args")) or [], loads(data.get("kwargs")) or {}, None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("args or kwargs of the wrong type")
    if raw_error := data.get("last_error"):
        last_error = JobError.from_json(loads(raw_error))
    timeout = _opt_float(data.get("timeout"))
    progress = _opt_float(data.get("progress"))
    job = Job(
        id=data["id"],
        name=data["name"],
        queue=data.get("queue", ""),
        args=args,
        kwargs=kwargs,
        state=JobState(data["state"]),
        attempts=int(data.get("attempts") or 0),
        max_attempts=int(data.get("max_attempts") or 1),
        priority=int(data.get("priority") or 0),
        timeout=timeout,
        backoff=Backoff(float(data.get("bo_base") or 1.0), float(data.get("bo_cap") or 300.0),
                        float(data.get("bo_jitter") or 0.25)),
        run_at=us_to_s(data.get("run_at")),
        created_at=us_to_s(data.get("created_at")) or 0.0,
        started_at=us_to_s(data.get("started_at")),
        finished_at=us_to_s(data.get("finished_at")),
        worker=data.get("worker") or None,
        token=data.get("token") or None,
        lease_until=us_to_s(data.get("lease_until")),
        last_error=last_error,
        result=loads(data.get("result")),
        unique_key=data.get("unique_key") or None,
        limit_key=data.get("lk") or None,
        limit=int(data["lm"]) if data.get("lm") else None,
        events=data.get("ev") == "1",
        progress=progress,
        progress_message=data.get("progress_msg") if progress is not None else None,
        cancel_requested=data.get("cancel_req") == "1",
        trace=data.get("tp") or None,
    )
    times = (job.run_at, job.started_at, job.finished_at, job.lease_until, timeout, progress)
    total = job.created_at + sum(t for t in times if t is not None) + sum(job.backoff.bounds(1))
    if not math.isfinite(total):
        raise ValueError("a number that is not finite")  # NaN and ±Infinity propagate through the sum
    return job


def _opt_float(raw: str | None) -> float | None:
    return None if raw is None or raw == "" else float(raw)


def _tolerant_job(data: Mapping[str, str], job_id: str) -> Job:
    f = _Fields(data)
    defaults = Backoff()
    state = f.read("state", JobState, JobState.ENQUEUED)
    if "state" not in data:
        f.bad["state"] = ""
    for required in ("id", "name"):
        if not data.get(required) and (required == "name" or not job_id):
            f.bad[required] = ""
    try:
        backoff = Backoff(f.read("bo_base", _finite, defaults.base), f.read("bo_cap", _finite, defaults.cap),
                          f.read("bo_jitter", _finite, defaults.jitter))
    except InvalidJobError:
        backoff, f.bad["bo_base"] = defaults, str(data.get("bo_base"))[:80]
    last_error = f.read("last_error", _json_of(dict), None)
    progress = f.read("progress", _finite, None)
    return Job(
        id=data.get("id") or job_id,
        name=data.get("name", ""),
        queue=data.get("queue", ""),
        args=f.read("args", _json_of(list), []),
        kwargs=f.read("kwargs", _json_of(dict), {}),
        state=state,
        attempts=f.read("attempts", _integer, 0),
        max_attempts=f.read("max_attempts", _integer, 1),
        priority=f.read("priority", _integer, 0),
        timeout=f.read("timeout", _finite, None),
        backoff=backoff,
        run_at=f.time("run_at"),
        created_at=f.time("created_at") or 0.0,
        started_at=f.time("started_at"),
        finished_at=f.time("finished_at"),
        worker=data.get("worker") or None,
        token=data.get("token") or None,
        lease_until=f.time("lease_until"),
        last_error=JobError.from_json(last_error),
        result=f.read("result", loads, None),
        unique_key=data.get("unique_key") or None,
        limit_key=data.get("lk") or None,
        limit=f.read("lm", _integer, None),
        events=data.get("ev") == "1",
        progress=progress,
        progress_message=data.get("progress_msg") if progress is not None else None,
        cancel_requested=data.get("cancel_req") == "1",
        trace=data.get("tp") or None,
        unreadable=f.bad,
    )


def new_job(spec: JobSpec, job_id: str, state: str, created_us: Any, run_at_us: Any,
            max_attempts: int) -> Job:
    """The record enqueue.lua just wrote, rebuilt without reading it back (`max_attempts`: its
    effective value, the handler's when the spec set none)."""
    return Job(
        id=job_id,
        name=spec.name,
        queue=spec.queue,
        args=spec.args,
        kwargs=spec.kwargs,
        state=JobState(str(state)),
        max_attempts=max_attempts,
        priority=spec.priority,
        timeout=spec.timeout,
        backoff=spec.backoff or Backoff(),
        run_at=float(run_at_us) / 1e6,
        created_at=float(created_us) / 1e6,
        unique_key=spec.unique_key,
        limit_key=spec.limit_key,
        limit=spec.limit,
        events=spec.events,
        trace=spec.trace,
    )


def parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    score, sep, job_id = cursor.partition(":")
    try:
        if not sep:
            raise ValueError
        return _finite(score), job_id
    except ValueError:
        raise InvalidJobError(f"invalid cursor {cursor!r}") from None


def format_cursor(after: tuple[float, str]) -> str:
    return f"{after[0]:.0f}:{after[1]}"


def worker_fields(info: WorkerInfo, running: int) -> dict[str, str | int]:
    """A registry entry's fields (worker_from_hash reads them back)."""
    fields: dict[str, str | int] = {
        "id": info.id, "host": info.host, "pid": info.pid, "queues": dumps(info.queues),
        "concurrency": info.concurrency, "version": info.version, "running": running,
    }
    if info.handlers is not None:  # tidy keeps the counters of these names (redis/tidy.py)
        fields["handlers"] = dumps(info.handlers)
    return fields


def worker_from_hash(worker_id: str, data: dict[str, str], now_us: float) -> WorkerInfo:
    """A registry entry; values that cannot be read show their default."""
    f = _Fields(data)
    last = f.read("last_heartbeat", _finite, 0.0)
    return WorkerInfo(
        id=worker_id,
        host=data.get("host", ""),
        pid=f.read("pid", _integer, 0),
        queues=list(_json_list(data.get("queues"))),
        concurrency=f.read("concurrency", _integer, 0),
        started_at=f.read("started_at", _finite, 0.0) / 1e6,
        last_heartbeat=last / 1e6,
        heartbeat_age=max(0.0, (now_us - last) / 1e6),
        running=f.read("running", _integer, 0),
        version=data.get("version", ""),
        handlers=_handler_names(data.get("handlers")),
    )


def readable_schedules(values: Iterable[str]) -> Iterator[ScheduleInfo]:
    """Declared schedules, skipping (with a warning) any value this version cannot read."""
    for value in values:
        try:
            yield ScheduleInfo.from_json(loads(value))
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("skipping an unreadable schedule declaration: %r", value[:200])


def _json_list(raw: str | None) -> list[str]:
    try:
        value = loads(raw) if raw else []
    except ValueError:
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


def _handler_names(raw: str | None) -> list[str] | None:
    """A worker's handler names; None when it did not say or what it said cannot be read (then
    tidy keeps every name: a name must never be dropped because of a value we could not read)."""
    try:
        value = loads(raw) if raw is not None else None
    except ValueError:
        return None
    return [str(item) for item in value] if isinstance(value, list) else None


def queue_metrics(stats: dict[str, str]) -> tuple[QueueMetrics, int]:
    """A queue's counters, and how many stored values were skipped because they could not be read."""
    metrics = QueueMetrics()
    skipped = 0
    for field, raw in stats.items():
        try:
            _count_into(metrics, field, raw)
        except (ValueError, OverflowError):
            skipped += 1
    return metrics, skipped


def _count_into(metrics: QueueMetrics, field: str, raw: str) -> None:
    slots = len(DURATION_BUCKETS) + 1
    kind, _, rest = field.partition("|")
    if kind == "enq":
        metrics.enqueued[rest] = _count(raw)
    elif kind == "retry":
        metrics.retries[rest] = _count(raw)
    elif kind == "run":
        name, _, outcome = rest.rpartition("|")
        metrics.runs[(name, outcome)] = _count(raw)
    elif kind == "dur":
        name, _, slot = rest.rpartition("|")
        count, index = _count(raw), int(slot)
        if index < 1:
            raise ValueError(field)
        buckets = metrics.duration_buckets.setdefault(name, [0] * slots)
        buckets[min(index, slots) - 1] += count
    elif kind == "dursum":
        metrics.duration_sum[rest] = _finite(raw)


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value
