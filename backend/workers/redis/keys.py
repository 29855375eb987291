"""The only place Redis key names are built (scripts.py says which of them each script takes).

Layout (PREFIX defaults to "bagbot"; `{queue}` is a hash tag, so every key of
one queue lives in one Redis Cluster slot and each script touches one slot):

    PREFIX:{queue}:job:<id>      hash    one job (fields: see codec.py)
    PREFIX:{queue}:ready         zset    enqueued jobs; score = (MAX_PRIORITY - priority) * PRIORITY_SPAN
                                         + seq (both constants in rules.py)
    PREFIX:{queue}:waiting       zset    scheduled + retry_scheduled jobs; score = run_at (ms)
    PREFIX:{queue}:running       zset    running jobs; score = lease deadline (ms)
    PREFIX:{queue}:state:<state> zset    per-state index; score = when the job entered it (ms)
    PREFIX:{queue}:jobs          zset    every job; score = created_at (ms)
    PREFIX:{queue}:unique        hash    unique_key -> id of the live job holding it
    PREFIX:{queue}:stats         hash    metric counters and histogram buckets (prg|<name>: purged jobs)
    PREFIX:{queue}:wake          list    wake-up tokens that blocked workers BLPOP
    PREFIX:{queue}:seq           string  enqueue sequence (FIFO order)
    PREFIX:{queue}:limit:run:<k> set     running ids holding a slot of concurrency-limit key <k>
    PREFIX:{queue}:limit:wait:<k> zset   ids parked on key <k> (over its limit); score = ready score
    PREFIX:{queue}:parked        zset    every parked id of the queue; score = ready score
    PREFIX:{queue}:hlimits       hash    handler name -> at most N running (declared by workers)
    PREFIX:{queue}:hpolicy       hash    handler name -> "max_attempts bo_base bo_cap bo_jitter" ('-': none),
                                         the policy of jobs that set none of their own (workers advertise it)
    PREFIX:{queue}:handlers      hash    handler name -> when a live worker last advertised it (µs)
    PREFIX:{queue}:history       hash    runs, failed runs, duration buckets per minute (lua flush_history)
    PREFIX:{queue}:events        channel "<id> <state|progress|cancel_requested>" for opted-in jobs
    PREFIX:{queue}:paused        string  exists while the queue is paused: claim.lua claims nothing
    PREFIX:{queue}:deps:<id>     set     ids of the deferred jobs waiting for job <id> (lib.lua resolve_kids)
    PREFIX:{queue}:rate:<k>      string  rate-limit key <k> (h:<handler>, k:<rate_key>, q): the earliest
                                         time (µs) of its next start; expires then
    PREFIX:{queue}:hrates        hash    handler name -> rate ("100/m", declared by workers)
    PREFIX:{queue}:qrate         string  the queue's rate ("100/s", set by an operator)
    PREFIX:{queue}:unconfirmed:<nonce> string  '1' while the claims of one claim call (tokens "<nonce>.<n>")
                                         are unconfirmed, 'lost' once recovery met one; the worker's
                                         confirm deletes it; expires 2 × lease + 10 min after the claim
    PREFIX:queues                set     queues in use (tidy takes off those with no job and no worker)
    PREFIX:epoch                 string  a random marker of this data set (see reset.py)
    PREFIX:schedules             hash    schedule name -> ScheduleInfo JSON (declared by workers)
    PREFIX:{workers}:registry    zset    worker id -> last heartbeat (ms)
    PREFIX:{workers}:worker:<id> hash    one worker's details
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class QueueKeys:
    job_prefix: str
    ready: str
    waiting: str
    running: str
    state_prefix: str
    jobs: str
    unique: str
    stats: str
    wake: str
    seq: str
    limit_prefix: str
    parked: str
    hlimits: str
    events: str
    history: str
    paused: str
    hpolicy: str
    handlers: str
    deps_prefix: str
    unconfirmed_prefix: str
    rate_prefix: str
    hrates: str
    qrate: str

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def state(self, state: str) -> str:
        return self.state_prefix + state


class RedisKeys:
    def __init__(self, prefix: str = "bagbot") -> None:
        self.prefix = prefix
        self.queues = f"{prefix}:queues"
        self.registry = f"{prefix}:{{workers}}:registry"
        self.worker_prefix = f"{prefix}:{{workers}}:worker:"
        self.schedules = f"{prefix}:schedules"
        self.epoch = f"{prefix}:epoch"

    def worker(self, worker_id: str) -> str:
        return self.worker_prefix + worker_id

    def queue(self, queue: str) -> QueueKeys:
        return _queue_keys(self.prefix, queue)


@lru_cache(maxsize=1024)
def _queue_keys(prefix: str, queue: str) -> QueueKeys:
    base = f"{prefix}:{{{queue}}}:"
    return QueueKeys(
        job_prefix=base + "job:",
        ready=base + "ready",
        waiting=base + "waiting",
        running=base + "running",
        state_prefix=base + "state:",
        jobs=base + "jobs",
        unique=base + "unique",
        stats=base + "stats",
        wake=base + "wake",
        seq=base + "seq",
        limit_prefix=base + "limit:",
        parked=base + "parked",
        hlimits=base + "hlimits",
        events=base + "events",
        history=base + "history",
        paused=base + "paused",
        hpolicy=base + "hpolicy",
        handlers=base + "handlers",
        deps_prefix=base + "deps:",
        unconfirmed_prefix=base + "unconfirmed:",
        rate_prefix=base + "rate:",
        hrates=base + "hrates",
        qrate=base + "qrate",
    )
