-- promote.lua: due scheduled / retry_scheduled jobs -> enqueued.
-- KEYS (scripts.PROMOTE; the script reads them as K.<name>):  KEYS[1] job_prefix  KEYS[2] ready
--    KEYS[3] waiting  KEYS[4] state_prefix  KEYS[5] wake  KEYS[6] seq
-- ARGV[1] limit
-- Returns how many.
return promote_due(now_us(), tonumber(ARGV[1]))
