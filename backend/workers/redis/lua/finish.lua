-- finish.lua: report finished runs, batched. Only the current claim token is accepted.
-- success: running -> done. error: running -> retry_scheduled or failed (see fail_running).
-- cancelled (ok = 2, the worker stopped the handler on a cancel request): running -> cancelled.
-- no handler in that worker (ok = 3): handed back uncounted, or failed UnknownHandler (see hand_back).
-- KEYS (scripts.FINISH; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] running  KEYS[5] state_prefix  KEYS[6] unique  KEYS[7] stats
--    KEYS[8] wake  KEYS[9] limit_prefix  KEYS[10] parked  KEYS[11] events  KEYS[12] jobs  KEYS[13] handlers
--    KEYS[14] history  KEYS[15] seq  KEYS[16] deps_prefix
-- ARGV[1] random seed  ARGV[2] retention µs (-1 = purge nothing)  ARGV[3] n
-- ARGV[4..] n records of WIDTH fields (scripts.FinishItem):
--   job_id, token, ok (1|0|2|3), payload (result json | error json), duration s,
--   policy ('' unless ok = 0; else "retryable delay_us max_attempts bo_base bo_cap bo_jitter",
--   '-' = none: delay -1 = the backoff, the handler's max attempts and backoff, else the job's own;
--   ok = 3: "grace_us delay_us")
-- Returns per run the new state, CODE.STALE when the claim was stale (nothing changed), or
-- CODE.CORRUPT when the job's record could not be read: it was set aside (failed, see set_aside). A report
-- re-sent after its reply was lost (redis-py retries on connection errors) finds its own token in
-- its field `done` ("<token> <state>", written by every report that changed the job) and gets the state that
-- report produced, so it is neither applied twice nor called stale.
-- A job that ends done, failed or cancelled resolves its dependants in the same step (resolve_kids).
-- Retention keeps pace with finishing: up to 2n + 2 terminal jobs past the retention are deleted
-- (purge_expired in lib.lua), so finished jobs cannot pile up faster than they expire.
local seed, retention_us, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
local out = {}
local batch = new_batch() -- the successes' running-set and state-index writes, one call per key
for i = 0, n - 1 do
  local b = 4 + i * WIDTH
  local job_id, token, ok, payload, duration, policy = unpack(ARGV, b, b + WIDTH - 1)
  local jobkey = K.job_prefix .. job_id
  local f = redis.call('HMGET', jobkey, 'state', 'token', 'name', 'unique_key', 'lkey', 'ev', 'done', 'kids')
  if f[1] ~= 'running' or f[2] ~= token then
    local done_token, done_state = string.match(f[7] or '', '^(%S+) (%S+)$')
    if done_token == token then out[#out + 1] = done_state else out[#out + 1] = CODE.STALE end
  elseif not f[3] or f[3] == '' then -- no handler name: set aside before anything is written
    set_aside(job_id, jobkey, 'running', now, corrupt_error('name', ''), f[5], f[6], f[4])
    redis.call('HSET', jobkey, 'done', token .. ' ' .. CODE.CORRUPT)
    out[#out + 1] = CODE.CORRUPT
  elseif ok == '3' then
    local g = {}
    for v in string.gmatch(policy, '%S+') do g[#g + 1] = tonumber(v) end
    local state = hand_back(job_id, jobkey, f[3], payload, g[1] or 0, g[2] or 0, now, f[5], f[6], f[4])
    if f[8] == '1' and state ~= 'scheduled' then resolve_kids(job_id, state, nil, now) end
    redis.call('HSET', jobkey, 'done', token .. ' ' .. state)
    out[#out + 1] = state
  elseif ok == '1' or ok == '2' then
    local state, fields = 'done', {'result', payload, 'finished_at', now, 'done', token .. ' done'}
    if ok == '2' then
      -- a cancelled run is neither counted as a run outcome nor observed in the duration histogram
      state, fields = 'cancelled', {'finished_at', now, 'done', token .. ' cancelled'}
    else
      observe_duration(f[3], tonumber(duration))
      stat('run|' .. f[3] .. '|done', 1)
    end
    leave_running(job_id, jobkey, state, now, f[5], f[6], fields, batch)
    release_unique(jobkey, job_id, f[4])
    if f[8] == '1' then resolve_kids(job_id, state, payload, now) end
    out[#out + 1] = state
  else
    observe_duration(f[3], tonumber(duration))
    local p = {}
    for v in string.gmatch(policy, '%S+') do p[#p + 1] = v end
    local bo = nil
    if p[4] ~= '-' then bo = {p[4], p[5], p[6]} end
    local state = fail_running(job_id, jobkey, payload, p[1] == '1', tonumber(p[2]),
      now, nil, rand(seed, i), tonumber(p[3]), bo)
    redis.call('HSET', jobkey, 'done', token .. ' ' .. state)
    out[#out + 1] = state
  end
end
send_batch(batch)
if retention_us >= 0 then purge_expired(now - retention_us, 2 * n + 2) end
flush_stats()
return out
