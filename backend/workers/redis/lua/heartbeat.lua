-- heartbeat.lua: register a worker or record its heartbeat (upserting its details).
-- KEYS (scripts.HEARTBEAT; the script reads them as K.<name>):  KEYS[1] registry
--    KEYS[2] worker_prefix  (both in the {workers} slot)
-- ARGV[1] worker id  ARGV[2] register (1|0)  ARGV[3] n
-- ARGV[4..] n records of WIDTH fields (scripts.WorkerField): field, value
-- Returns {existed (1|0), now µs}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local worker_key = K.worker_prefix .. ARGV[1]
local existed = redis.call('EXISTS', worker_key)
local n = tonumber(ARGV[3])
if n > 0 then redis.call('HSET', worker_key, unpack(ARGV, 4, 3 + n * WIDTH)) end
if ARGV[2] == '1' or existed == 0 then redis.call('HSET', worker_key, 'started_at', now) end
redis.call('HSET', worker_key, 'last_heartbeat', now)
redis.call('ZADD', K.registry, now, ARGV[1])
return {existed, now}
