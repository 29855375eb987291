-- promote.lua: due scheduled / retry_scheduled jobs -> enqueued.
-- KEYS: see lib.lua.  ARGV[1] limit.  Returns how many.
return promote_due(now_us(), tonumber(ARGV[1]))
