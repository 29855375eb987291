-- finish.lua: report finished runs, batched. Only the current claim token is accepted.
-- success: running -> done. error: running -> retry_scheduled or failed (see fail_running).
-- KEYS: see lib.lua.
-- ARGV[1] random seed  ARGV[2] n  then per run 7 fields:
--   id, token, ok (1|0), result json | error json, duration s, retryable (1|0), retry delay µs (-1 = backoff)
-- Returns per run the new state, or '' when the claim was stale (nothing changed).
local seed, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_us()
local out = {}
for i = 0, n - 1 do
  local b = 3 + i * 7
  local id, token = ARGV[b], ARGV[b + 1]
  local jobkey = K.job .. id
  local f = redis.call('HMGET', jobkey, 'state', 'token', 'name', 'unique_key')
  if f[1] ~= 'running' or f[2] ~= token then
    out[#out + 1] = ''
  else
    observe_duration(f[3], tonumber(ARGV[b + 4]))
    if ARGV[b + 2] == '1' then
      redis.call('HSET', jobkey, 'state', 'done', 'result', ARGV[b + 3], 'finished_at', now,
        'token', '', 'lease_until', '', 'state_at', now)
      redis.call('ZREM', K.running, id)
      stat('run|' .. f[3] .. '|done', 1)
      release_unique(jobkey, id, f[4])
      move_state(id, 'running', 'done', now)
      out[#out + 1] = 'done'
    else
      out[#out + 1] = fail_running(id, jobkey, ARGV[b + 3], ARGV[b + 5] == '1', tonumber(ARGV[b + 6]),
        now, nil, rand(seed, i))
    end
  end
end
flush_stats()
return out
