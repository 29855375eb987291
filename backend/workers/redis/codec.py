"""Conversion between Job records and the flat string hashes the Lua scripts keep.

Hash fields hold times in integer microseconds on the Redis clock; the empty
string stands for "none". Readers tolerate missing fields so that a job written
by an older version stays readable while old and new workers run side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from backend.workers.models import Job, JobError, JobSpec, JobState, QueueMetrics, WorkerInfo
from backend.workers.rules import (
    DURATION_BUCKETS,
    Backoff,
    InvalidJobError,
    loads,
)


def pairs_to_dict(flat: Sequence[Any]) -> dict[str, str]:
    """HGETALL as a Lua script returns it (a flat list) -> dict."""
    return dict(zip(map(str, flat[::2]), map(str, flat[1::2]), strict=False))


def us_to_s(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    return float(raw) / 1e6


def s_to_us(seconds: float) -> int:
    return round(seconds * 1e6)


def _int(raw: str | None, default: int = 0) -> int:
    return default if raw is None or raw == "" else int(float(raw))


def _float(raw: str | None, default: float) -> float:
    return default if raw is None or raw == "" else float(raw)


def job_from_hash(data: Mapping[str, str]) -> Job:
    backoff_defaults = Backoff()
    return Job(
        id=data["id"],
        name=data.get("name", ""),
        queue=data.get("queue", ""),
        args=loads(data.get("args")) or [],
        kwargs=loads(data.get("kwargs")) or {},
        state=JobState(data.get("state", "enqueued")),
        attempts=_int(data.get("attempts")),
        max_attempts=_int(data.get("max_attempts"), 1),
        priority=_int(data.get("priority")),
        timeout=None if not data.get("timeout") else float(data["timeout"]),
        backoff=Backoff(
            _float(data.get("bo_base"), backoff_defaults.base),
            _float(data.get("bo_cap"), backoff_defaults.cap),
            _float(data.get("bo_jitter"), backoff_defaults.jitter),
        ),
        run_at=us_to_s(data.get("run_at")),
        created_at=us_to_s(data.get("created_at")) or 0.0,
        started_at=us_to_s(data.get("started_at")),
        finished_at=us_to_s(data.get("finished_at")),
        worker=data.get("worker") or None,
        token=data.get("token") or None,
        lease_until=us_to_s(data.get("lease_until")),
        last_error=JobError.from_json(loads(data.get("last_error"))),
        result=loads(data.get("result")),
        unique_key=data.get("unique_key") or None,
        limit_key=data.get("lk") or None,
        limit=_int(data.get("lm")) if data.get("lm") else None,
        events=data.get("ev") == "1",
        progress=float(data["progress"]) if data.get("progress") else None,
        progress_message=data.get("progress_msg") if data.get("progress") else None,
        cancel_requested=data.get("cancel_req") == "1",
    )


def new_job(spec: JobSpec, job_id: str, state: str, created_us: Any, run_at_us: Any) -> Job:
    """The record enqueue.lua just wrote, rebuilt without reading it back."""
    return Job(
        id=job_id,
        name=spec.name,
        queue=spec.queue,
        args=spec.args,
        kwargs=spec.kwargs,
        state=JobState(str(state)),
        max_attempts=spec.max_attempts,
        priority=spec.priority,
        timeout=spec.timeout,
        backoff=spec.backoff,
        run_at=float(run_at_us) / 1e6,
        created_at=float(created_us) / 1e6,
        unique_key=spec.unique_key,
        limit_key=spec.limit_key,
        limit=spec.limit,
        events=spec.events,
    )


def parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    score, sep, job_id = cursor.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(score), job_id
    except ValueError:
        raise InvalidJobError(f"invalid cursor {cursor!r}") from None


def format_cursor(after: tuple[float, str]) -> str:
    return f"{after[0]:.0f}:{after[1]}"


def worker_from_hash(worker_id: str, data: dict[str, str], now_us: float) -> WorkerInfo:
    last = float(data.get("last_heartbeat") or 0)
    queues = data.get("queues")
    return WorkerInfo(
        id=worker_id,
        host=data.get("host", ""),
        pid=int(data.get("pid") or 0),
        queues=list(_json_list(queues)),
        concurrency=int(data.get("concurrency") or 0),
        started_at=float(data.get("started_at") or 0) / 1e6,
        last_heartbeat=last / 1e6,
        heartbeat_age=max(0.0, (now_us - last) / 1e6),
        running=int(data.get("running") or 0),
        version=data.get("version", ""),
    )


def _json_list(raw: str | None) -> list[str]:
    value = loads(raw) if raw else []
    return [str(item) for item in value] if isinstance(value, list) else []


def queue_metrics(stats: dict[str, str]) -> QueueMetrics:
    metrics = QueueMetrics()
    slots = len(DURATION_BUCKETS) + 1
    for field, raw in stats.items():
        kind, _, rest = field.partition("|")
        if kind == "enq":
            metrics.enqueued[rest] = int(raw)
        elif kind == "retry":
            metrics.retries[rest] = int(raw)
        elif kind == "run":
            name, _, outcome = rest.rpartition("|")
            metrics.runs[(name, outcome)] = int(raw)
        elif kind == "dur":
            name, _, slot = rest.rpartition("|")
            buckets = metrics.duration_buckets.setdefault(name, [0] * slots)
            buckets[min(int(slot), slots) - 1] += int(raw)
        elif kind == "dursum":
            metrics.duration_sum[rest] = float(raw)
    return metrics
