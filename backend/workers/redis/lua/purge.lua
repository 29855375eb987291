-- purge.lua: delete terminal jobs that finished at least `older_than` µs ago (purge_expired in lib.lua).
-- KEYS (scripts.PURGE; the script reads them as K.<name>):  KEYS[1] job_prefix
--    KEYS[2] state_prefix  KEYS[3] jobs  KEYS[4] unique  KEYS[5] stats
-- ARGV[1] older_than µs  ARGV[2] limit  ARGV[3] only this terminal state ('' = all three)
-- Returns how many.
local purged = purge_expired(now_us() - tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
flush_stats()
return purged
