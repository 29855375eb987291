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

from backend.workers.models import (
    AttemptError,
    Job,
    JobError,
    JobSpec,
    JobState,
    QueueMetrics,
    ScheduleInfo,
)
from backend.workers.rates import canonical_rate
from backend.workers.rules import (
    DURATION_BUCKETS,
    ERROR_HISTORY,
    Backoff,
    InvalidJobError,
    loads,
)

log = logging.getLogger("bagbot.store")
T = TypeVar("T")
D = TypeVar("D")


def pairs_to_dict(flat: Sequence[Any]) -> dict[str, str]:
    """HGETALL as a Lua script returns it (a flat list) -> dict."""
    return dict(zip(map(str, flat[::2]), map(str, flat[1::2]), strict=False))


def us_to_s(raw: str | int | None) -> float | None:
    if raw is None or raw == "":
        return None
    return float(raw) / 1e6


def s_to_us(seconds: float) -> int:
    return round(seconds * 1e6)


def finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def integer(raw: str) -> int:
    return int(finite(raw))


def _json_of(kind: type) -> Callable[[str], Any]:
    def decode(raw: str) -> Any:
        value = loads(raw)
        if not isinstance(value, kind):
            raise ValueError(raw)
        return value

    return decode


class Fields:
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
        value = self.read(field, finite, None)
        return None if value is None else value / 1e6


def job_from_hash(data: Mapping[str, str], job_id: str = "") -> Job:
    """The job a hash holds; fields that cannot be read are listed in `Job.unreadable`.

    The strict reading is tried first (it is on every claim's path); only a record it refuses is
    read again field by field."""
    try:
        job = _strict_job(data)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        job = _tolerant_job(data, job_id)
    if "parents" in data:  # only jobs enqueued with depends_on pay for this
        _read_parents(job, data)
    return job


def _read_parents(job: Job, data: Mapping[str, str]) -> None:
    """The dependency fields (lua/lib.lua resolve_kids): parents, and each finished one's end state
    and result. A result that cannot be read is left out and noted in `unreadable`."""
    job.depends_on = data["parents"].split()
    job.run_on_failure = data.get("rof") == "1"
    for parent in job.depends_on:
        if (state := data.get("p|" + parent)) is not None:
            job.parent_states[parent] = state
        if (raw := data.get("r|" + parent)) is not None:
            try:
                job.parent_results[parent] = loads(raw)
            except ValueError:
                job.unreadable["r|" + parent] = raw[:80]


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
        errors=attempt_errors(data.get("errors")),
        limit_key=data.get("lk") or None,
        limit=int(data["lm"]) if data.get("lm") else None,
        events=data.get("ev") == "1",
        progress=progress,
        progress_message=data.get("progress_msg") if progress is not None else None,
        cancel_requested=data.get("cancel_req") == "1",
        trace=data.get("tp") or None,
        rate_key=data.get("rk") or None,
        rate=data.get("rr") or None,
    )
    times = (job.run_at, job.started_at, job.finished_at, job.lease_until, timeout, progress)
    total = job.created_at + sum(t for t in times if t is not None) + sum(job.backoff.bounds(1))
    if not math.isfinite(total):
        raise ValueError("a number that is not finite")  # NaN and ±Infinity propagate through the sum
    return job


def _opt_float(raw: str | None) -> float | None:
    return None if raw is None or raw == "" else float(raw)


def _tolerant_job(data: Mapping[str, str], job_id: str) -> Job:
    f = Fields(data)
    defaults = Backoff()
    state = f.read("state", JobState, JobState.ENQUEUED)
    if "state" not in data:
        f.bad["state"] = ""
    for required in ("id", "name"):
        if not data.get(required) and (required == "name" or not job_id):
            f.bad[required] = ""
    try:
        backoff = Backoff(f.read("bo_base", finite, defaults.base), f.read("bo_cap", finite, defaults.cap),
                          f.read("bo_jitter", finite, defaults.jitter))
    except InvalidJobError:
        backoff, f.bad["bo_base"] = defaults, str(data.get("bo_base"))[:80]
    last_error = f.read("last_error", _json_of(dict), None)
    progress = f.read("progress", finite, None)
    return Job(
        id=data.get("id") or job_id,
        name=data.get("name", ""),
        queue=data.get("queue", ""),
        args=f.read("args", _json_of(list), []),
        kwargs=f.read("kwargs", _json_of(dict), {}),
        state=state,
        attempts=f.read("attempts", integer, 0),
        max_attempts=f.read("max_attempts", integer, 1),
        priority=f.read("priority", integer, 0),
        timeout=f.read("timeout", finite, None),
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
        errors=attempt_errors(data.get("errors")),
        limit_key=data.get("lk") or None,
        limit=f.read("lm", integer, None),
        events=data.get("ev") == "1",
        progress=progress,
        progress_message=data.get("progress_msg") if progress is not None else None,
        cancel_requested=data.get("cancel_req") == "1",
        trace=data.get("tp") or None,
        unreadable=f.bad,
        rate_key=data.get("rk") or None,
        rate=data.get("rr") or None,
    )


def attempt_errors(raw: str | None) -> list[AttemptError]:
    """The job's error history (lib.lua record_error: "<attempt> <time µs> <error json>" per line).
    Never raises: a line that cannot be read is skipped, and a record written before the history
    existed has none (its last_error is still there)."""
    found: list[AttemptError] = []
    for line in (raw or "").splitlines()[-ERROR_HISTORY:]:  # a hand-edited field may hold more
        attempt, at, payload = [*line.split(" ", 2), "", ""][:3]
        try:
            error = JobError.from_json(_json_of(dict)(payload))
            if error is not None:
                found.append(AttemptError(integer(attempt), finite(at) / 1e6, error))
        except (ValueError, TypeError, OverflowError):
            continue
    return found


_DEFAULT_BACKOFF = Backoff()  # frozen: every job that set none can share it


def new_job(spec: JobSpec, job_id: str, state: JobState, created_us: int, run_at_us: int,
            max_attempts: int) -> Job:
    """The record enqueue.lua just wrote, rebuilt without reading it back (`max_attempts`: its
    effective value, the handler's when the spec set none)."""
    return Job(
        id=job_id,
        name=spec.name,
        queue=spec.queue,
        args=spec.args,
        kwargs=spec.kwargs,
        state=state,
        max_attempts=max_attempts,
        priority=spec.priority,
        timeout=spec.timeout,
        backoff=spec.backoff or _DEFAULT_BACKOFF,
        run_at=run_at_us / 1e6,
        created_at=created_us / 1e6,
        unique_key=spec.unique_key,
        limit_key=spec.limit_key,
        limit=spec.limit,
        events=spec.events,
        trace=spec.trace,
        rate_key=spec.rate_key,
        rate=canonical_rate(spec.rate) if spec.rate is not None else None,
    )


def parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    score, sep, job_id = cursor.partition(":")
    try:
        if not sep:
            raise ValueError
        return finite(score), job_id
    except ValueError:
        raise InvalidJobError(f"invalid cursor {cursor!r}") from None


def format_cursor(after: tuple[float, str]) -> str:
    return f"{after[0]:.0f}:{after[1]}"


def readable_schedules(values: Iterable[str]) -> Iterator[ScheduleInfo]:
    """Declared schedules, skipping (with a warning) any value this version cannot read."""
    for value in values:
        try:
            yield ScheduleInfo.from_json(loads(value))
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("skipping an unreadable schedule declaration: %r", value[:200])


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
        metrics.duration_sum[rest] = finite(raw)


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value
