-- extend.lua: push the leases of current claims to now + lease.
-- KEYS: see lib.lua.
-- ARGV[1] lease µs  ARGV[2..] pairs of id, token
-- Returns {ids whose claim is no longer current, ids of current claims whose job has a cancel request}.
local lease_until = now_us() + tonumber(ARGV[1])
local stale, cancel = {}, {}
for b = 2, #ARGV, 2 do
  local id, token = ARGV[b], ARGV[b + 1]
  local f = redis.call('HMGET', K.job .. id, 'state', 'token', 'cancel_req')
  if f[1] == 'running' and f[2] == token then
    redis.call('HSET', K.job .. id, 'lease_until', lease_until)
    redis.call('ZADD', K.running, 'XX', lease_until, id)
    if f[3] == '1' then cancel[#cancel + 1] = id end
  else
    stale[#stale + 1] = id
  end
end
return {stale, cancel}
