-- release.lua: a shutting-down worker gives running jobs back: running -> enqueued,
-- the attempt not counted, back in its original place in the ready order.
-- KEYS: see lib.lua.
-- ARGV pairs of id, token. Returns how many were released.
local now = now_us()
local released = 0
for b = 1, #ARGV, 2 do
  local id, token = ARGV[b], ARGV[b + 1]
  local jobkey = K.job .. id
  local f = redis.call('HMGET', jobkey, 'state', 'token', 'priority', 'seq')
  if f[1] == 'running' and f[2] == token then
    redis.call('HINCRBY', jobkey, 'attempts', -1)
    redis.call('HSET', jobkey, 'state', 'enqueued', 'token', '', 'lease_until', '', 'worker', '',
      'started_at', '', 'state_at', now)
    redis.call('ZREM', K.running, id)
    redis.call('ZADD', K.ready, ready_score(tonumber(f[3]), tonumber(f[4])), id)
    move_state(id, 'running', 'enqueued', now)
    released = released + 1
  end
end
if released > 0 then wake_one() end
return released
