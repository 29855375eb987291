-- recover.lua: running jobs whose lease expired -> retry_scheduled or failed (LeaseExpired).
-- KEYS: see lib.lua.  ARGV[1] limit  ARGV[2] random seed.  Returns how many.
local recovered = recover_expired(now_us(), tonumber(ARGV[1]), tonumber(ARGV[2]))
flush_stats()
return recovered
