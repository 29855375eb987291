"""The rules every job follows, whatever store holds it: what a valid spec is, how retries back
off, how run durations are bucketed, and how payloads are encoded (JSON only).

Payloads are JSON only: a queue that unpickles what it finds in Redis lets anyone who can write
to Redis run code in every worker. The Lua scripts read their constants from here (see
`redis/scripts.py`), so Python and Lua cannot disagree on them.
"""

from __future__ import annotations

import math
import os
import random
import re
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson

from backend.workers.rates import InvalidRateError, parse_rate

# Upper bounds (seconds) of the run-duration histogram; +Inf is implied.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT = 300.0
MAX_PRIORITY = 1000
# Enqueue sequence numbers per priority level: ready score = (MAX_PRIORITY - priority) * PRIORITY_SPAN + seq
PRIORITY_SPAN = 2**40
# A job keeps the errors of its last ERROR_HISTORY failed attempts (Job.errors, oldest first), each
# at most ERROR_MAX_BYTES of JSON (a longer one keeps its type and a note; last_error has it whole).
ERROR_HISTORY = 10
ERROR_MAX_BYTES = 16_384
# Each queue keeps per-minute run counts and duration buckets of its last HISTORY_MINUTES minutes.
HISTORY_MINUTES = 180
# How often one job's expired claim may be given back uncounted because its worker never confirmed
# it (a lost claim reply, a worker dead before its first extend); after that such expiries are charged,
# so a job that kills its worker before the confirm cannot go round for ever.
LOST_CLAIM_CAP = 3
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class InvalidJobError(ValueError):
    """A job spec that can never be stored: bad name, id, queue, or non-JSON payload."""


def new_job_id() -> str:
    """128 random bits in 32 hex digits (uuid4().hex's shape, without its cost)."""
    return os.urandom(16).hex()


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _ID_RE.fullmatch(job_id):
        raise InvalidJobError(f"invalid job id {job_id!r}: use 1-64 of A-Z a-z 0-9 _ -")
    return job_id


def validate_queue(queue: str) -> str:
    if not isinstance(queue, str) or not _QUEUE_RE.fullmatch(queue):
        raise InvalidJobError(f"invalid queue name {queue!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    return queue


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidJobError(f"invalid handler name {name!r}: use 1-128 of A-Z a-z 0-9 _ . : -")
    return name


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter and a cap: delay = min(cap, base * 2**(attempt-1)) * (1 - jitter*r)."""

    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or not 0 <= self.jitter <= 1:
            raise InvalidJobError(f"invalid backoff {self}: base, cap >= 0 and 0 <= jitter <= 1")

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay after failed attempt number `attempt` (1-based)."""
        full = min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        return full * (1.0 - self.jitter), full

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        low, high = self.bounds(attempt)
        r = (rng or random).random()
        return high - (high - low) * r


class SpecFields(Protocol):
    """The fields of a job spec the rules look at (models.JobSpec has them)."""

    name: str
    queue: str
    id: str | None
    args: Any
    kwargs: Any
    priority: int
    max_attempts: int | None
    timeout: float | None
    delay: float | None
    unique_key: str | None
    limit_key: str | None
    limit: int | None
    rate_key: str | None
    rate: str | None


S = TypeVar("S", bound=SpecFields)


def validate_spec(spec: S) -> S:
    """Raise InvalidJobError naming the first field that can never be stored."""
    encode_spec(spec)
    return spec


def encode_spec(spec: SpecFields) -> tuple[bytes, bytes]:
    """`validate_spec`'s checks, returning the args and kwargs JSON they encode: an enqueue encodes
    its payload once."""
    validate_name(spec.name)
    validate_queue(spec.queue)
    if spec.id is not None:
        validate_job_id(spec.id)
    if not isinstance(spec.args, list):
        raise InvalidJobError("args must be a JSON list")
    if not isinstance(spec.kwargs, dict):
        raise InvalidJobError("kwargs must be a JSON object")
    args, kwargs = check_json("args", spec.args), check_json("kwargs", spec.kwargs)
    if not -MAX_PRIORITY <= spec.priority <= MAX_PRIORITY:
        raise InvalidJobError(f"priority must be within ±{MAX_PRIORITY}")
    if spec.max_attempts is not None and not (isinstance(spec.max_attempts, int) and spec.max_attempts >= 1):
        raise InvalidJobError("max_attempts must be at least 1")
    if spec.timeout is not None and spec.timeout <= 0:
        raise InvalidJobError("timeout must be positive")
    if spec.delay is not None and spec.delay < 0:
        raise InvalidJobError("delay must not be negative")
    if spec.unique_key is not None and not 0 < len(spec.unique_key) <= 200:
        raise InvalidJobError("unique_key must be 1-200 characters")
    if (spec.limit_key is None) != (spec.limit is None):
        raise InvalidJobError("limit_key and limit go together")
    if spec.limit_key is not None and not 0 < len(spec.limit_key) <= 200:
        raise InvalidJobError("limit_key must be 1-200 characters")
    if spec.limit is not None and not (isinstance(spec.limit, int) and spec.limit >= 1):
        raise InvalidJobError("limit must be a positive integer")
    _validate_parents(spec)
    _validate_rate(spec)
    return args, kwargs


MAX_PARENTS = 10_000  # a batch's callback depends on every job of the batch


def _validate_parents(spec: Any) -> None:
    parents = getattr(spec, "depends_on", None) or []
    if not isinstance(parents, list) or len(parents) > MAX_PARENTS:
        raise InvalidJobError(f"depends_on must be a list of at most {MAX_PARENTS} job ids")
    for parent in parents:
        if not isinstance(parent, str) or not _ID_RE.fullmatch(parent):
            raise InvalidJobError(f"depends_on: invalid job id {parent!r}: use 1-64 of A-Z a-z 0-9 _ -")
    if spec.id is not None and spec.id in parents:
        raise InvalidJobError(f"depends_on: job {spec.id} cannot depend on itself")


def _validate_rate(spec: SpecFields) -> None:
    if (spec.rate_key is None) != (spec.rate is None):
        raise InvalidJobError("rate_key and rate go together")
    if spec.rate_key is not None and not (isinstance(spec.rate_key, str) and 0 < len(spec.rate_key) <= 200):
        raise InvalidJobError("rate_key must be 1-200 characters")
    if spec.rate is not None:
        try:
            parse_rate(spec.rate)
        except InvalidRateError as exc:
            raise InvalidJobError(str(exc)) from None


def check_json(field_name: str, value: Any) -> bytes:
    """Encode `value` as JSON, or raise an error that names the offending field.

    orjson writes NaN and ±Infinity as `null`: a payload holding one would be stored changed, so
    it is refused. The walk only runs when the output holds a `null` (free on the usual path)."""
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:
        path = _find_non_json(value, field_name)
        raise InvalidJobError(f"{path} is not JSON-serializable: {exc}") from None
    if b"null" in encoded and (where := _find_non_finite(value, field_name)) is not None:
        raise InvalidJobError(f"{where} is not a finite number (NaN and Infinity are not JSON)")
    return encoded


def _find_non_finite(value: Any, path: str) -> str | None:
    """The path of the first NaN or ±Infinity in `value`, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items: Any = ((f"{path}.{key}", item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for sub, item in items:
        if (found := _find_non_finite(item, sub)) is not None:
            return found
    return None


def _find_non_json(value: Any, path: str) -> str:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} key {key!r}"
            try:
                orjson.dumps(item)
            except TypeError:
                return _find_non_json(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            try:
                orjson.dumps(item)
            except TypeError:
                return _find_non_json(item, f"{path}[{index}]")
    return path


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(raw: str | bytes | None) -> Any:
    return None if raw is None or raw == "" else orjson.loads(raw)
