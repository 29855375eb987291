-- enqueue.lua: new jobs -> enqueued (due now) or scheduled (due later). Safe to repeat:
-- an existing id, or a unique_key held by a live job, returns that job unchanged.
-- KEYS (scripts.ENQUEUE; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] state_prefix  KEYS[5] jobs  KEYS[6] unique  KEYS[7] stats
--    KEYS[8] wake  KEYS[9] seq  KEYS[10] hpolicy  KEYS[11] history  KEYS[12] deps_prefix
-- ARGV[1] queue  ARGV[2] n  ARGV[3..] n records of WIDTH fields (scripts.EnqueueItem):
--   id, name, args json ('' = [], not stored), kwargs json ('' = {}, not stored), opts: '' when the
--   job sets no option, else a JSON object of strings: the hash fields of OPTION_FIELDS it sets (as
--   stored), and delay (µs from now), at (run_at µs), deps ("<run_on_failure 1|0> <parent id> ...":
--   see resolve_kids). A job that sets no max_attempts / backoff (ma_def / bo_def = 1) takes its
--   handler's policy from hpolicy, else DEFAULT_MAX_ATTEMPTS and the default backoff.
-- A plain job's hash holds only what its readers cannot default: fields left out read as '' / 0 /
-- the default backoff (codec.job_from_hash and the scripts agree on those; bo_jitter is written,
-- backoff_us would read a missing one as 0).
-- Returns {now µs, fresh, then per job}: the job's effective max_attempts (a number) when it was
-- created enqueued, due now, without parents; {1, state, run_at µs, max_attempts} when created
-- otherwise (with a 5th element, its HGETALL, when it has parents); {0, HGETALL of the existing job}
-- when not created; {2, parent id} when a parent is not a job of this queue (nothing written for
-- that job). fresh = 1: the queue had no seq (new, or emptied by tidy.lua): the caller lists the
-- queue again.
-- A job with parents: `deferred` while one is live; `cancelled` at once (DependencyFailed) when one has
-- already failed or been cancelled, unless run_on_failure; as without parents when all are done.
local queue, n = ARGV[1], tonumber(ARGV[2])
local OPTION_FIELDS = {'priority', 'max_attempts', 'timeout', 'bo_base', 'bo_cap', 'bo_jitter', 'unique_key',
  'lk', 'lm', 'ev', 'tp', 'rk', 'rr'}
local NONE = {}
local now = now_us()
local now_s = string.format('%d', now) -- converted once, not per field and job
local out = {now, 0}
local enqueued, names = {}, {} -- handler name -> jobs created, names in first-seen order (one stat each)
local woke = false
local policies = {} -- handler name -> its hpolicy entry (false: none), read once per call
-- One INCRBY reserves sequence numbers for the whole batch (unused ones are harmless gaps).
local seq = redis.call('INCRBY', K.seq, n) - n
if seq == 0 then out[2] = 1 end
-- One EXISTS for the batch: when none of its ids exists yet (the usual case) no job needs its own;
-- ids created by this call are tracked in `made` (an id sent twice).
local keys, any_exist = {}, false
for i = 0, n - 1 do keys[i + 1] = K.job_prefix .. ARGV[3 + i * WIDTH] end
for s = 1, n, 400 do -- in slices: unpack has a stack limit
  if redis.call('EXISTS', unpack(keys, s, math.min(s + 399, n))) > 0 then any_exist = true break end
end
local made = {}
-- Sorted-set entries are added once per call and key (new_batch in lib.lua) after the loop: nothing
-- below reads those sets.
local batch = new_batch()
for i = 0, n - 1 do
  local b = 3 + i * WIDTH
  local id, name, args, kwargs, opts = unpack(ARGV, b, b + WIDTH - 1)
  local o = NONE
  if opts ~= '' then o = cjson.decode(opts) end
  local jobkey = keys[i + 1]
  local existing = nil
  if made[id] or (any_exist and redis.call('EXISTS', jobkey) == 1) then
    existing = jobkey
  elseif o.unique_key then
    local holder = redis.call('HGET', K.unique, o.unique_key)
    if holder and redis.call('EXISTS', K.job_prefix .. holder) == 1 then existing = K.job_prefix .. holder end
  end
  local parents, missing, pstates, live, bad = nil, nil, nil, false, nil
  if o.deps and not existing then -- every parent is checked before anything is written
    parents, pstates = {}, {}
    for v in string.gmatch(o.deps, '%S+') do parents[#parents + 1] = v end
    for j = 2, #parents do
      local st = redis.call('HGET', K.job_prefix .. parents[j], 'state')
      if not st then missing = parents[j] break end
      pstates[j] = st
      if st == 'failed' or st == 'cancelled' then
        if parents[1] ~= '1' and not bad then bad = j end
      elseif st ~= 'done' then
        live = true
      end
    end
  end
  if existing then
    out[#out + 1] = {0, redis.call('HGETALL', existing)}
  elseif missing then
    out[#out + 1] = {2, missing}
  else
    local run_at = now
    if o.delay then run_at = now + tonumber(o.delay) elseif o.at then run_at = tonumber(o.at) end
    local state = 'enqueued'
    if run_at > now then state = 'scheduled' end
    if bad then state = 'cancelled' elseif live then state = 'deferred' end
    seq = seq + 1
    made[id] = true
    local ma_def, bo_def = '1', '1'
    if o.max_attempts then ma_def = '0' end
    if o.bo_base then bo_def = '0' end
    -- the defaults first: an option (below) or the handler's policy (after it) sets its own value
    local h = {'id', id, 'name', name, 'queue', queue, 'state', state, 'run_at', now_s, 'created_at', now_s,
      'seq', seq, 'max_attempts', DEFAULT_MAX_ATTEMPTS, 'bo_jitter', DEFAULT_JITTER, 'ma_def', ma_def,
      'bo_def', bo_def}
    if run_at ~= now then h[10] = run_at end
    if args ~= '' then h[#h + 1] = 'args' h[#h + 1] = args end
    if kwargs ~= '' then h[#h + 1] = 'kwargs' h[#h + 1] = kwargs end
    if o ~= NONE then
      for _, f in ipairs(OPTION_FIELDS) do
        if o[f] then h[#h + 1] = f h[#h + 1] = o[f] end
      end
    end
    local max_attempts = o.max_attempts or DEFAULT_MAX_ATTEMPTS
    if ma_def == '1' or bo_def == '1' then -- later pairs of one HSET win: the policy's values
      if policies[name] == nil then policies[name] = redis.call('HGET', K.hpolicy, name) or false end
      if policies[name] then
        local pol = policy_fields(policies[name], ma_def, bo_def)
        for _, v in ipairs(pol) do h[#h + 1] = v end
        if pol[1] == 'max_attempts' then max_attempts = pol[2] end
      end
    end
    redis.call('HSET', jobkey, unpack(h))
    if state == 'enqueued' then
      batch_zadd(batch, K.ready, ready_score(tonumber(o.priority or 0), seq), id)
      woke = true
    elseif state == 'scheduled' then
      batch_zadd(batch, K.waiting, run_at, id)
      woke = true -- an idle worker waits for the due times it knew of: it must look again
    end
    if o.unique_key and state ~= 'cancelled' then redis.call('HSET', K.unique, o.unique_key, id) end
    if parents then
      local ids, pending = {}, 0
      for j = 2, #parents do
        local p, st = parents[j], pstates[j]
        ids[#ids + 1] = p
        if st == 'done' then
          redis.call('HSET', jobkey, 'p|' .. p, st, 'r|' .. p, redis.call('HGET', K.job_prefix .. p, 'result') or 'null')
        elseif st == 'failed' or st == 'cancelled' then
          redis.call('HSET', jobkey, 'p|' .. p, st)
        elseif state == 'deferred' then
          pending = pending + redis.call('SADD', K.deps_prefix .. p, id)
          redis.call('HSET', K.job_prefix .. p, 'kids', '1')
        end
      end
      redis.call('HSET', jobkey, 'parents', table.concat(ids, ' '), 'rof', parents[1], 'deps', pending)
      if bad then
        redis.call('HSET', jobkey, 'finished_at', now, 'last_error', '{"type":"DependencyFailed","message":' ..
          '"parent job ' .. parents[bad] .. ' ended ' .. pstates[bad] .. '","traceback":""}')
      end
    end
    batch_zadd(batch, K.jobs, now_s, id)
    if state == 'scheduled' then
      batch_zadd(batch, K.state_prefix .. state, now_s, id)
    elseif state ~= 'enqueued' then
      move_state(id, nil, state, now)
    end
    if not enqueued[name] then
      enqueued[name] = 0
      names[#names + 1] = name
    end
    enqueued[name] = enqueued[name] + 1
    max_attempts = tonumber(max_attempts)
    if parents then
      out[#out + 1] = {1, state, run_at, max_attempts, redis.call('HGETALL', jobkey)}
    elseif state == 'enqueued' and run_at == now then
      out[#out + 1] = max_attempts
    else
      out[#out + 1] = {1, state, run_at, max_attempts}
    end
  end
end
send_batch(batch)
for _, name in ipairs(names) do stat('enq|' .. name, enqueued[name]) end
if woke then wake_one() end
flush_stats()
return out
