-- finish.lua: report finished runs, batched. Only the current claim token is accepted.
-- success: running -> done. error: running -> retry_scheduled or failed (see fail_running).
-- cancelled (ok = 2, the worker stopped the handler on a cancel request): running -> cancelled.
-- KEYS: see lib.lua.
-- ARGV[1] random seed  ARGV[2] n  then per run 11 fields:
--   id, token, ok (1|0|2), result json | error json, duration s, retryable (1|0), retry delay µs (-1 = backoff),
--   handler's max attempts (-1 = none), handler's backoff base s, cap s, jitter ('' = the job's own backoff)
-- Returns per run the new state, or '' when the claim was stale (nothing changed). A report re-sent
-- after its reply was lost (redis-py retries on connection errors) finds its own token in
-- done_token and gets the state that report produced, so it is neither applied twice nor called stale.
local seed, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_us()
local out = {}
for i = 0, n - 1 do
  local b = 3 + i * 11
  local id, token = ARGV[b], ARGV[b + 1]
  local jobkey = K.job .. id
  local f = redis.call('HMGET', jobkey, 'state', 'token', 'name', 'unique_key', 'lkey', 'ev', 'done_token',
    'done_state')
  if f[1] ~= 'running' or f[2] ~= token then
    if f[7] == token and f[8] then out[#out + 1] = f[8] else out[#out + 1] = '' end
  else
    local ok = ARGV[b + 2]
    -- a cancelled run is neither counted as a run outcome nor observed in the duration histogram
    if ok ~= '2' then observe_duration(f[3], tonumber(ARGV[b + 4])) end
    if ok == '1' or ok == '2' then
      local state = 'done'
      if ok == '2' then state = 'cancelled' end
      if ok == '1' then
        redis.call('HSET', jobkey, 'state', 'done', 'result', ARGV[b + 3], 'finished_at', now,
          'token', '', 'lease_until', '', 'state_at', now, 'done_token', token, 'done_state', 'done')
      else
        redis.call('HSET', jobkey, 'state', 'cancelled', 'finished_at', now,
          'token', '', 'lease_until', '', 'state_at', now, 'done_token', token, 'done_state', 'cancelled')
      end
      redis.call('ZREM', K.running, id)
      if ok == '1' then stat('run|' .. f[3] .. '|done', 1) end
      release_unique(jobkey, id, f[4])
      move_state(id, 'running', state, now)
      free_slot(id, f[5])
      emit(f[6], id, state)
      out[#out + 1] = state
    else
      local bo = nil
      if ARGV[b + 8] ~= '' then bo = {ARGV[b + 8], ARGV[b + 9], ARGV[b + 10]} end
      local state = fail_running(id, jobkey, ARGV[b + 3], ARGV[b + 5] == '1', tonumber(ARGV[b + 6]),
        now, nil, rand(seed, i), tonumber(ARGV[b + 7]), bo)
      redis.call('HSET', jobkey, 'done_token', token, 'done_state', state)
      out[#out + 1] = state
    end
  end
end
flush_stats()
return out
