"""The floor `bagbot bench` prints beside its Redis CPU per job: a minimal durable lifecycle.

A hash per job, a ready set, a running set and a done set, and nothing else: per job,
enqueue = one HSET of a few fields + one ZADD; claim = ZPOPMIN (100 per call) + HMGET + HSET +
ZADD running; finish = HGET token + HSET + ZREM running + ZADD done; 100 jobs per script call,
each call reading the server clock once (TIME). It is what any hash-per-job queue with fenced
claims must pay, so "Redis CPU per job / floor" says how much of our cost is extra work, on the
same server in the same run (an absolute µs figure moves with the machine's load).
It is not a job store: no retries, leases that expire, metrics or events.
"""

from __future__ import annotations

import uuid

from redis.asyncio import Redis, RedisCluster

from backend.ops.redis_info import RedisInfo

BATCH = 100

# KEYS[1] job key prefix  KEYS[2] ready zset.  ARGV: job ids.  Returns the number enqueued.
ENQUEUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, id in ipairs(ARGV) do
  redis.call('HSET', KEYS[1] .. id, 'name', 'bagbot.noop', 'state', 'enqueued', 'attempts', '0',
             'max_attempts', '3', 'created_at', now)
  redis.call('ZADD', KEYS[2], now + i, id)
end
return #ARGV
"""

# KEYS[1] job key prefix  KEYS[2] ready  KEYS[3] running.  ARGV[1] limit  ARGV[2] token nonce
# ARGV[3] lease µs.  Returns {id, token, ...} of the jobs claimed.
CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local popped = redis.call('ZPOPMIN', KEYS[2], tonumber(ARGV[1]))
local out = {}
for i = 1, #popped, 2 do
  local id = popped[i]
  local key = KEYS[1] .. id
  local job = redis.call('HMGET', key, 'state', 'attempts')
  if job[1] == 'enqueued' then
    local token = ARGV[2] .. ':' .. i
    redis.call('HSET', key, 'state', 'running', 'attempts', tonumber(job[2]) + 1, 'token', token,
               'started_at', now)
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), id)
    out[#out + 1] = id
    out[#out + 1] = token
  end
end
return out
"""

# KEYS[1] job key prefix  KEYS[2] running  KEYS[3] done.  ARGV: id, token pairs.
# Returns the number finished (a stale token, or a repeated finish, finishes nothing).
FINISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = 0
for i = 1, #ARGV, 2 do
  local id, key = ARGV[i], KEYS[1] .. ARGV[i]
  if redis.call('HGET', key, 'token') == ARGV[i + 1] then
    redis.call('HSET', key, 'state', 'done', 'token', '', 'finished_at', now)  -- a repeat finishes nothing
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[3], now, id)
    n = n + 1
  end
end
return n
"""


class Floor:
    """The three floor scripts on one queue of a private key prefix."""

    def __init__(self, client: Redis | RedisCluster, prefix: str, queue: str) -> None:
        self.client = client
        base = f"{prefix}:{{{queue}}}:"
        self.job_prefix, self.ready, self.running, self.done = (
            base + "job:", base + "ready", base + "running", base + "done")
        self.shas: dict[str, str] = {}

    async def load(self) -> None:
        for name, body in (("enqueue", ENQUEUE), ("claim", CLAIM), ("finish", FINISH)):
            self.shas[name] = await self.client.script_load(body)

    async def enqueue(self, ids: list[str]) -> int:
        return int(await self.client.evalsha(self.shas["enqueue"], 2, self.job_prefix, self.ready, *ids))

    async def claim(self, limit: int = BATCH, lease_us: int = 30_000_000) -> list[tuple[str, str]]:
        reply = await self.client.evalsha(self.shas["claim"], 3, self.job_prefix, self.ready, self.running,
                                          limit, uuid.uuid4().hex, lease_us)
        return [(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]

    async def finish(self, claimed: list[tuple[str, str]]) -> int:
        args = [value for pair in claimed for value in pair]
        return int(await self.client.evalsha(self.shas["finish"], 3, self.job_prefix, self.running, self.done,
                                             *args))

    async def cycle(self, jobs: int) -> int:
        """Enqueue `jobs` in calls of 100, then claim and finish them 100 at a time; returns jobs done."""
        ids = [uuid.uuid4().hex for _ in range(jobs)]
        for offset in range(0, jobs, BATCH):
            await self.enqueue(ids[offset:offset + BATCH])
        finished = 0
        while claimed := await self.claim():
            finished += await self.finish(claimed)
        return finished


async def floor_cpu_us_per_job(info: RedisInfo, url: str, prefix: str, queue: str, jobs: int) -> float:
    """Redis CPU (µs) per job of the floor's enqueue + claim + finish of `jobs` jobs under `prefix`.

    The caller purges `prefix`. RuntimeError when the floor did not finish every job (then its
    figure would be meaningless).
    """
    client: Redis | RedisCluster = Redis.from_url(url, decode_responses=True)
    if len(info.nodes) > 1:  # a cluster: the scripts' keys share one hash tag, so one node runs them
        await client.aclose()
        client = RedisCluster.from_url(url, decode_responses=True)
    try:
        floor = Floor(client, prefix, queue)
        await floor.load()
        cpu_before = await info.cpu_seconds()
        finished = await floor.cycle(jobs)
        cpu = await info.cpu_seconds() - cpu_before
    finally:
        await client.aclose()
    if finished != jobs:
        raise RuntimeError(f"floor: {finished} of {jobs} jobs finished")
    return cpu * 1e6 / jobs
