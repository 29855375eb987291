-- release.lua: a shutting-down worker gives running jobs back: running -> enqueued,
-- the attempt not counted, back in its original place in the ready order.
-- A job with a cancel request is not given back: running -> cancelled.
-- KEYS: see lib.lua.
-- ARGV pairs of id, token. Returns how many were released (cancelled ones included).
local now = now_us()
local released = 0
local woke = false
for b = 1, #ARGV, 2 do
  local id, token = ARGV[b], ARGV[b + 1]
  local jobkey = K.job .. id
  local f = redis.call('HMGET', jobkey, 'state', 'token', 'priority', 'seq', 'lkey', 'ev', 'cancel_req',
    'unique_key')
  if f[1] == 'running' and f[2] == token then
    redis.call('ZREM', K.running, id)
    if f[7] == '1' then
      redis.call('HSET', jobkey, 'state', 'cancelled', 'finished_at', now, 'token', '', 'lease_until', '',
        'state_at', now)
      release_unique(jobkey, id, f[8])
      move_state(id, 'running', 'cancelled', now)
      emit(f[6], id, 'cancelled')
    else
      redis.call('HINCRBY', jobkey, 'attempts', -1)
      redis.call('HSET', jobkey, 'state', 'enqueued', 'token', '', 'lease_until', '', 'worker', '',
        'started_at', '', 'state_at', now)
      redis.call('ZADD', K.ready, ready_score(tonumber(f[3]), tonumber(f[4])), id)
      move_state(id, 'running', 'enqueued', now)
      emit(f[6], id, 'enqueued')
      woke = true
    end
    free_slot(id, f[5])
    released = released + 1
  end
end
if woke then wake_one() end
return released
