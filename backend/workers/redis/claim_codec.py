"""The claim reply: per claimed job, the values of `CLAIM_FIELDS` in that order (after the claim).

claim.lua reads these fields with one HMGET (never the whole hash: a job's error history, result
and dependency fields cost nothing on the hot path) and returns them positionally, so the worker
decodes a job without a dict per field. A job with parents also gets its whole hash (rare path).
A reply the fast reading refuses is read again by the tolerant reader (`job_from_hash`), which
names the unreadable field so the job is set aside instead of run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from backend.workers.models import Job, JobState
from backend.workers.redis.codec import job_from_hash, pairs_to_dict
from backend.workers.rules import loads

# Order is the wire format between claim.lua (FIELDS / F in its prelude) and `claimed_job`. The
# script reads every field but the last few (CLAIM_WRITES: it writes those, so it need not read
# them); the fields from `lkey` to `rs` are for its own decisions and not decoded here. The job's own
# backoff is not read: a worker never uses it (finish.lua reads it from the hash), so a claimed Job
# shows the default.
CLAIM_WRITES = ("id", "started_at", "worker", "token", "lease_until")
CLAIM_FIELDS = (
    "name", "args", "kwargs", "state", "attempts", "max_attempts", "priority", "timeout", "run_at",
    "created_at", "unique_key", "lk", "lm", "ev", "tp", "rk", "rr", "parents",
    "lkey", "ma_def", "bo_def", "rs",
    *CLAIM_WRITES,
)
_DECODED = CLAIM_FIELDS.index("parents") + 1
_ID = CLAIM_FIELDS.index("id")
_WRITTEN = slice(_ID, _ID + len(CLAIM_WRITES))
_RUNNING = JobState.RUNNING


def claimed_job(row: Sequence[Any], queue: str) -> Job:
    """One claimed job from its reply row (see CLAIM_FIELDS)."""
    if len(row) > len(CLAIM_FIELDS):  # a job with parents: its whole hash came too
        return _from_hash(row, queue)
    try:
        return _fast_job(row, queue)
    except (ValueError, TypeError, AttributeError, OverflowError):
        return _from_hash(row, queue)


def _from_hash(row: Sequence[Any], queue: str) -> Job:
    data = pairs_to_dict(row[len(CLAIM_FIELDS)]) if len(row) > len(CLAIM_FIELDS) else {}
    for name, value in zip(CLAIM_FIELDS, row, strict=False):
        if value is not None and (name in CLAIM_WRITES or name not in data):
            data[name] = str(value)
    data.setdefault("queue", queue)
    return job_from_hash(data, str(row[_ID]))


def _us(raw: Any) -> float | None:
    if raw is None or raw == "":
        return None
    return float(raw) / 1e6


def _fast_job(row: Sequence[Any], queue: str) -> Job:
    (name, raw_args, raw_kwargs, state, attempts, max_attempts, priority, timeout, run_at, created_at,
     unique_key, lk, lm, ev, tp, rk, rr, _parents) = row[:_DECODED]
    job_id, started_at, worker, token, lease_until = row[_WRITTEN]
    if not name or state != "running":
        raise ValueError("no name, or not running")
    args, kwargs = loads(raw_args) if raw_args else [], loads(raw_kwargs) if raw_kwargs else {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("args or kwargs of the wrong type")
    seconds = None if timeout is None or timeout == "" else float(timeout)
    job = Job(
        id=str(job_id), name=name, queue=queue, args=args, kwargs=kwargs, state=_RUNNING,
        attempts=int(attempts or 0), max_attempts=int(max_attempts or 1), priority=int(priority or 0),
        timeout=seconds, run_at=_us(run_at), created_at=_us(created_at) or 0.0,
        started_at=_us(started_at), worker=worker or None, token=token or None, lease_until=_us(lease_until),
        unique_key=unique_key or None, limit_key=lk or None, limit=int(lm) if lm else None, events=ev == "1",
        trace=tp or None, rate_key=rk or None, rate=rr or None,
    )
    total = job.created_at + (job.run_at or 0.0) + (seconds or 0.0)
    if not math.isfinite(total):
        raise ValueError("a number that is not finite")
    return job
