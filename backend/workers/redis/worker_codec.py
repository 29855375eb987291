"""A worker's registry entry (PREFIX:{workers}:worker:<id>) as the heartbeat writes it and the API reads it.

Read tolerantly, like a job: a worker of another version, or a hand edit, shows its defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.workers.models import Claim, WorkerInfo
from backend.workers.redis.codec import Fields, finite, integer
from backend.workers.rules import dumps, loads

RUNNING_JOBS_SHOWN = 100  # running job ids a worker's entry lists (its `running` count has them all)


def worker_fields(info: WorkerInfo, claims: Sequence[Claim]) -> dict[str, str | int]:
    """A worker's registry entry (worker_from_hash reads it back); `claims` (its heartbeat's) are its
    running jobs."""
    jobs = [[claim.queue, claim.job_id] for claim in claims[:RUNNING_JOBS_SHOWN]]
    fields: dict[str, str | int] = {
        "id": info.id, "host": info.host, "pid": info.pid, "queues": dumps(info.queues),
        "concurrency": info.concurrency, "version": info.version, "running": len(claims),
        "running_jobs": dumps(jobs),
    }
    if info.handlers is not None:  # tidy keeps the counters of these names (redis/tidy.py)
        fields["handlers"] = dumps(info.handlers)
    return fields


def worker_from_hash(worker_id: str, data: dict[str, str], now_us: float) -> WorkerInfo:
    """A registry entry; values that cannot be read show their default."""
    f = Fields(data)
    last = f.read("last_heartbeat", finite, 0.0)
    return WorkerInfo(
        id=worker_id,
        host=data.get("host", ""),
        pid=f.read("pid", integer, 0),
        queues=list(_json_list(data.get("queues"))),
        concurrency=f.read("concurrency", integer, 0),
        started_at=f.read("started_at", finite, 0.0) / 1e6,
        last_heartbeat=last / 1e6,
        heartbeat_age=max(0.0, (now_us - last) / 1e6),
        running=f.read("running", integer, 0),
        version=data.get("version", ""),
        handlers=_handler_names(data.get("handlers")),
        running_jobs=_running_jobs(data.get("running_jobs")),
    )


def _running_jobs(raw: str | None) -> list[tuple[str, str]]:
    """(queue, job id) pairs; anything else in the field is skipped."""
    try:
        value = loads(raw) if raw else []
    except ValueError:
        return []
    pairs = value if isinstance(value, list) else []
    return [(str(p[0]), str(p[1])) for p in pairs if isinstance(p, list) and len(p) == 2][:RUNNING_JOBS_SHOWN]


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
