-- heartbeat.lua: register a worker or record its heartbeat (upserting its details).
-- KEYS[1] worker registry zset  KEYS[2] this worker's hash  (both in the {workers} slot)
-- ARGV[1] worker id  ARGV[2] register (1|0)  ARGV[3..] field, value pairs
-- Returns {existed (1|0), now µs}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local existed = redis.call('EXISTS', KEYS[2])
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then redis.call('HSET', KEYS[2], unpack(fields)) end
if ARGV[2] == '1' or existed == 0 then redis.call('HSET', KEYS[2], 'started_at', now) end
redis.call('HSET', KEYS[2], 'last_heartbeat', now)
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {existed, now}
