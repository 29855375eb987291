-- claim.lua: promote due jobs, recover expired leases, then claim up to `limit` ready jobs:
-- enqueued -> running, attempts += 1, a fresh token, lease until now + lease.
-- KEYS: see lib.lua.
-- ARGV[1] worker id  ARGV[2] limit  ARGV[3] lease µs  ARGV[4] housekeeping limit  ARGV[5] random seed
-- ARGV[6] a random nonce, unique per call: tokens must never repeat, even for a re-used job id
-- Returns per claimed job {HGETALL before the claim, the fields the claim changed}.
local worker, limit, lease_us = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
promote_due(now, tonumber(ARGV[4]))
recover_expired(now, tonumber(ARGV[4]), tonumber(ARGV[5]))
local out = {}
if limit > 0 then
  local popped = redis.call('ZPOPMIN', K.ready, limit)
  local lease_until = now + lease_us
  for i = 1, #popped, 2 do
    local id = popped[i]
    local jobkey = K.job .. id
    local job = redis.call('HGETALL', jobkey)
    local attempts = 0
    for j = 1, #job, 2 do
      if job[j] == 'attempts' then attempts = tonumber(job[j + 1]) break end
    end
    local token = ARGV[6] .. '.' .. string.format('%d', (i + 1) / 2)
    local changes = {'state', 'running', 'attempts', attempts + 1, 'started_at', now, 'worker', worker,
      'token', token, 'lease_until', lease_until, 'state_at', now, 'finished_at', ''}
    redis.call('HSET', jobkey, unpack(changes))
    redis.call('ZADD', K.running, lease_until, id)
    out[#out + 1] = {job, changes}
  end
end
-- Chain wake-ups while work remains; drop stale tokens once the queue is empty.
if redis.call('ZCARD', K.ready) > 0 then
  if redis.call('LLEN', K.wake) == 0 then redis.call('RPUSH', K.wake, 1) end
else
  redis.call('DEL', K.wake)
end
flush_stats()
return out
