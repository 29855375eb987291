-- enqueue.lua: new jobs -> enqueued (due now) or scheduled (due later). Safe to repeat:
-- an existing id, or a unique_key held by a live job, returns that job unchanged.
-- KEYS (scripts.ENQUEUE; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] state_prefix  KEYS[5] jobs  KEYS[6] unique  KEYS[7] stats
--    KEYS[8] wake  KEYS[9] seq  KEYS[10] hpolicy
-- ARGV[1] queue  ARGV[2] n  ARGV[3..] n records of WIDTH fields (scripts.EnqueueItem):
--   id, name, args json, kwargs json, priority, max_attempts, timeout ('' = none),
--   backoff base s, cap s, jitter, delay µs (-1 = none), run_at µs (-1 = none), unique_key ('' = none),
--   limit_key ('' = none), limit ('' = none), events (1|0),
--   trace ('' = none), ma_def, bo_def (1: not given by the job, its handler's policy in hpolicy applies)
-- Returns per job: {1, id, state, created_us, run_at_us, max_attempts, fresh} when created (max_attempts:
-- its effective value; fresh = 1: the queue had no seq (new, or emptied by tidy.lua): the caller lists
-- the queue again), {0, HGETALL of the existing job} when not.
local queue, n = ARGV[1], tonumber(ARGV[2])
local now = now_us()
local out = {}
local woke = false
local policies = {} -- handler name -> its hpolicy entry (false: none), read once per call
-- One INCRBY reserves sequence numbers for the whole batch (unused ones are harmless gaps).
local seq = redis.call('INCRBY', K.seq, n) - n
local fresh = 0
if seq == 0 then fresh = 1 end
for i = 0, n - 1 do
  local b = 3 + i * WIDTH
  local id, name, args, kwargs, priority, max_attempts, timeout, bo_base, bo_cap, bo_jitter, delay_us,
    run_at_us, unique_key, limit_key, limit, events, trace, ma_def, bo_def = unpack(ARGV, b, b + WIDTH - 1)
  local jobkey = K.job_prefix .. id
  local existing = nil
  if redis.call('EXISTS', jobkey) == 1 then
    existing = jobkey
  elseif unique_key ~= '' then
    local holder = redis.call('HGET', K.unique, unique_key)
    if holder and redis.call('EXISTS', K.job_prefix .. holder) == 1 then existing = K.job_prefix .. holder end
  end
  if existing then
    out[#out + 1] = {0, redis.call('HGETALL', existing)}
  else
    local delay, run_abs = tonumber(delay_us), tonumber(run_at_us)
    local run_at = now
    if delay >= 0 then run_at = now + delay elseif run_abs >= 0 then run_at = run_abs end
    local state = 'enqueued'
    if run_at > now then state = 'scheduled' end
    seq = seq + 1
    redis.call('HSET', jobkey, 'id', id, 'name', name, 'queue', queue, 'args', args,
      'kwargs', kwargs, 'priority', priority, 'max_attempts', max_attempts, 'timeout', timeout,
      'bo_base', bo_base, 'bo_cap', bo_cap, 'bo_jitter', bo_jitter, 'unique_key', unique_key,
      'state', state, 'attempts', 0, 'run_at', run_at, 'created_at', now, 'state_at', now, 'seq', seq,
      'ma_def', ma_def, 'bo_def', bo_def)
    if ma_def == '1' or bo_def == '1' then
      if policies[name] == nil then policies[name] = redis.call('HGET', K.hpolicy, name) or false end
      local pol = policy_fields(policies[name] or nil, ma_def, bo_def)
      if #pol > 0 then redis.call('HSET', jobkey, unpack(pol)) end
      if pol[1] == 'max_attempts' then max_attempts = pol[2] end
    end
    if state == 'enqueued' then
      redis.call('ZADD', K.ready, ready_score(tonumber(priority), seq), id)
      woke = true
    else
      redis.call('ZADD', K.waiting, run_at, id)
      woke = true -- an idle worker waits for the due times it knew of: it must look again
    end
    if unique_key ~= '' then redis.call('HSET', K.unique, unique_key, id) end
    -- optional features cost one HSET each, only for jobs that use them
    if limit_key ~= '' then redis.call('HSET', jobkey, 'lk', limit_key, 'lm', limit) end
    if events == '1' then redis.call('HSET', jobkey, 'ev', '1') end
    if trace ~= '' then redis.call('HSET', jobkey, 'tp', trace) end
    redis.call('ZADD', K.jobs, now, id)
    move_state(id, nil, state, now)
    stat('enq|' .. name, 1)
    out[#out + 1] = {1, id, state, now, run_at, max_attempts, fresh}
  end
end
if woke then wake_one() end
flush_stats()
return out
