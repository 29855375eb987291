-- lib.lua: helpers prepended to every per-queue script (never called alone).
-- Every per-queue script receives the same KEYS, built by redis_keys.QueueKeys.script_keys():
--   KEYS[1] job key prefix   KEYS[2] ready     KEYS[3] waiting   KEYS[4] running   KEYS[5] state index prefix
--   KEYS[6] jobs index       KEYS[7] unique    KEYS[8] stats     KEYS[9] wake      KEYS[10] seq
--   KEYS[11] limit key prefix (run:<key> set of running ids, wait:<key> zset of parked ids)
--   KEYS[12] parked (zset: every parked id -> its ready score)   KEYS[13] handler limits (hash)
--   KEYS[14] events channel (PUBLISH "<id> <what>" for jobs enqueued with events on)
-- All share the hash tag {queue}. Times are microseconds on the server clock (TIME).

local K = {
  job = KEYS[1], ready = KEYS[2], waiting = KEYS[3], running = KEYS[4], state = KEYS[5],
  jobs = KEYS[6], unique = KEYS[7], stats = KEYS[8], wake = KEYS[9], seq = KEYS[10],
  limit = KEYS[11], parked = KEYS[12], hlimits = KEYS[13], events = KEYS[14],
}

-- Upper bounds (s) of the duration histogram; must match models.DURATION_BUCKETS.
local BUCKETS = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
local PRIORITY_SPAN = 1099511627776 -- 2^40 enqueue sequence numbers per priority level

-- Metric increments are summed here and written once per script call (flush_stats), so a batch of
-- 100 jobs costs one HINCRBY per distinct counter instead of one per job.
local STATS, STAT_FIELDS, DURSUM = {}, {}, {}

local function stat(field, n)
  if STATS[field] == nil then
    STATS[field] = 0
    STAT_FIELDS[#STAT_FIELDS + 1] = field
  end
  STATS[field] = STATS[field] + n
end

local function flush_stats()
  for _, field in ipairs(STAT_FIELDS) do redis.call('HINCRBY', K.stats, field, STATS[field]) end
  for name, seconds in pairs(DURSUM) do
    redis.call('HINCRBYFLOAT', K.stats, 'dursum|' .. name, string.format('%.6f', seconds))
  end
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- A cheap per-item pseudo-random number in [0, 1) derived from the caller's seed,
-- so jitter needs no server-side RNG and replays identically.
local function rand(seed, i)
  local x = math.sin(seed * 12.9898 + i * 78.233) * 43758.5453
  return x - math.floor(x)
end

-- Enqueued and running jobs are indexed by the ready and running sets themselves; the other
-- states have an index of their own, scored by when the job entered the state.
local INDEXED = {scheduled = true, retry_scheduled = true, done = true, failed = true, cancelled = true}

local function move_state(id, old, new, now)
  if old and INDEXED[old] then redis.call('ZREM', K.state .. old, id) end
  if INDEXED[new] then redis.call('ZADD', K.state .. new, now, id) end
end

local function ready_score(priority, seq)
  return (1000 - priority) * PRIORITY_SPAN + seq
end

-- Put a job at the back of its priority level in the ready set.
local function push_ready(jobkey, id)
  local seq = redis.call('INCR', K.seq)
  local priority = tonumber(redis.call('HGET', jobkey, 'priority')) or 0
  redis.call('HSET', jobkey, 'seq', seq)
  redis.call('ZADD', K.ready, ready_score(priority, seq), id)
end

local function wake_one()
  if redis.call('LLEN', K.wake) < 8 then redis.call('RPUSH', K.wake, 1) end
end

-- Opt-in job events: only jobs enqueued with events on (field ev = 1) cost a PUBLISH.
local function emit(ev, id, what)
  if ev == '1' then redis.call('PUBLISH', K.events, id .. ' ' .. what) end
end

-- A job with a concurrency-limit key left `running`: free its slot and give the slot to the
-- oldest job parked on that key (back to ready at its original place; claim re-checks the limit).
local function free_slot(id, lkey)
  if not lkey or lkey == '' then return end
  redis.call('SREM', K.limit .. 'run:' .. lkey, id)
  local waitkey = K.limit .. 'wait:' .. lkey
  local first = redis.call('ZRANGE', waitkey, 0, 0, 'WITHSCORES')
  if first[1] then
    redis.call('ZREM', waitkey, first[1])
    redis.call('ZREM', K.parked, first[1])
    redis.call('HSET', K.job .. first[1], 'parked', '')
    redis.call('ZADD', K.ready, first[2], first[1])
    wake_one()
  end
end

-- `bo` is the handler's {base, cap, jitter} when it has its own backoff, else the job's is read.
local function backoff_us(jobkey, attempts, r, bo)
  local f = bo or redis.call('HMGET', jobkey, 'bo_base', 'bo_cap', 'bo_jitter')
  local base, cap, jitter = tonumber(f[1]) or 1, tonumber(f[2]) or 300, tonumber(f[3]) or 0
  local full = math.min(cap, base * 2 ^ math.max(0, attempts - 1))
  return math.floor((full - full * jitter * r) * 1000000)
end

-- `key` is the job's unique_key when the caller already read it (false/nil: read it here).
local function release_unique(jobkey, id, key)
  if key == nil then key = redis.call('HGET', jobkey, 'unique_key') end
  if key and key ~= '' and redis.call('HGET', K.unique, key) == id then
    redis.call('HDEL', K.unique, key)
  end
end

local function observe_duration(name, seconds)
  local slot = #BUCKETS + 1
  for b = 1, #BUCKETS do
    if seconds <= BUCKETS[b] then slot = b break end
  end
  stat('dur|' .. name .. '|' .. slot, 1)
  DURSUM[name] = (DURSUM[name] or 0) + seconds
end

-- running -> retry_scheduled (attempts left and retryable) or failed: the one retry policy.
-- delay_us < 0 means "use the backoff": the handler's `bo` when given, else the job's own.
-- cap (optional, >= 1) is the handler's max attempts: the lower of it and the job's wins.
-- outcome nil means retry/failed as it turns out.
local function fail_running(id, jobkey, err, retryable, delay_us, now, outcome, r, cap, bo)
  local f = redis.call('HMGET', jobkey, 'name', 'attempts', 'max_attempts', 'lkey', 'ev', 'cancel_req')
  local name, attempts, max_attempts = f[1], tonumber(f[2]), tonumber(f[3])
  if cap and cap >= 1 and cap < max_attempts then max_attempts = cap end
  redis.call('ZREM', K.running, id)
  free_slot(id, f[4])
  if retryable and attempts < max_attempts then
    if delay_us < 0 then delay_us = backoff_us(jobkey, attempts, r, bo) end
    local run_at = now + delay_us
    redis.call('HSET', jobkey, 'state', 'retry_scheduled', 'run_at', run_at, 'last_error', err,
      'token', '', 'lease_until', '', 'state_at', now)
    redis.call('ZADD', K.waiting, run_at, id)
    if f[6] == '1' then redis.call('HSET', jobkey, 'cancel_req', '') end
    stat('retry|' .. name, 1)
    stat('run|' .. name .. '|' .. (outcome or 'retry'), 1)
    move_state(id, 'running', 'retry_scheduled', now)
    emit(f[5], id, 'retry_scheduled')
    return 'retry_scheduled'
  end
  redis.call('HSET', jobkey, 'state', 'failed', 'finished_at', now, 'last_error', err,
    'token', '', 'lease_until', '', 'state_at', now)
  stat('run|' .. name .. '|' .. (outcome or 'failed'), 1)
  release_unique(jobkey, id)
  move_state(id, 'running', 'failed', now)
  emit(f[5], id, 'failed')
  return 'failed'
end

-- Due scheduled/retry jobs -> enqueued. Returns how many moved.
local function promote_due(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', K.waiting, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local jobkey = K.job .. id
    redis.call('ZREM', K.waiting, id)
    local old = redis.call('HGET', jobkey, 'state')
    if old then
      redis.call('HSET', jobkey, 'state', 'enqueued', 'state_at', now)
      push_ready(jobkey, id)
      move_state(id, old, 'enqueued', now)
    end
  end
  if #ids > 0 then wake_one() end
  return #ids
end

-- Running jobs whose lease ran out are failed runs (LeaseExpired). Returns how many.
local function recover_expired(now, limit, seed)
  local ids = redis.call('ZRANGEBYSCORE', K.running, '-inf', now, 'LIMIT', 0, limit)
  for i, id in ipairs(ids) do
    local jobkey = K.job .. id
    local worker = redis.call('HGET', jobkey, 'worker')
    if worker then
      -- worker ids are plain names; drop anything that could break the JSON string
      local who = string.gsub(worker, '[%c"\\]', '')
      local err = '{"type":"LeaseExpired","message":"lease expired: worker ' .. who ..
        ' stopped heartbeating","traceback":""}'
      fail_running(id, jobkey, err, true, -1, now, 'expired', rand(seed, i))
    else
      redis.call('ZREM', K.running, id)
    end
  end
  return #ids
end
