-- setaside.lua: a claimed job whose record the worker's side cannot decode (args or kwargs that
-- are not JSON, a field of the wrong type) is set aside: running -> failed with a CorruptRecord
-- error naming the field and its value (see set_aside in lib.lua). Fenced by the claim token.
-- KEYS (scripts.SETASIDE; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] running  KEYS[5] state_prefix  KEYS[6] unique  KEYS[7] stats
--    KEYS[8] wake  KEYS[9] limit_prefix  KEYS[10] parked  KEYS[11] events  KEYS[12] history
--    KEYS[13] seq  KEYS[14] deps_prefix
-- ARGV[1] job id  ARGV[2] claim token  ARGV[3] the unreadable field  ARGV[4] its value
-- Returns 1 when the job was set aside, 0 when the claim was no longer current.
local id, token = ARGV[1], ARGV[2]
local jobkey = K.job_prefix .. id
local f = redis.call('HMGET', jobkey, 'state', 'token', 'lkey', 'ev', 'unique_key')
if f[1] ~= 'running' or f[2] ~= token then return 0 end
set_aside(id, jobkey, 'running', now_us(), corrupt_error(ARGV[3], ARGV[4]), f[3], f[4], f[5])
flush_stats()
return 1
