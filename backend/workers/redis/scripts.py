"""The Lua/Python boundary: one description per script of `lua/`.

A description (`Script`) names the script, its keys (fields of `QueueKeys`, or `RedisKeys` for the
registry, in KEYS order), its argument record and its reply parser; nothing else builds ARGV or
reads a reply by position.

Arguments are NamedTuples of wire values, in `script_args.py`.

Each script's source is a generated prelude, then `lib.lua` (per-queue scripts), then its file. The
prelude holds what Python and Lua share, written once here or in `rules.py`: `K` (the script's keys
by name), `WIDTH` (fields per record), BUCKETS, PRIORITY_SPAN, MAX_PRIORITY, ERROR_HISTORY,
ERROR_MAX_BYTES, HISTORY_MINUTES, LOST_CLAIM_CAP, DEFAULT_MAX_ATTEMPTS, DEFAULT_JITTER (the default
backoff's) and the codes (`CODE`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from importlib import resources
from typing import Any, Generic, TypeVar

from backend.workers.job_store import (
    IllegalTransitionError,
    JobNotFoundError,
    JobStoreError,
    UniqueKeyHeldError,
)
from backend.workers.models import Job, JobSpec, JobState
from backend.workers.redis.claim_codec import CLAIM_FIELDS
from backend.workers.redis.codec import job_from_hash, new_job, pairs_to_dict
from backend.workers.redis.keys import QueueKeys, RedisKeys
from backend.workers.redis.script_args import (
    AdvertiseArgs,
    AdvertiseItem,
    BulkArgs,
    ClaimArgs,
    ClaimCall,
    ClaimRef,
    ConfirmArgs,
    EnqueueArgs,
    EnqueueItem,
    ExtendArgs,
    FinishArgs,
    FinishItem,
    HandlerName,
    HeartbeatArgs,
    JobArgs,
    LimitArgs,
    NoArgs,
    PauseArgs,
    ProgressArgs,
    PurgeArgs,
    RecoverArgs,
    ReleaseArgs,
    SetAsideArgs,
    TidyArgs,
    WorkerField,
    WorkersArgs,
)
from backend.workers.rules import (
    DEFAULT_MAX_ATTEMPTS,
    DURATION_BUCKETS,
    ERROR_HISTORY,
    ERROR_MAX_BYTES,
    HISTORY_MINUTES,
    LOST_CLAIM_CAP,
    MAX_PRIORITY,
    PRIORITY_SPAN,
    Backoff,
    InvalidJobError,
)


class Code(StrEnum):
    """Reply codes of the scripts (Lua: CODE.OK, CODE.NOT_FOUND, ...)."""

    OK = "ok"
    NOT_FOUND = "not_found"  # no such job
    ILLEGAL = "illegal"  # the job's state does not allow the transition; detail = that state
    STALE = "stale"  # per report (finish): the claim token is no longer current; nothing changed
    CORRUPT = "corrupt"  # the job's record could not be read: it was set aside (failed, CorruptRecord)
    CONFLICT = "conflict"  # retry: another live job holds the unique_key; detail = its id


# What each error code raises: (job id, detail, action) -> the contract's exception.
ERRORS: dict[Code, Callable[[str, str, str], JobStoreError]] = {
    Code.NOT_FOUND: lambda job_id, detail, action: JobNotFoundError(f"no job {job_id}"),
    Code.ILLEGAL: lambda job_id, detail, action: IllegalTransitionError(job_id, detail, action),
    Code.CONFLICT: lambda job_id, detail, action: UniqueKeyHeldError(job_id, detail, action),
}


# -- replies -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnqueueReply:
    """One enqueue call's reply: the server time its jobs were created at (µs), whether the queue was
    new (or emptied by tidy: list it again), and per job what enqueue.lua returned for it."""

    now_us: int
    fresh: bool
    rows: list[Any]

    def jobs(self, specs: Sequence[JobSpec], items: Sequence[EnqueueItem]) -> list[Job]:
        """The jobs the rows stand for, in order: each created one built from its spec (read from its
        hash when the script sent it: a job with parents, whose state the script decided), each
        existing one from its hash."""
        now = self.now_us
        jobs = []
        for spec, item, row in zip(specs, items, self.rows, strict=True):
            if type(row) is int:  # created, enqueued, due now: its effective max_attempts
                jobs.append(new_job(spec, item.id, JobState.ENQUEUED, now, now, row))
            elif int(row[0]) == 0:
                jobs.append(job_from_hash(pairs_to_dict(row[1]), item.id))
            elif len(row) > 4:
                jobs.append(job_from_hash(pairs_to_dict(row[4]), item.id))
            else:
                jobs.append(new_job(spec, item.id, JobState(str(row[1])), now, int(row[2]), int(row[3])))
        return jobs


@dataclass(frozen=True, slots=True)
class ExtendReply:
    """Positions (0-based, as sent) of stale claims and of cancel-requested ones: per claim, not id."""
    stale: frozenset[int]
    cancel: frozenset[int]


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    existed: bool
    now_us: int


@dataclass(frozen=True, slots=True)
class WorkersReply:
    now_us: float
    workers: list[tuple[str, dict[str, str]]]


def _enqueued(raw: Any, args: EnqueueArgs) -> EnqueueReply:
    rows = raw[2:]
    for row in rows:
        if type(row) is not int and int(row[0]) == 2:
            raise InvalidJobError(f"depends_on: no job {row[1]} in queue {args.queue} "
                                  "(a job depends only on jobs of its own queue)")
    return EnqueueReply(int(raw[0]), int(raw[1]) == 1, rows)


def _claimed(raw: Any, args: ClaimArgs) -> list[Any]:
    return list(raw)  # {start, lease until, rows...}: claim_codec.claimed_jobs decodes it


def _positions(raw: Any, args: Any) -> frozenset[int]:  # 1-based positions -> 0-based
    return frozenset(int(i) - 1 for i in raw)


def _finished(raw: Any, args: FinishArgs) -> list[JobState | None]:  # a set-aside run (CORRUPT) failed
    return [None if reply == Code.STALE else JobState.FAILED if reply == Code.CORRUPT else JobState(reply)
            for reply in raw]


def _extended(raw: Any, args: ExtendArgs) -> ExtendReply:
    stale, cancel = raw
    return ExtendReply(_positions(stale, args), _positions(cancel, args))


def _count(raw: Any, args: Any) -> int:
    return int(raw)


def _tidied(raw: Any, args: TidyArgs) -> tuple[int, bool]:  # (names dropped, queue emptied)
    return int(raw[0]), int(raw[1]) == 1


def _flag(raw: Any, args: Any) -> bool:
    return int(raw) == 1


def _wait_us(raw: Any, args: NoArgs) -> int | None:
    wait = int(raw)
    return wait if wait >= 0 else None


def _job_hash(action: str) -> Callable[[Any, JobArgs], dict[str, str]]:
    def parse(raw: Any, args: JobArgs) -> dict[str, str]:
        code = Code(raw[0])
        if code is not Code.OK:
            raise ERRORS[code](args.job_id, str(raw[1]) if len(raw) > 1 else "", action)
        return pairs_to_dict(raw[1])

    return parse


def _heartbeat(raw: Any, args: HeartbeatArgs) -> HeartbeatResult:
    existed, now = raw
    return HeartbeatResult(int(existed) == 1, int(now))


def _workers(raw: Any, args: WorkersArgs) -> WorkersReply:
    return WorkersReply(float(raw[0]), [(str(wid), pairs_to_dict(flat)) for wid, flat in raw[1:]])


# -- descriptions --------------------------------------------------------------------------------

A = TypeVar("A", bound=tuple[Any, ...])
R = TypeVar("R")


@dataclass(frozen=True)
class Script(Generic[A, R]):
    name: str  # lua/<name>.lua
    keys: tuple[str, ...]  # fields of QueueKeys (per-queue) or RedisKeys (registry), KEYS order
    args: type[A]
    parse: Callable[[Any, A], R]
    item: type[tuple[Any, ...]] | None = None  # the record type of `args.items`
    registry: bool = False  # keys from RedisKeys, no lib.lua
    fields: tuple[str, ...] = ()  # hash fields the script reads by position: FIELDS and F (name -> index)

    def key_values(self, holder: QueueKeys | RedisKeys) -> list[str]:
        return [getattr(holder, key) for key in self.keys]

    @cached_property
    def source(self) -> str:
        lua = resources.files("backend.workers.redis").joinpath("lua")
        lib = "" if self.registry else lua.joinpath("lib.lua").read_text() + "\n"
        return prelude(self) + lib + lua.joinpath(f"{self.name}.lua").read_text()


def prelude(script: Script[Any, Any]) -> str:
    """The Lua constants of one script, generated from Python."""
    keys = ", ".join(f"{key} = KEYS[{i}]" for i, key in enumerate(script.keys, 1))
    codes = ", ".join(f"{code.name} = '{code.value}'" for code in Code)
    width = len(getattr(script.item, "_fields", ()))
    return "\n".join([
        f"-- prelude of {script.name}.lua, generated by backend/workers/redis/scripts.py",
        "local unpack = unpack or table.unpack",
        f"local K = {{{keys}}}",
        f"local WIDTH = {width}",
        f"local BUCKETS = {{{', '.join(repr(float(b)) for b in DURATION_BUCKETS)}}}",
        f"local PRIORITY_SPAN = {PRIORITY_SPAN}",
        f"local MAX_PRIORITY = {MAX_PRIORITY}",
        f"local ERROR_HISTORY, ERROR_MAX_BYTES = {ERROR_HISTORY}, {ERROR_MAX_BYTES}",
        f"local HISTORY_MINUTES = {HISTORY_MINUTES}",
        f"local LOST_CLAIM_CAP = {LOST_CLAIM_CAP}",
        f"local DEFAULT_MAX_ATTEMPTS, DEFAULT_JITTER = {DEFAULT_MAX_ATTEMPTS}, '{Backoff().jitter!r}'",
        f"local CODE = {{{codes}}}",
        f"local FIELDS = {{{', '.join(repr(name) for name in script.fields)}}}",
        f"local F = {{{', '.join(f'{name} = {i}' for i, name in enumerate(script.fields, 1))}}}",
        "",
    ])


# what the paths that leave `running` (fail_running, leave_running) touch
_LEAVE = ("job_prefix", "ready", "waiting", "running", "state_prefix", "unique", "stats", "wake")

ENQUEUE = Script("enqueue", ("job_prefix", "ready", "waiting", "state_prefix", "jobs", "unique", "stats",
                             "wake", "seq", "hpolicy", "history", "deps_prefix"), EnqueueArgs, _enqueued,
                 EnqueueItem)
CLAIM = Script("claim", (*_LEAVE, "seq", "limit_prefix", "parked", "hlimits", "events", "paused", "hpolicy",
                         "history", "deps_prefix", "rate_prefix", "hrates", "qrate", "unconfirmed_prefix"),
               ClaimArgs, _claimed, fields=CLAIM_FIELDS)
FINISH = Script("finish", (*_LEAVE, "limit_prefix", "parked", "events", "jobs", "handlers", "history", "seq",
                           "deps_prefix"),
                FinishArgs, _finished, FinishItem)
EXTEND = Script("extend", ("job_prefix", "running"), ExtendArgs, _extended, ClaimRef)
CONFIRM = Script("confirm", ("unconfirmed_prefix",), ConfirmArgs, _positions, ClaimCall)
RELEASE = Script("release", ("job_prefix", "ready", "running", "state_prefix", "unique", "wake",
                             "limit_prefix", "parked", "events"), ReleaseArgs, _count, ClaimRef)
RECOVER = Script("recover", ("job_prefix", "ready", "waiting", "running", "state_prefix", "unique",
                             "stats", "wake", "limit_prefix", "parked", "events", "history", "seq",
                             "deps_prefix", "unconfirmed_prefix"), RecoverArgs, _count)
PROMOTE = Script("promote", ("job_prefix", "ready", "waiting", "state_prefix", "wake", "seq"),
                 LimitArgs, _count)
_CANCEL_KEYS = ("job_prefix", "ready", "waiting", "state_prefix", "unique", "limit_prefix", "parked",
                "events", "wake", "seq", "deps_prefix")
_RETRY_KEYS = ("job_prefix", "ready", "state_prefix", "unique", "wake", "seq")
CANCEL = Script("cancel", _CANCEL_KEYS, JobArgs, _job_hash("cancel"))
RETRY = Script("retry", _RETRY_KEYS, JobArgs, _job_hash("retry"))
# the transitions of CANCEL and RETRY (cancel_job, retry_job in lib.lua) applied to many ids
CANCEL_MANY = Script("cancel_many", _CANCEL_KEYS, BulkArgs, _count, JobArgs)
RETRY_MANY = Script("retry_many", _RETRY_KEYS, BulkArgs, _count, JobArgs)
PAUSE = Script("pause", ("paused", "wake"), PauseArgs, _flag)
SETASIDE = Script("setaside", (*_LEAVE, "limit_prefix", "parked", "events", "history", "seq", "deps_prefix"),
                  SetAsideArgs, _flag)
PURGE = Script("purge", ("job_prefix", "state_prefix", "jobs", "unique", "stats", "history"), PurgeArgs,
               _count)
TIDY = Script("tidy", ("stats", "jobs", "ready", "waiting", "running", "parked", "seq", "wake", "hlimits",
                       "state_prefix", "unique", "paused", "hrates", "qrate"), TidyArgs, _tidied, HandlerName)
WAKEUP = Script("wakeup", ("waiting", "running"), NoArgs, _wait_us)
PROGRESS = Script("progress", ("job_prefix", "events"), ProgressArgs, _flag)
UNPARK = Script("unpark", ("job_prefix", "ready", "wake", "limit_prefix", "parked", "hlimits"),
                LimitArgs, _count)
HEARTBEAT = Script("heartbeat", ("registry", "worker_prefix"), HeartbeatArgs, _heartbeat, WorkerField,
                   registry=True)
ADVERTISE = Script("advertise", ("handlers", "hpolicy"), AdvertiseArgs, _count, AdvertiseItem)
WORKERS = Script("workers", ("registry", "worker_prefix"), WorkersArgs, _workers, registry=True)

SCRIPTS: dict[str, Script[Any, Any]] = {
    script.name: script
    for script in (ENQUEUE, CLAIM, FINISH, EXTEND, CONFIRM, RELEASE, RECOVER, PROMOTE, CANCEL, RETRY,
                   SETASIDE, PURGE, TIDY, WAKEUP, PROGRESS, UNPARK, HEARTBEAT, WORKERS, CANCEL_MANY,
                   RETRY_MANY, PAUSE, ADVERTISE)
}
