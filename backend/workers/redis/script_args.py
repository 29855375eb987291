"""The arguments of the scripts of `lua/`: one NamedTuple of wire values per script.

Their fields, in order, are the script's ARGV. A last field `items` (records of one NamedTuple type)
is sent as its count followed by each record's fields; the Lua side reads a record with
`local <its fields> = unpack(ARGV, b, b + WIDTH - 1)`. Descriptions and replies: `scripts.py`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
from redis.exceptions import DataError

from backend.workers.models import Completion, HandlerPolicy, JobSpec, WorkerInfo
from backend.workers.rates import canonical_rate
from backend.workers.redis.codec import s_to_us
from backend.workers.rules import InvalidJobError, check_json, dumps, encode_spec, new_job_id


def _float(value: float) -> str:
    return repr(float(value))


class EnqueueItem(NamedTuple):
    """One new job, as enqueue.lua reads it: what every job has, then the options it sets in one
    field, so a plain job costs five arguments and a hash of the fields its readers need."""

    id: str
    name: str
    args: bytes  # JSON; b'' = [] (not stored)
    kwargs: bytes  # JSON; b'' = {} (not stored)
    opts: bytes  # b'' = none set, else a JSON object of strings (see options())

    @classmethod
    def from_spec(cls, spec: JobSpec) -> EnqueueItem:
        """Validate a spec (errors reach the caller now) and turn it into enqueue.lua's fields."""
        args, kwargs = encode_spec(spec)
        return cls(spec.id or new_job_id(), spec.name, b"" if args == b"[]" else args,
                   b"" if kwargs == b"{}" else kwargs, options(spec))


def options(spec: JobSpec) -> bytes:
    """enqueue.lua's opts: the options the spec sets, by the hash field that stores each (a default
    is left out: its readers default it), plus delay / at (µs) and deps."""
    opts = _run_options(spec) | _key_options(spec)
    if not opts:
        return b""
    try:
        return orjson.dumps(opts)
    except TypeError as exc:  # a lone surrogate: not text Redis can hold
        bad = next((key for key, value in opts.items() if not _is_text(value)), "an option")
        raise InvalidJobError(f"{_OPTION_NAMES.get(bad, bad)} must be valid text: {exc}") from None


def _run_options(spec: JobSpec) -> dict[str, str]:
    """How and when it runs: priority, max_attempts, timeout, backoff, delay or run_at."""
    opts: dict[str, str] = {}
    if spec.priority:
        opts["priority"] = _number(spec.priority)
    if spec.max_attempts is not None:
        opts["max_attempts"] = _number(spec.max_attempts)
    if spec.timeout is not None:
        opts["timeout"] = _float(spec.timeout)
    if spec.backoff is not None:
        bo = spec.backoff
        opts.update(bo_base=_float(bo.base), bo_cap=_float(bo.cap), bo_jitter=_float(bo.jitter))
    if spec.delay is not None:
        opts["delay"] = str(s_to_us(spec.delay))
    elif spec.run_at is not None:
        opts["at"] = str(s_to_us(spec.run_at))
    return opts


def _key_options(spec: JobSpec) -> dict[str, str]:
    """What it is tied to: unique, limit and rate keys, events, trace context, parents."""
    opts: dict[str, str] = {}
    if spec.unique_key:
        opts["unique_key"] = spec.unique_key
    if spec.limit_key:
        opts.update(lk=spec.limit_key, lm=_number(spec.limit if spec.limit is not None else ""))
    if spec.events:
        opts["ev"] = "1"
    if spec.trace:
        opts["tp"] = spec.trace
    if spec.depends_on:
        opts["deps"] = _deps(spec)
    if spec.rate_key:
        opts.update(rk=spec.rate_key, rr="" if spec.rate is None else canonical_rate(spec.rate))
    return opts


_OPTION_NAMES = {"lk": "limit_key", "tp": "trace", "rk": "rate_key", "deps": "depends_on"}


def _is_text(value: object) -> bool:
    try:
        str(value).encode()
    except UnicodeEncodeError:
        return False
    return True


def _number(value: int | str) -> str:
    """A number as redis-py sent it when it was an argument of its own (a bool is refused the same way)."""
    if isinstance(value, bool):
        raise DataError("Invalid input of type: 'bool'. Convert to a bytes, string, int or float first.")
    return value if isinstance(value, str) else repr(value)


def _deps(spec: JobSpec) -> str:
    """enqueue.lua's deps field: '' or "<run_on_failure 1|0> <parent id> ..." (each parent once)."""
    if not spec.depends_on:
        return ""
    return " ".join([str(int(spec.run_on_failure)), *dict.fromkeys(spec.depends_on)])


class EnqueueArgs(NamedTuple):
    queue: str
    items: Sequence[EnqueueItem]


class ClaimArgs(NamedTuple):
    worker_id: str
    limit: int
    lease_us: int
    housekeeping_limit: int
    seed: float
    nonce: str  # unique per call: claim tokens never repeat


class FinishItem(NamedTuple):
    """One finished run, as finish.lua reads it."""

    job_id: str
    token: str
    ok: int  # 1 success, 0 error, 2 cancelled, 3 no handler here: hand back (or fail UnknownHandler)
    payload: bytes  # result JSON | error JSON | b'' when cancelled
    duration: str  # seconds
    # A failure's retry inputs in one field, so a success pays no extra argument: '' unless ok = 0,
    # else "retryable delay_us max_attempts bo_base bo_cap bo_jitter" ('-' = none: the job's own);
    # ok = 3: "grace_us delay_us" (see hand_back in lib.lua).
    policy: str

    @classmethod
    def from_completion(cls, item: Completion) -> FinishItem:
        policy = ""
        if item.cancelled:
            ok, payload = 2, b""
        elif item.error is None:  # a handler that returns nothing (the common case) is not encoded
            ok, payload = 1, b"null" if item.result is None else check_json("result", item.result)
        elif item.unknown_grace is not None:
            ok, payload = 3, dumps(item.error.to_json()).encode()
            policy = f"{s_to_us(item.unknown_grace)} {s_to_us(hand_back_delay(item.unknown_grace))}"
        else:
            ok, payload, policy = 0, dumps(item.error.to_json()).encode(), _failure_policy(item)
        return cls(item.claim.job_id, item.claim.token, ok, payload, _float(item.duration), policy)


def _failure_policy(item: Completion) -> str:
    bo = item.backoff
    backoff = "- - -" if bo is None else f"{_float(bo.base)} {_float(bo.cap)} {_float(bo.jitter)}"
    delay = -1 if item.retry_delay is None else s_to_us(item.retry_delay)
    cap = -1 if item.max_attempts is None else item.max_attempts
    return f"{1 if item.retryable else 0} {delay} {cap} {backoff}"


def hand_back_delay(grace: float) -> float:
    """How long a job handed back for lack of its handler waits before it may be claimed again: short,
    so a worker that has the handler gets it soon; not zero, so a worker without it does not spin."""
    return min(2.0, max(0.1, grace / 20))


def policy_value(policy: HandlerPolicy) -> str:
    """A handler's policy as the hpolicy hash holds it (keys.py; read by claim.lua and enqueue.lua)."""
    bo = policy.backoff
    backoff = "- - -" if bo is None else f"{_float(bo.base)} {_float(bo.cap)} {_float(bo.jitter)}"
    return f"{policy.max_attempts} {backoff}"


class AdvertiseItem(NamedTuple):
    name: str
    policy: str  # policy_value()


class AdvertiseArgs(NamedTuple):
    items: Sequence[AdvertiseItem]


class FinishArgs(NamedTuple):
    seed: float
    retention_us: int  # terminal jobs older than this are purged as runs finish; -1 = none
    items: Sequence[FinishItem]

    @classmethod
    def of(cls, retention_seconds: float, completions: Sequence[Completion]) -> FinishArgs:
        """A batch of reports; finish.lua also purges up to 2n + 2 jobs past `retention_seconds`."""
        reports = [FinishItem.from_completion(item) for item in completions]
        return cls(random.random(), s_to_us(retention_seconds), reports)


class ClaimRef(NamedTuple):
    job_id: str
    token: str


class ExtendArgs(NamedTuple):
    lease_us: int
    items: Sequence[ClaimRef]


class ReleaseArgs(NamedTuple):
    items: Sequence[ClaimRef]


class ProgressArgs(NamedTuple):
    job_id: str
    token: str
    value: str
    message: str


class LimitArgs(NamedTuple):
    """promote, unpark: at most `limit` jobs looked at."""

    limit: int


class RecoverArgs(NamedTuple):
    limit: int
    seed: float


class SetAsideArgs(NamedTuple):  # the job's claim, the field that could not be read and its value
    job_id: str
    token: str
    field: str
    value: str


class PurgeArgs(NamedTuple):
    older_than_us: int
    limit: int
    state: str = ""  # one terminal state, '' = all three


class BulkArgs(NamedTuple):
    """retry_many, cancel_many: the ids of one queue."""

    items: Sequence[JobArgs]


class ClaimCall(NamedTuple):
    nonce: str  # ClaimArgs.nonce: a claim token is "<nonce>.<n>"


class ConfirmArgs(NamedTuple):
    """confirm: the claim calls whose claims arrived."""

    items: Sequence[ClaimCall]


class PauseArgs(NamedTuple):
    paused: int  # 1 pause | 0 resume


class HandlerName(NamedTuple):
    name: str


class TidyArgs(NamedTuple):
    served: int  # 1: a live worker serves the queue
    known: int  # 0: some live worker did not say which handlers it has (keep every name)
    items: Sequence[HandlerName]  # the handler names live workers register

    @classmethod
    def of(cls, queue: str, workers: Sequence[WorkerInfo]) -> TidyArgs:
        names = sorted({name for worker in workers for name in worker.handlers or ()})
        known = all(worker.handlers is not None for worker in workers)
        served = any(queue in worker.queues for worker in workers)
        return cls(int(served), int(known), [HandlerName(name) for name in names])


class JobArgs(NamedTuple):
    """cancel, retry."""

    job_id: str


class NoArgs(NamedTuple):
    pass


class WorkerField(NamedTuple):
    field: str
    value: str | int


class HeartbeatArgs(NamedTuple):
    worker_id: str
    register: int  # 1 | 0
    items: Sequence[WorkerField]


class WorkersArgs(NamedTuple):
    stale_after_us: int  # -1 = keep all


def to_argv(args: tuple[Any, ...]) -> list[Any]:
    """A NamedTuple of arguments -> ARGV (a last field `items` becomes its count, then its records)."""
    argv = list(args)
    if getattr(args, "_fields", ())[-1:] == ("items",):
        items = argv.pop()
        argv.append(len(items))
        for item in items:
            argv.extend(item)
    return argv
