-- workers.lua: list registered workers, reaping those whose last heartbeat is older than stale_after.
-- KEYS[1] worker registry zset  KEYS[2] worker hash key prefix  (both in the {workers} slot)
-- ARGV[1] stale_after µs (-1 = keep all)
-- Returns {now µs, {id, HGETALL}, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stale_after = tonumber(ARGV[1])
if stale_after >= 0 then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - stale_after)
  for _, id in ipairs(dead) do
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', KEYS[2] .. id)
  end
end
local out = {now}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = {id, redis.call('HGETALL', KEYS[2] .. id)}
end
return out
