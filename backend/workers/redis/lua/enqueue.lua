-- enqueue.lua: new jobs -> enqueued (due now) or scheduled (due later). Safe to repeat:
-- an existing id, or a unique_key held by a live job, returns that job unchanged.
-- KEYS: see lib.lua.
-- ARGV[1] queue  ARGV[2] n  then per job 16 fields:
--   id, name, args json, kwargs json, priority, max_attempts, timeout ('' = none),
--   backoff base s, backoff cap s, backoff jitter, delay µs (-1 = none), run_at µs (-1 = none), unique_key ('' = none),
--   limit_key ('' = none), limit ('' = none), events (1|0)
-- Returns per job: {1, id, state, created_us, run_at_us} when created, {0, HGETALL of the existing job} when not.
local queue, n = ARGV[1], tonumber(ARGV[2])
local now = now_us()
local out = {}
local woke = false
-- One INCRBY reserves sequence numbers for the whole batch (unused ones are harmless gaps).
local seq = redis.call('INCRBY', K.seq, n) - n
for i = 0, n - 1 do
  local b = 3 + i * 16
  local id, name, unique_key = ARGV[b], ARGV[b + 1], ARGV[b + 12]
  local jobkey = K.job .. id
  local existing = nil
  if redis.call('EXISTS', jobkey) == 1 then
    existing = jobkey
  elseif unique_key ~= '' then
    local holder = redis.call('HGET', K.unique, unique_key)
    if holder and redis.call('EXISTS', K.job .. holder) == 1 then existing = K.job .. holder end
  end
  if existing then
    out[#out + 1] = {0, redis.call('HGETALL', existing)}
  else
    local delay_us, run_at_abs = tonumber(ARGV[b + 10]), tonumber(ARGV[b + 11])
    local run_at = now
    if delay_us >= 0 then run_at = now + delay_us elseif run_at_abs >= 0 then run_at = run_at_abs end
    local state = 'enqueued'
    if run_at > now then state = 'scheduled' end
    seq = seq + 1
    redis.call('HSET', jobkey, 'id', id, 'name', name, 'queue', queue, 'args', ARGV[b + 2],
      'kwargs', ARGV[b + 3], 'priority', ARGV[b + 4], 'max_attempts', ARGV[b + 5], 'timeout', ARGV[b + 6],
      'bo_base', ARGV[b + 7], 'bo_cap', ARGV[b + 8], 'bo_jitter', ARGV[b + 9], 'unique_key', unique_key,
      'state', state, 'attempts', 0, 'run_at', run_at, 'created_at', now, 'state_at', now, 'seq', seq)
    if state == 'enqueued' then
      redis.call('ZADD', K.ready, ready_score(tonumber(ARGV[b + 4]), seq), id)
      woke = true
    else
      redis.call('ZADD', K.waiting, run_at, id)
    end
    if unique_key ~= '' then redis.call('HSET', K.unique, unique_key, id) end
    -- optional features cost one HSET each, only for jobs that use them
    if ARGV[b + 13] ~= '' then redis.call('HSET', jobkey, 'lk', ARGV[b + 13], 'lm', ARGV[b + 14]) end
    if ARGV[b + 15] == '1' then redis.call('HSET', jobkey, 'ev', '1') end
    redis.call('ZADD', K.jobs, now, id)
    move_state(id, nil, state, now)
    stat('enq|' .. name, 1)
    out[#out + 1] = {1, id, state, now, run_at}
  end
end
if woke then wake_one() end
flush_stats()
return out
