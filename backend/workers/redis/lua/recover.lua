-- recover.lua: running jobs whose lease expired -> retry_scheduled or failed (LeaseExpired).
-- KEYS (scripts.RECOVER; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] running  KEYS[5] state_prefix  KEYS[6] unique  KEYS[7] stats
--    KEYS[8] wake  KEYS[9] limit_prefix  KEYS[10] parked  KEYS[11] events  KEYS[12] history
--    KEYS[13] seq  KEYS[14] deps_prefix  KEYS[15] unconfirmed_prefix
-- ARGV[1] limit  ARGV[2] random seed
-- Returns how many.
local recovered = recover_expired(now_us(), tonumber(ARGV[1]), tonumber(ARGV[2]))
flush_stats()
return recovered
