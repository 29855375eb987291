"""The claim reply: the claim's start and lease (once per call), then per claimed job the values of
`CLAIM_REPLY` in that order (after the claim).

claim.lua reads `CLAIM_FIELDS` with one HMGET (never the whole hash: a job's error history, result
and dependency fields cost nothing on the hot path) and returns what a worker needs positionally,
so the worker decodes a job without a dict per field. A job with parents also gets its whole hash
(rare path). A row the fast reading refuses is read again by the tolerant reader (`job_from_hash`),
which names the unreadable field so the job is set aside instead of run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from backend.workers.models import Job, JobState
from backend.workers.redis.codec import job_from_hash, pairs_to_dict, us_to_s
from backend.workers.rules import Backoff, loads

# The wire format between claim.lua (FIELDS / F in its prelude) and `claimed_job`. The script reads
# CLAIM_FIELDS and returns, per job, the decoded ones (with the values the claim wrote: attempts,
# max_attempts and backoff from the handler's policy), then the job's id and its claim token; the
# last few fields it read are for its own decisions only. A field left out of the hash (enqueue.lua
# writes no default) reads as its default, as in `job_from_hash`.
CLAIM_DECODED = (
    "name", "args", "kwargs", "attempts", "max_attempts", "priority", "timeout", "bo_base", "bo_cap",
    "bo_jitter", "run_at", "created_at", "unique_key", "lk", "lm", "ev", "tp", "rk", "rr", "parents",
)
CLAIM_FIELDS = (*CLAIM_DECODED, "state", "lkey", "ma_def", "bo_def", "rs")
CLAIM_REPLY = (*CLAIM_DECODED, "id", "token")
_WIDTH = len(CLAIM_REPLY)


def claimed_jobs(reply: Sequence[Any], queue: str, worker: str) -> list[Job]:
    """The jobs of one claim call's reply: {started µs, lease until µs, row, row, ...}."""
    if not reply:
        return []
    started, lease_until = float(reply[0]) / 1e6, float(reply[1]) / 1e6
    return [claimed_job(row, queue, worker, started, lease_until) for row in reply[2:]]


def claimed_job(row: Sequence[Any], queue: str, worker: str, started: float, lease_until: float) -> Job:
    """One claimed job from its reply row (see CLAIM_REPLY)."""
    if len(row) == _WIDTH:
        try:
            return _fast_job(row, queue, worker, started, lease_until)
        except (ValueError, TypeError, AttributeError, OverflowError):
            pass
    data = pairs_to_dict(row[_WIDTH]) if len(row) > _WIDTH else {}  # a job with parents: its hash came too
    for name, value in zip(CLAIM_REPLY, row, strict=False):
        if value is not None and (name not in data or name in ("attempts", "max_attempts", "token")):
            data[name] = str(value)
    data.update(queue=queue, state=JobState.RUNNING.value, worker=worker,
                started_at=f"{started * 1e6:.0f}", lease_until=f"{lease_until * 1e6:.0f}")
    return job_from_hash(data, str(row[_WIDTH - 2]))


def _fast_job(row: Sequence[Any], queue: str, worker: str, started: float, lease_until: float) -> Job:
    (name, raw_args, raw_kwargs, attempts, max_attempts, priority, timeout, bo_base, bo_cap, bo_jitter,
     run_at, created_at, unique_key, lk, lm, ev, tp, rk, rr, _parents, job_id, token) = row
    if not name:
        raise ValueError("no name")
    args, kwargs = loads(raw_args) if raw_args else [], loads(raw_kwargs) if raw_kwargs else {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("args or kwargs of the wrong type")
    seconds = None if timeout is None or timeout == "" else float(timeout)
    backoff = Backoff(float(bo_base or 1.0), float(bo_cap or 300.0), float(bo_jitter or 0.25))
    job = Job(
        id=str(job_id), name=name, queue=queue, args=args, kwargs=kwargs, state=JobState.RUNNING,
        attempts=int(attempts or 0), max_attempts=int(max_attempts or 1), priority=int(priority or 0),
        timeout=seconds, backoff=backoff, run_at=us_to_s(run_at), created_at=us_to_s(created_at) or 0.0,
        started_at=started, worker=worker, token=token, lease_until=lease_until,
        unique_key=unique_key or None, limit_key=lk or None, limit=int(lm) if lm else None,
        events=ev == "1", trace=tp or None, rate_key=rk or None, rate=rr or None,
    )
    if not math.isfinite(job.created_at + (job.run_at or 0.0) + (seconds or 0.0) + sum(backoff.bounds(1))):
        raise ValueError("a number that is not finite")
    return job
