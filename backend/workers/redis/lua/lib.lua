-- lib.lua: helpers prepended to every per-queue script (never called alone).
-- Before it comes the prelude that redis/scripts.py generates for each script: `K` (the script's
-- own KEYS by name, e.g. K.ready, K.job_prefix; see the script's header), the constants shared
-- with Python (BUCKETS, PRIORITY_SPAN, MAX_PRIORITY, LOST_CLAIM_CAP from rules.py), the reply codes
-- (CODE), WIDTH and `unpack`. A helper may only be called by a script whose KEYS hold every K.* it reads
-- (tests/test_scripts.py checks it). All keys share the hash tag {queue}.
-- Times are microseconds on the server clock (TIME).

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

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The history hash holds minutes from "min" on: a sample stamped before "min" (the server clock
-- went back) counts in minute "min". When the window moves, the minutes it leaves are deleted, at
-- most HISTORY_MINUTES of them per call (so a call stays short however long the queue was idle),
-- so the hash holds HISTORY_MINUTES minutes of fields (18 each) plus what a few calls still have
-- to delete. A "min" that is not a plain minute number (a hand edit) starts afresh.
local function trim_history(minute)
  local oldest = tonumber(redis.call('HGET', K.history, 'min'))
  if not oldest or oldest ~= math.floor(oldest) or oldest < 0 or oldest > 2 ^ 40 then oldest = minute end
  minute = math.max(minute, oldest)
  local cutoff = minute - HISTORY_MINUTES + 1
  if oldest < cutoff then
    for old = oldest, math.min(cutoff - 1, oldest + HISTORY_MINUTES - 1) do
      local m = string.format('%d', old)
      local fields = {m .. '|n', m .. '|f', m .. '|s'}
      for slot = 1, #BUCKETS + 1 do fields[#fields + 1] = m .. '|d' .. slot end
      redis.call('HDEL', K.history, unpack(fields))
    end
    oldest = math.min(cutoff, oldest + HISTORY_MINUTES)
    if redis.call('HLEN', K.history) <= 1 then oldest = cutoff end -- only "min" is left: skip ahead
  end
  redis.call('HSET', K.history, 'min', string.format('%d', oldest))
  return minute
end

-- This call's runs, per minute of the server clock, for the history charts (GET
-- /api/queues/{queue}/history): "<minute>|n" runs, "<minute>|f" runs that raised or expired,
-- "<minute>|d<slot>" runs per duration bucket (slots of BUCKETS), "<minute>|s" their duration sum.
-- Read from the counters flush_stats writes, so history and metrics count the same runs.
local function flush_history()
  local add, order = {}, {}
  local function bump(kind, n)
    if add[kind] == nil then add[kind] = 0 order[#order + 1] = kind end
    add[kind] = add[kind] + n
  end
  for _, field in ipairs(STAT_FIELDS) do
    local kind, outcome = string.match(field, '^(%a+)|.*|(%w+)$')
    if kind == 'run' then
      bump('n', STATS[field])
      if outcome ~= 'done' then bump('f', STATS[field]) end
    elseif kind == 'dur' then
      bump('d' .. outcome, STATS[field])
    end
  end
  if #order == 0 then return end
  local minute = string.format('%d', trim_history(math.floor(now_us() / 60000000)))
  for _, kind in ipairs(order) do redis.call('HINCRBY', K.history, minute .. '|' .. kind, add[kind]) end
  local total = 0
  for _, seconds in pairs(DURSUM) do total = total + seconds end
  if total > 0 then redis.call('HINCRBYFLOAT', K.history, minute .. '|s', string.format('%.6f', total)) end
end

local function flush_stats()
  for _, field in ipairs(STAT_FIELDS) do redis.call('HINCRBY', K.stats, field, STATS[field]) end
  for name, seconds in pairs(DURSUM) do
    redis.call('HINCRBYFLOAT', K.stats, 'dursum|' .. name, string.format('%.6f', seconds))
  end
  flush_history()
end

-- A cheap per-item pseudo-random number in [0, 1) derived from the caller's seed,
-- so jitter needs no server-side RNG and replays identically.
local function rand(seed, i)
  local x = math.sin(seed * 12.9898 + i * 78.233) * 43758.5453
  return x - math.floor(x)
end

-- Enqueued and running jobs are indexed by the ready and running sets themselves; the other
-- states have an index of their own, scored by when the job entered the state.
local INDEXED = {scheduled = true, retry_scheduled = true, done = true, failed = true, cancelled = true,
  deferred = true}

local function move_state(id, old, new, now)
  if old and INDEXED[old] then redis.call('ZREM', K.state_prefix .. old, id) end
  if INDEXED[new] then redis.call('ZADD', K.state_prefix .. new, now, id) end
end

local function ready_score(priority, seq)
  return (MAX_PRIORITY - priority) * PRIORITY_SPAN + seq
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

-- Take a parked job off its limit key's wait list (it is back in play, or gone).
local function drop_parked(id, lkey)
  redis.call('ZREM', K.limit_prefix .. 'wait:' .. lkey, id)
  redis.call('ZREM', K.parked, id)
  redis.call('HSET', K.job_prefix .. id, 'parked', '')
end

-- A job with a concurrency-limit key left `running`: free its slot and give the slot to the
-- oldest job parked on that key (back to ready at its original place; claim re-checks the limit).
local function free_slot(id, lkey)
  if not lkey or lkey == '' then return end
  redis.call('SREM', K.limit_prefix .. 'run:' .. lkey, id)
  local first = redis.call('ZRANGE', K.limit_prefix .. 'wait:' .. lkey, 0, 0, 'WITHSCORES')
  if first[1] then
    drop_parked(first[1], lkey)
    redis.call('ZADD', K.ready, first[2], first[1])
    wake_one()
  end
end

-- Sorted-set writes of a batch step (claim, finish), sent as one ZADD / ZREM per key when the step
-- ends (send_batch) instead of one call per job: the script stays one atomic step either way, and
-- nothing the script reads afterwards before sending them depends on them.
local function new_batch()
  return {adds = {}, rems = {}, order = {}}
end

local function batch_list(batch, kind, key)
  local lists = batch[kind]
  if not lists[key] then
    lists[key] = {}
    batch.order[#batch.order + 1] = {kind, key}
  end
  return lists[key]
end

local function batch_zadd(batch, key, score, id)
  local list = batch_list(batch, 'adds', key)
  list[#list + 1] = score
  list[#list + 1] = id
end

local function batch_zrem(batch, key, id)
  local list = batch_list(batch, 'rems', key)
  list[#list + 1] = id
end

local function send_batch(batch)
  for _, entry in ipairs(batch.order) do
    local kind, key = entry[1], entry[2]
    local list = batch[kind][key]
    for start = 1, #list, 4000 do -- unpack stays well within Lua's stack
      local last = math.min(#list, start + 3999)
      if kind == 'adds' then redis.call('ZADD', key, unpack(list, start, last))
      else redis.call('ZREM', key, unpack(list, start, last)) end
    end
  end
  batch.adds, batch.rems, batch.order = {}, {}, {}
end

-- The one way out of `running`: state `new`, no token or lease, off the running set, its limit
-- slot freed, the state index moved and the event emitted. `lkey` and `ev` are the job's fields
-- (as the caller read them); `fields` are the new state's own field, value pairs for the same HSET.
-- With `batch` (new_batch), the running set and state index writes wait for the caller's send_batch.
local function leave_running(id, jobkey, new, now, lkey, ev, fields, batch)
  local sets = batch or new_batch()
  redis.call('HSET', jobkey, 'state', new, 'token', '', 'lease_until', '', unpack(fields))
  batch_zrem(sets, K.running, id)
  if INDEXED[new] then batch_zadd(sets, K.state_prefix .. new, now, id) end -- `running` has no index
  free_slot(id, lkey)
  emit(ev, id, new)
  if not batch then send_batch(sets) end
end

-- `bo` is the handler's {base, cap, jitter} when it has its own backoff, else the job's is read.
local function backoff_us(jobkey, attempts, r, bo)
  local f = bo or redis.call('HMGET', jobkey, 'bo_base', 'bo_cap', 'bo_jitter')
  local base, cap, jitter = tonumber(f[1]) or 1, tonumber(f[2]) or 300, tonumber(f[3]) or 0.25 -- rules.Backoff
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

-- Dependencies (docs/features.md): a job enqueued with depends_on is `deferred` while a parent is
-- live. Its hash holds `parents` (ids, space-separated), `deps` (parents not finished yet) and `rof`
-- ('1': it runs even when a parent failed or was cancelled); per finished parent `p|<id>` = the
-- parent's end state and, when done, `r|<id>` = its result. A parent with dependants has kids = '1'
-- and the set deps:<id> of their ids. Every step that makes a job terminal calls resolve_kids when
-- the kids field it read with its other fields is set, so a job without dependants pays nothing.
-- The last parent's step moves the dependant on: enqueued (or scheduled, when its run_at is later),
-- or cancelled with a DependencyFailed error naming the parent; a dependant cancelled here resolves
-- its own dependants in the same call (a work list, not recursion). `p|<id>` is written once: a
-- parent is never counted twice.
-- The dependant's count of parents not ended yet, one less (written back). A count that cannot be
-- read (a corrupt record) is counted again from its parents list: never released early, never stuck.
local function pending_after(kk, raw)
  local left = tonumber(raw)
  if left == nil or left % 1 ~= 0 or left < 1 or left > 10000 then -- nil, NaN, inf, or out of range
    left = 0
    for p in string.gmatch(redis.call('HGET', kk, 'parents') or '', '%S+') do
      if not redis.call('HGET', kk, 'p|' .. p) then left = left + 1 end
    end
  else
    left = left - 1
  end
  redis.call('HSET', kk, 'deps', left)
  return left
end

local function resolve_kids(id, outcome, result, now)
  local todo, i = {{id, outcome, result}}, 1
  while todo[i] do
    local pid, pout, pres = todo[i][1], todo[i][2], todo[i][3]
    i = i + 1
    local set = K.deps_prefix .. pid
    local kids = redis.call('SMEMBERS', set)
    redis.call('DEL', set)
    for _, kid in ipairs(kids) do
      local kk = K.job_prefix .. kid
      local f = redis.call('HMGET', kk, 'state', 'rof', 'run_at', 'ev', 'kids', 'p|' .. pid, 'deps')
      if f[1] == 'deferred' and not f[6] then
        if pout == 'done' and pres then
          redis.call('HSET', kk, 'p|' .. pid, pout, 'r|' .. pid, pres)
        else
          redis.call('HSET', kk, 'p|' .. pid, pout)
        end
        if pout ~= 'done' and f[2] ~= '1' then
          local err = '{"type":"DependencyFailed","message":"parent job ' .. pid .. ' ended ' .. pout ..
            '","traceback":""}'
          redis.call('HSET', kk, 'state', 'cancelled', 'finished_at', now, 'last_error', err)
          release_unique(kk, kid)
          move_state(kid, 'deferred', 'cancelled', now)
          emit(f[4], kid, 'cancelled')
          if f[5] == '1' then todo[#todo + 1] = {kid, 'cancelled', nil} end
        elseif pending_after(kk, f[7]) <= 0 then
          local run_at = tonumber(f[3]) or now
          local new = 'enqueued'
          if run_at > now then new = 'scheduled' end
          redis.call('HSET', kk, 'state', new)
          if new == 'scheduled' then redis.call('ZADD', K.waiting, run_at, kid) else push_ready(kk, kid) end
          move_state(kid, 'deferred', new, now)
          emit(f[4], kid, new)
          wake_one()
        end
      end
    end
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

-- A record a script cannot read (a hand edit, an old bug, a partial restore) is set aside: it goes
-- to `failed` with a CorruptRecord error naming the field and its value, off every index of a live
-- job, its limit slot and unique key freed, so it never takes the rest of its batch down. Scripts
-- check the fields they convert before their first write for the job, so nothing is half-moved.
local KNOWN_STATES = {scheduled = true, enqueued = true, running = true, retry_scheduled = true,
  done = true, failed = true, cancelled = true, deferred = true}

local function corrupt_error(field, value)
  local shown = string.gsub(string.sub(tostring(value), 1, 80), '[%c"\\\128-\255]', '?')
  return '{"type":"CorruptRecord","message":"unreadable job record: field ' .. field .. ' is \'' ..
    shown .. '\'","traceback":""}'
end

-- `old` is the state the job hash holds; `lkey`, `ev`, `ukey` its fields as the caller read them.
local function set_aside(id, jobkey, old, now, err, lkey, ev, ukey)
  redis.call('HSET', jobkey, 'state', 'failed', 'token', '', 'lease_until', '',
    'finished_at', now, 'last_error', err, 'parked', '')
  redis.call('ZREM', K.ready, id)
  redis.call('ZREM', K.running, id)
  redis.call('ZREM', K.waiting, id)
  redis.call('ZREM', K.parked, id)
  free_slot(id, lkey)
  if old == nil or KNOWN_STATES[old] == nil then -- which index holds it is unknown: leave none behind
    for s in pairs(INDEXED) do redis.call('ZREM', K.state_prefix .. s, id) end
  end
  move_state(id, old, 'failed', now)
  release_unique(jobkey, id, ukey or nil)
  emit(ev, id, 'failed')
  stat('corrupt', 1)
  if redis.call('HGET', jobkey, 'kids') == '1' then resolve_kids(id, 'failed', nil, now) end -- rare path
end

-- The first of `names` whose value (values[index[name]], as HMGET read it) is set but not a number,
-- and that value; nil when all are numbers or unset.
local function not_numeric(values, names, index)
  for _, name in ipairs(names) do
    local v = values[index[name]]
    if v and v ~= '' and tonumber(v) == nil then return name, v end
  end
  return nil
end

-- The job's max attempts given the handler's (`cap`, nil when none): a job that set its own
-- (ma_def = '0') keeps it; one that did not (ma_def = '1') takes the handler's; a record written
-- before ma_def existed (false) keeps the old rule, the lower of the two.
local function effective_max(max_attempts, cap, ma_def)
  if not cap or cap < 1 or ma_def == '0' then return max_attempts end
  if ma_def == '1' then return cap end
  return math.min(cap, max_attempts)
end

-- The job's error history (field "errors"): one line per failed attempt, oldest first, the last
-- ERROR_HISTORY kept: "<attempt> <time µs> <error json>". An error over ERROR_MAX_BYTES keeps its
-- type and a note (last_error holds it whole); lines of another shape (a hand edit) are dropped.
local function record_error(jobkey, attempt, err, now)
  err = string.gsub(err, '[\r\n]', ' ')
  if #err > ERROR_MAX_BYTES then
    local kind = string.match(err, '^{"type":"([%w_.:]*)"') or 'Error'
    err = '{"type":"' .. kind .. '","message":"an error of ' .. #err ..
      ' bytes: too long for the history, see last_error","traceback":""}'
  end
  local keep = {}
  for line in string.gmatch(redis.call('HGET', jobkey, 'errors') or '', '[^\n]+') do
    if #line <= ERROR_MAX_BYTES + 64 and string.match(line, '^%d+ %d+ {') then keep[#keep + 1] = line end
  end
  local lines = {}
  for i = math.max(1, #keep - ERROR_HISTORY + 2), #keep do lines[#lines + 1] = keep[i] end
  lines[#lines + 1] = string.format('%d %d ', math.floor(attempt), now) .. err
  redis.call('HSET', jobkey, 'errors', table.concat(lines, '\n'))
end

-- running -> retry_scheduled (attempts left and retryable) or failed: the one retry policy.
-- delay_us < 0 means "use the backoff": the handler's `bo` when given, else the job's own.
-- cap (optional, >= 1) is the handler's max attempts: see effective_max. A job's own backoff
-- (bo_def = '0') wins over the handler's `bo`. outcome nil means retry/failed as it turns out.
local function fail_running(id, jobkey, err, retryable, delay_us, now, outcome, r, cap, bo)
  local f = redis.call('HMGET', jobkey, 'name', 'attempts', 'max_attempts', 'lkey', 'ev', 'cancel_req',
    'ma_def', 'bo_def', 'kids')
  local name, attempts, max_attempts = f[1], tonumber(f[2]), tonumber(f[3])
  local bad, value = not_numeric(f, {'attempts', 'max_attempts'}, {attempts = 2, max_attempts = 3})
  if not name or name == '' then bad, value = 'name', '' end
  if bad or not attempts or not max_attempts then
    set_aside(id, jobkey, 'running', now, corrupt_error(bad or 'attempts', value or ''), f[4], f[5])
    return CODE.CORRUPT
  end
  max_attempts = effective_max(max_attempts, cap, f[7])
  if f[8] == '0' then bo = nil end
  record_error(jobkey, attempts, err, now)
  if retryable and attempts < max_attempts then
    if delay_us < 0 then delay_us = backoff_us(jobkey, attempts, r, bo) end
    local run_at = now + delay_us
    local fields = {'run_at', run_at, 'last_error', err}
    if f[6] == '1' then fields[5], fields[6] = 'cancel_req', '' end
    leave_running(id, jobkey, 'retry_scheduled', now, f[4], f[5], fields)
    redis.call('ZADD', K.waiting, run_at, id)
    wake_one() -- an idle worker may be waiting past run_at: it must look at the new due time
    stat('retry|' .. name, 1)
    stat('run|' .. name .. '|' .. (outcome or 'retry'), 1)
    return 'retry_scheduled'
  end
  leave_running(id, jobkey, 'failed', now, f[4], f[5], {'finished_at', now, 'last_error', err})
  stat('run|' .. name .. '|' .. (outcome or 'failed'), 1)
  release_unique(jobkey, id)
  if f[9] == '1' then resolve_kids(id, 'failed', nil, now) end
  return 'failed'
end

-- Due scheduled/retry jobs -> enqueued. Returns how many moved.
local function promote_due(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', K.waiting, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local jobkey = K.job_prefix .. id
    redis.call('ZREM', K.waiting, id)
    local old = redis.call('HGET', jobkey, 'state')
    if old then
      redis.call('HSET', jobkey, 'state', 'enqueued')
      push_ready(jobkey, id)
      move_state(id, old, 'enqueued', now)
    end
  end
  if #ids > 0 then wake_one() end
  return #ids
end

-- An expired claim its worker never confirmed was never run: running -> enqueued, the attempt not
-- counted, back in its place in the ready order. A claim is confirmed when its job's cf holds its
-- token (a per-claim confirm or a heartbeat's extend wrote it) or when the key unconfirmed:<nonce> of
-- its claim call is gone (confirm.lua deleted it: every claim of the call arrived; or it expired, long
-- after the lease: then charged, as before lost claims were told apart). The claim reply was lost, or
-- the worker died before it could confirm. At most LOST_CLAIM_CAP times per job (field lc), so a job
-- that kills its worker before the confirm still ends. A cancel requested meanwhile cancels it.
-- Either way the call's key is marked 'lost' (confirm.lua then checks each of its claims). False:
-- charge it instead.
local function give_back_lost(id, jobkey, now)
  local f = redis.call('HMGET', jobkey, 'cf', 'lc', 'attempts', 'priority', 'seq', 'lkey', 'ev',
    'cancel_req', 'token')
  local nonce = string.match(f[9] or '', '^(.+)%.%d+$')
  local mark = nonce and K.unconfirmed_prefix .. nonce
  local was = mark and redis.call('GET', mark)
  if was ~= '1' and was ~= 'lost' then return false end -- confirmed, lapsed, or a hand edit: charged
  redis.call('SET', mark, 'lost', 'KEEPTTL')
  if f[1] == f[9] then return false end
  local lost, attempts = tonumber(f[2] or 0), tonumber(f[3])
  if not lost or lost < 0 or lost >= LOST_CLAIM_CAP or not attempts then return false end
  local fields = {'worker', '', 'started_at', '', 'attempts', math.max(0, attempts - 1), 'lc', lost + 1}
  if f[8] == '1' then
    fields[#fields + 1] = 'finished_at'
    fields[#fields + 1] = now
    leave_running(id, jobkey, 'cancelled', now, f[6], f[7], fields)
    release_unique(jobkey, id)
    return true
  end
  leave_running(id, jobkey, 'enqueued', now, f[6], f[7], fields)
  redis.call('ZADD', K.ready, ready_score(tonumber(f[4]) or 0, tonumber(f[5]) or 0), id)
  wake_one()
  return true
end

-- Running jobs whose lease ran out are failed runs (LeaseExpired), unless never confirmed (above).
-- Returns how many.
local function recover_expired(now, limit, seed)
  local ids = redis.call('ZRANGEBYSCORE', K.running, '-inf', now, 'LIMIT', 0, limit)
  for i, id in ipairs(ids) do
    local jobkey = K.job_prefix .. id
    local worker = redis.call('HGET', jobkey, 'worker')
    if worker and give_back_lost(id, jobkey, now) then
      -- never received: back to ready, uncounted
    elseif worker then
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

-- The manual retry, written once for retry.lua and retry_many.lua: failed / cancelled -> enqueued,
-- attempts reset, back of its priority; refused while another live job holds its unique_key.
-- Returns CODE.OK, or an error code and its detail (the current state, or the key's holder).
local function retry_job(id)
  local jobkey = K.job_prefix .. id
  local f = redis.call('HMGET', jobkey, 'state', 'unique_key')
  local state, key = f[1], f[2]
  if not state then return CODE.NOT_FOUND end
  if state ~= 'failed' and state ~= 'cancelled' then return CODE.ILLEGAL, state end
  if key and key ~= '' then
    local holder = redis.call('HGET', K.unique, key)
    if holder and holder ~= id then
      local held = redis.call('HGET', K.job_prefix .. holder, 'state')
      if held and held ~= 'done' and held ~= 'failed' and held ~= 'cancelled' then
        return CODE.CONFLICT, holder
      end
    end
  end
  local now = now_us()
  redis.call('HSET', jobkey, 'state', 'enqueued', 'attempts', 0, 'finished_at', '', 'run_at', now,
    'token', '', 'lease_until', '', 'cancel_req', '', 'uh_since', '')
  push_ready(jobkey, id)
  if key and key ~= '' then redis.call('HSET', K.unique, key, id) end
  move_state(id, state, 'enqueued', now)
  wake_one()
  return CODE.OK
end

-- The cancel, written once for cancel.lua and cancel_many.lua: enqueued / scheduled /
-- retry_scheduled / deferred -> cancelled (its dependants resolved); on a running job only a cancel request (cancel_req = 1) is recorded.
-- Returns CODE.OK, nil, whether anything changed; or an error code and its detail (the state).
local function cancel_job(id)
  local jobkey = K.job_prefix .. id
  local f = redis.call('HMGET', jobkey, 'state', 'parked', 'ev', 'cancel_req', 'kids')
  local state = f[1]
  if not state then return CODE.NOT_FOUND end
  if state == 'running' then
    if f[4] == '1' then return CODE.OK, nil, false end
    redis.call('HSET', jobkey, 'cancel_req', 1)
    emit(f[3], id, 'cancel_requested')
    return CODE.OK, nil, true
  end
  if state ~= 'enqueued' and state ~= 'scheduled' and state ~= 'retry_scheduled' and state ~= 'deferred' then
    return CODE.ILLEGAL, state
  end
  local now = now_us()
  redis.call('ZREM', K.ready, id)
  redis.call('ZREM', K.waiting, id)
  if f[2] and f[2] ~= '' then drop_parked(id, f[2]) end
  redis.call('HSET', jobkey, 'state', 'cancelled', 'finished_at', now)
  release_unique(jobkey, id)
  move_state(id, state, 'cancelled', now)
  emit(f[3], id, 'cancelled')
  if f[5] == '1' then resolve_kids(id, 'cancelled', nil, now) end
  return CODE.OK, nil, true
end

-- Retention: terminal jobs that entered their state at or before `cutoff` (µs), oldest first, are
-- deleted with every index entry that names them (their state index, jobs, the unique key if it
-- still names them). purge.lua runs it on demand; finish.lua runs it for up to 2n + 2 jobs per n
-- reports, so deleting keeps pace with finishing however fast the workers drain. A terminal index
-- entry whose hash says the job is live (an inconsistent record) is dropped and the job kept.
-- Each deletion counts `prg|<name>`: a name whose every enqueued job is gone has enq = prg (tidy.lua).
-- At most `limit` index entries are looked at, of one terminal state if `only` names one (else all
-- three); returns how many jobs were deleted.
local TERMINAL = {'done', 'failed', 'cancelled'}
local LIVE = {enqueued = true, running = true, scheduled = true, retry_scheduled = true, deferred = true}

local function purge_expired(cutoff, limit, only)
  local seen, purged = 0, 0
  local states = TERMINAL
  if only == 'done' or only == 'failed' or only == 'cancelled' then states = {only} end
  for _, state in ipairs(states) do
    if seen >= limit then break end
    local index = K.state_prefix .. state
    local ids = redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'LIMIT', 0, limit - seen)
    seen = seen + #ids
    for _, id in ipairs(ids) do
      local jobkey = K.job_prefix .. id
      local f = redis.call('HMGET', jobkey, 'state', 'name', 'unique_key')
      redis.call('ZREM', index, id)
      if not LIVE[f[1]] then
        if f[1] ~= state then -- another terminal index may hold it too: leave none behind
          for _, other in ipairs(TERMINAL) do redis.call('ZREM', K.state_prefix .. other, id) end
        end
        redis.call('DEL', jobkey)
        redis.call('ZREM', K.jobs, id)
        release_unique(jobkey, id, f[3] or '')
        if f[2] and f[2] ~= '' then stat('prg|' .. f[2], 1) end
        purged = purged + 1
      end
    end
  end
  return purged
end

-- A number a policy may hold: finite and within bounds (a hand-written hpolicy entry is not trusted).
local function bounded(v, low, high)
  local x = tonumber(v)
  if x and x == x and x >= low and x <= high then return x end
  return nil
end

-- A handler's policy as the hpolicy hash holds it ("max_attempts bo_base bo_cap bo_jitter", '-' = no
-- backoff) -> the field, value pairs that make it the job's for what the job did not set itself
-- (ma_def / bo_def = '1'). Empty when there is no policy, or nothing of it applies or can be read.
local function policy_fields(policy, ma_def, bo_def)
  local out = {}
  if not policy then return out end
  local p = {}
  for v in string.gmatch(policy, '%S+') do p[#p + 1] = v end
  local ma = bounded(p[1], 1, 1000000)
  if ma_def == '1' and ma then
    out[1], out[2] = 'max_attempts', string.format('%d', math.floor(ma))
  end
  local base, cap, jitter = bounded(p[2], 0, 1e9), bounded(p[3], 0, 1e9), bounded(p[4], 0, 1)
  if bo_def == '1' and base and cap and jitter then
    for _, v in ipairs({'bo_base', p[2], 'bo_cap', p[3], 'bo_jitter', p[4]}) do out[#out + 1] = v end
  end
  return out
end

-- A worker without the job's handler hands it back (finish, ok = 3): running -> scheduled at
-- now + delay_us, the attempt not counted, while a live worker advertised the handler less than
-- grace_us ago (hash K.handlers) or the job was first handed back less than grace_us ago (a handler
-- still being deployed); after that, running -> failed with `err` (UnknownHandler). A job with a
-- cancel request is cancelled. Returns the new state.
local function hand_back(id, jobkey, name, err, grace_us, delay_us, now, lkey, ev, ukey)
  local f = redis.call('HMGET', jobkey, 'attempts', 'uh_since', 'cancel_req')
  if f[3] == '1' then
    leave_running(id, jobkey, 'cancelled', now, lkey, ev, {'finished_at', now})
    release_unique(jobkey, id, ukey)
    return 'cancelled'
  end
  local since = bounded(f[2], 0, now) -- unreadable (or from the future): counts from now
  if not since then
    since = now
    redis.call('HSET', jobkey, 'uh_since', now)
  end
  local seen = bounded(redis.call('HGET', K.handlers, name), 0, now) or 0 -- unreadable: never seen
  if now - math.max(seen, since) < grace_us then
    local run_at = now + math.max(0, delay_us)
    leave_running(id, jobkey, 'scheduled', now, lkey, ev, {'worker', '', 'started_at', '', 'run_at', run_at,
      'attempts', math.max(0, (tonumber(f[1]) or 1) - 1)})
    redis.call('ZADD', K.waiting, run_at, id)
    wake_one()
    return 'scheduled'
  end
  record_error(jobkey, tonumber(f[1]) or 1, err, now)
  leave_running(id, jobkey, 'failed', now, lkey, ev, {'finished_at', now, 'last_error', err})
  stat('run|' .. name .. '|failed', 1)
  release_unique(jobkey, id, ukey)
  return 'failed'
end

-- Rate limits (backend/workers/rates.py): "N/<k><unit>" allows N starts per k units. Each limit key
-- (K.rate_prefix .. 'h:<handler>' | 'k:<rate_key>' | 'q') holds the earliest time (µs) of its next
-- start (GCRA without a burst: starts are spaced period / N apart, so no window of one period holds
-- more than N). Returns µs between two starts, or nil for no rate or an unreadable one.
local RATE_UNITS = {s = 1000000, m = 60000000, h = 3600000000, d = 86400000000}

local function rate_interval(rate)
  if not rate or rate == '' then return nil end
  local count, mult, unit = string.match(rate, '^(%d+)/(%d*)([smhd])$')
  count = tonumber(count)
  if not count or count < 1 then return nil end
  local interval = (tonumber(mult) or 1) * RATE_UNITS[unit] / count
  if interval < 1 then return nil end
  return interval
end

-- Take the next start of every limit in `limits` ({key suffix, interval µs} pairs) for one job:
-- its slot is the earliest time all of them allow (now if they allow it now), and each key moves
-- on to slot + its interval (rounded up: never faster than the rate). Keys expire when they no
-- longer hold anyone back. Returns the slot (µs).
local function take_rate_slot(now, limits)
  local slot = now
  for _, l in ipairs(limits) do
    local next_at = tonumber(redis.call('GET', K.rate_prefix .. l[1])) or 0
    if next_at > slot then slot = next_at end
  end
  for _, l in ipairs(limits) do
    local next_at = math.ceil(slot + l[2])
    redis.call('SET', K.rate_prefix .. l[1], string.format('%.0f', next_at),
      'PX', math.ceil((next_at - now) / 1000) + 1)
  end
  return slot
end
