-- claim.lua: promote due jobs, recover expired leases, then claim up to `limit` ready jobs:
-- enqueued -> running, attempts += 1, a fresh token "<nonce>.<n>", lease until now + lease, unconfirmed
-- (see give_back_lost in lib.lua).
-- Concurrency limits: a job with a limit key (its own limit_key/limit, or its handler's limit
-- from the handler-limits hash) whose key already has `limit` running jobs is not claimed but
-- parked (wait:<key> and parked zsets, keeping its ready score) until a slot frees (free_slot).
-- Handler policy: a job that set no max_attempts / backoff of its own takes its handler's from the
-- hpolicy hash (advertised by workers) at each claim, so the claim, the API and recovery all see it.
-- Rate limits: a job with a rate (its own rate_key/rate, else its handler's from hrates; and the
-- queue's qrate) takes the next start slot of each (take_rate_slot in lib.lua). A slot in the future
-- sends it back to `scheduled` at run_at = slot (no attempt charged) with the slot reserved (rs): the
-- promote step brings it back then and this script claims it without charging its rates again.
-- KEYS (scripts.CLAIM; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] running  KEYS[5] state_prefix  KEYS[6] unique  KEYS[7] stats
--    KEYS[8] wake  KEYS[9] seq  KEYS[10] limit_prefix  KEYS[11] parked  KEYS[12] hlimits
--    KEYS[13] events  KEYS[14] paused  KEYS[15] hpolicy  KEYS[16] history  KEYS[17] deps_prefix
--    KEYS[18] rate_prefix  KEYS[19] hrates  KEYS[20] qrate  KEYS[21] unconfirmed_prefix
-- ARGV[1] worker id  ARGV[2] limit  ARGV[3] lease µs  ARGV[4] housekeeping limit  ARGV[5] random seed
-- ARGV[6] a random nonce, unique per call: tokens must never repeat, even for a re-used job id
-- Returns {start µs, lease until µs, then per claimed job a row}: the values of the fields before
-- `state` in FIELDS (claim_codec.CLAIM_FIELDS, read with one HMGET, never the whole hash) after the
-- claim, then its id and claim token; a job with parents also gets its whole hash, after them.
-- The claim is unconfirmed until the worker says it arrived (confirm.lua): the key
-- unconfirmed:<nonce> marks this call's claims so (see give_back_lost in lib.lua).
local worker, limit, lease_us = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
promote_due(now, tonumber(ARGV[4]))
recover_expired(now, tonumber(ARGV[4]), tonumber(ARGV[5]))
if redis.call('EXISTS', K.paused) == 1 then -- paused (pause.lua): housekeeping only, no wake-up chain
  redis.call('DEL', K.wake)
  flush_stats()
  return {}
end
local lease_until = now + lease_us
local out = {now, lease_until} -- the claims' start and lease, then one row per job
local n = 0 -- jobs claimed
local NUMERIC = {'priority', 'max_attempts', 'attempts', 'lm', 'rs'}
if limit > 0 then
  -- one call per claim (not per job); empty unless some worker declared a handler limit
  local hl = redis.call('HGETALL', K.hlimits)
  local hlimits = {}
  for j = 1, #hl, 2 do hlimits[hl[j]] = tonumber(hl[j + 1]) end
  local hpolicy = {} -- handler name -> its hpolicy entry (false: none), read once per call and name
  -- rates: one HGETALL and one GET per claim call, both empty unless a rate was declared
  local hr = redis.call('HGETALL', K.hrates)
  local hrates = {}
  for j = 1, #hr, 2 do hrates[hr[j]] = rate_interval(hr[j + 1]) end
  local qrate = rate_interval(redis.call('GET', K.qrate))
  local batch = new_batch() -- the running-set entries, one ZADD when the loop ends
  for _ = 1, 20 do -- parked jobs make room for more pops; bounded so one call stays short
    if n >= limit then break end
    local wanted = limit - n
    local popped = redis.call('ZPOPMIN', K.ready, wanted)
    local parked_now = 0
    for i = 1, #popped, 2 do
      local id = popped[i]
      local jobkey = K.job_prefix .. id
      local f = redis.call('HMGET', jobkey, unpack(FIELDS))
      local name, state, lk, oldlkey, ev, ukey = f[F.name], f[F.state], f[F.lk], f[F.lkey], f[F.ev], f[F.unique_key]
      local ma_def, bo_def, rk, rr, rs, run_at = f[F.ma_def], f[F.bo_def], f[F.rk], f[F.rr], f[F.rs], f[F.run_at]
      local bad, value = not_numeric(f, NUMERIC, F) -- numbers this script, finish and release convert
      if rk == '' then rk = nil end
      if rk and not rate_interval(rr) then bad, value = 'rr', rr or '' end
      -- check before the first write for this job (see set_aside in lib.lua)
      local attempts, lm = tonumber(f[F.attempts] or 0) or 0, tonumber(f[F.lm])
      if not name or name == '' then bad, value = 'name', '' end
      if not state or KNOWN_STATES[state] == nil then bad, value = 'state', state or '' end
      local gone = not state and redis.call('EXISTS', jobkey) == 0
      if gone then bad = nil end
      local skip = gone or (state ~= 'enqueued' and not bad) -- gone, or a stale ready entry
      if bad or skip then parked_now = parked_now + 1 end -- room for another pop, as for parked jobs
      if bad then set_aside(id, jobkey, state, now, corrupt_error(bad, value), oldlkey, ev, ukey) end
      if (not lk or lk == '') and name and hlimits[name] then lk, lm = 'h:' .. name, hlimits[name] end
      if lk == '' then lk = nil end
      local park = bad or skip
      if lk and not park then
        local runkey = K.limit_prefix .. 'run:' .. lk
        if redis.call('SCARD', runkey) >= (lm or 1) then
          park = true
          parked_now = parked_now + 1
          redis.call('ZADD', K.limit_prefix .. 'wait:' .. lk, popped[i + 1], id)
          redis.call('ZADD', K.parked, popped[i + 1], id)
          redis.call('HSET', jobkey, 'parked', lk, 'plim', lm or 1)
        end
      end
      local reserved = rs and rs ~= '' and tonumber(rs) == tonumber(run_at)
      if not park and not reserved and (rk or hrates[name] or qrate) then
        local rates = {}
        if rk then rates[1] = {'k:' .. rk, rate_interval(rr)}
        elseif hrates[name] then rates[1] = {'h:' .. name, hrates[name]} end
        if qrate then rates[#rates + 1] = {'q', qrate} end
        local slot = take_rate_slot(now, rates)
        if slot > now then -- over its rate: scheduled for its slot, not claimed, no attempt charged
          park = true
          parked_now = parked_now + 1
          local at = string.format('%.0f', slot)
          redis.call('HSET', jobkey, 'state', 'scheduled', 'run_at', at, 'rs', at)
          redis.call('ZADD', K.waiting, at, id)
          move_state(id, 'enqueued', 'scheduled', now)
          emit(ev, id, 'scheduled')
        end
      end
      if lk and not park then redis.call('SADD', K.limit_prefix .. 'run:' .. lk, id) end
      if not park then
        n = n + 1
        local token = ARGV[6] .. '.' .. string.format('%d', n)
        local changes = {'state', 'running', 'attempts', attempts + 1, 'started_at', now, 'worker', worker,
          'token', token, 'lease_until', lease_until}
        f[F.attempts] = attempts + 1
        if rs and rs ~= '' then
          changes[#changes + 1] = 'rs'
          changes[#changes + 1] = ''
        end
        if lk or oldlkey then
          changes[#changes + 1] = 'lkey'
          changes[#changes + 1] = lk or ''
        end
        if ma_def == '1' or bo_def == '1' then
          if hpolicy[name] == nil then hpolicy[name] = redis.call('HGET', K.hpolicy, name) or false end
          local pol = policy_fields(hpolicy[name] or nil, ma_def, bo_def)
          for j = 1, #pol, 2 do
            changes[#changes + 1] = pol[j]
            changes[#changes + 1] = pol[j + 1]
            f[F[pol[j]]] = pol[j + 1] -- max_attempts, bo_*: fields of the reply
          end
        end
        redis.call('HSET', jobkey, unpack(changes))
        batch_zadd(batch, K.running, lease_until, id)
        emit(ev, id, 'running')
        -- the reply row (claim_codec.CLAIM_REPLY): the decoded fields (those before `state`), id, token
        f[F.state], f[F.state + 1] = id, token
        for j = #FIELDS, F.state + 2, -1 do f[j] = nil end
        if f[F.parents] then f[F.state + 2] = redis.call('HGETALL', jobkey) end -- rare: its parents' outcomes
        out[#out + 1] = f
      end
    end
    if parked_now == 0 or #popped < 2 * wanted then break end
  end
  send_batch(batch)
end
-- Chain wake-ups while work remains; drop stale tokens once the queue is empty.
if redis.call('ZCARD', K.ready) > 0 then
  if redis.call('LLEN', K.wake) == 0 then redis.call('RPUSH', K.wake, 1) end
else
  redis.call('DEL', K.wake)
end
if n > 0 then -- outlives the leases it covers, so lease recovery can still tell them apart
  redis.call('SET', K.unconfirmed_prefix .. ARGV[6], '1', 'PX', math.floor(lease_us / 1000) * 2 + 600000)
end
flush_stats()
return out
