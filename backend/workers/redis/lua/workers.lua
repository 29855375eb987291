-- workers.lua: list registered workers, reaping those whose last heartbeat is older than stale_after.
-- KEYS (scripts.WORKERS; the script reads them as K.<name>):  KEYS[1] registry
--    KEYS[2] worker_prefix  (both in the {workers} slot)
-- ARGV[1] stale_after µs (-1 = keep all)
-- Returns {now µs, {id, HGETALL}, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stale_after = tonumber(ARGV[1])
if stale_after >= 0 then
  local dead = redis.call('ZRANGEBYSCORE', K.registry, '-inf', now - stale_after)
  for _, id in ipairs(dead) do
    redis.call('ZREM', K.registry, id)
    redis.call('DEL', K.worker_prefix .. id)
  end
end
local out = {now}
for _, id in ipairs(redis.call('ZRANGE', K.registry, 0, -1)) do
  out[#out + 1] = {id, redis.call('HGETALL', K.worker_prefix .. id)}
end
return out
