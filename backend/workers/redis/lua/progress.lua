-- progress.lua: a running handler reports how far it got (fenced by its claim token).
-- KEYS (scripts.PROGRESS; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] events
-- ARGV[1] job id  ARGV[2] token  ARGV[3] value  ARGV[4] message
-- Returns 1 when recorded, 0 when the claim is no longer current.
local jobkey = K.job_prefix .. ARGV[1]
local f = redis.call('HMGET', jobkey, 'state', 'token', 'ev')
if f[1] ~= 'running' or f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', jobkey, 'progress', ARGV[3], 'progress_msg', ARGV[4])
emit(f[3], ARGV[1], 'progress')
return 1
